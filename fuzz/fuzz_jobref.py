"""Coverage-guided fuzz target for ``JobRef.parse`` / ``str(JobRef)`` (atheris / libFuzzer).

    .venv/bin/python fuzz/fuzz_jobref.py -runs=300000 CORPUS_DIR fuzz/seeds/jobref

The input is the text a user typed (given as bytes, and as ``str`` decoded with surrogate escapes,
the way Python hands over command-line arguments). Allowed outcomes: a JobRef, or ConfigError /
ValueError (a bad server address, an empty handle without a unique). Invariants: a parsed
reference prints as printable text without spaces (ASCII unless the server is an IDN host name),
and printing then parsing it again gives the same reference.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["gearstash"]):
    from gearstash.errors import ConfigError
    from gearstash.model.records import JobRef


def check(text: str | bytes) -> None:
    try:
        ref = JobRef.parse(text)
    except (ConfigError, ValueError):
        return
    assert type(ref.handle) is bytes
    assert ref.handle or ref.unique is not None  # an empty handle only with a unique
    assert ref.unique is None or type(ref.unique) is bytes
    printed = str(ref)
    if ref.server is None or (ref.server.isascii() and ref.server.isprintable()):
        assert printed.isascii() and printed.isprintable(), printed
        assert " " not in printed or (ref.server is not None and " " in ref.server), printed
    assert JobRef.parse(printed) == ref, (text, printed)
    # a reference made from the parsed bytes prints and parses back to itself too
    bare = JobRef(ref.handle, None, ref.unique)
    assert JobRef.parse(str(bare)) == bare


def test_one_input(data: bytes) -> None:
    check(data)
    check(data.decode("utf-8", "surrogateescape"))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
