"""gearstash's store contract, run against this store."""

import pytest

from gearstash.testing.contract import StoreContract


class TestJsonDirStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path):
        return f"jsondir://{tmp_path}/jobs"
