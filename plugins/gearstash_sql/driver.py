"""The one place the SQL store touches a database driver's private API.

Private API used: PyMySQL's ``Connection._sock`` (the connected socket; PyMySQL has no public
``fileno()``). psycopg (2 and 3) have a public ``fileno()``, used when there. Checked against
PyMySQL 1.2.4 (installed when this was written; the attribute has had this name since PyMySQL
0.x). ``tests/test_drivers.py`` checks on the installed version that every name in
:data:`PYMYSQL_PRIVATE_NAMES` is still there, and fails naming it if a release removed it.

Why: a write connection is polled before reuse to find one the server closed meanwhile (see
:class:`gearstash_sql.writers.Writer`); without the socket that check is skipped, not wrong.
"""

from __future__ import annotations

from typing import Any

PYMYSQL_PRIVATE_NAMES = ("_sock",)
"""The private attributes of a PyMySQL connection this module reads."""


def socket_fd(conn: Any) -> int | None:
    """The socket of a DBAPI connection (psycopg, PyMySQL), or None if it does not say."""
    try:
        if hasattr(conn, "fileno"):  # psycopg, psycopg2
            return int(conn.fileno())
        sock = getattr(conn, "_sock", None)  # PyMySQL
        return None if sock is None else int(sock.fileno())
    except Exception:
        return None


def missing_pymysql_names(conn: Any) -> list[str]:
    """The names of :data:`PYMYSQL_PRIVATE_NAMES` that the PyMySQL connection ``conn`` lacks."""
    return [name for name in PYMYSQL_PRIVATE_NAMES if not hasattr(conn, name)]
