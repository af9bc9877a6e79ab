"""The SQL schema of the ``sql`` store (schema version 4), the same on SQLite, PostgreSQL and MariaDB.

Other programs (PHP, reports, a DBA's shell) may read these tables directly, so they are kept plain:
no pickles, bytes as BLOB/BYTEA, times as float Unix seconds in DOUBLE columns, states as short text.

``gearstash_jobs``: one row per job instance (server, handle, unique).

=============== ============================ ====================================================
column          type (PostgreSQL / MariaDB)  meaning
=============== ============================ ====================================================
id              BIGSERIAL / BIGINT AUTO_INC  primary key; a newer job has a higher id
server          VARCHAR(255) (utf8mb4_bin)   ``host:port`` of the job server that issued the job
handle          BYTEA / VARBINARY(255)       job handle (bytes, at most 255)
unique_key      BYTEA / VARBINARY(255)       the job's unique (bytes, at most 255; ``''`` if none)
function        BYTEA / LONGBLOB             function name (bytes)
state           VARCHAR(16)                  ``queued`` (submitted, no worker started it yet),
                                             ``running``, ``complete`` or ``failed`` (as stored:
                                             a row past ``expires_at`` reads as ``expired``)
attempt         INTEGER                      how many times a worker started this job (0 while
                                             queued)
result          BYTEA / LONGBLOB, null       the result of WORK_COMPLETE; NULL until completed
error_kind      VARCHAR(16), null            ``fail`` or ``exception``; NULL when no error
error_message   TEXT / LONGTEXT, null        the error text (UTF-8)
traceback       TEXT / LONGTEXT, null        the Python traceback of an exception
worker          TEXT                         the worker's id (``''`` if unknown)
started_at      DOUBLE, null                 Unix time of the last ``started``; NULL if never seen
finished_at     DOUBLE, null                 Unix time the job completed or failed
updated_at      DOUBLE, null                 Unix time of the last event
expires_at      DOUBLE, null                 Unix time the job expires (TTL); NULL: never
next_seq        INTEGER                      the ``seq`` the next chunk of this job gets
lease_until     DOUBLE, null                 Unix time until which the running job's worker
                                             promised to renew its lease (``heartbeat``); NULL:
                                             no lease (schema version 2)
workload        BYTEA / LONGBLOB, null       the job's workload, when a worker captured it
                                             (``--capture-workload``); NULL: not captured
                                             (schema version 4)
=============== ============================ ====================================================

Unique constraint ``uq_gearstash_jobs_key`` on (handle, server, unique_key), which is also the index
for finding jobs by handle alone (take the row with the highest ``id``); an index on (unique_key,
server) (``ix_gearstash_jobs_unique_key``, schema version 2) for finding jobs by unique alone (a
job a persistent-queue server replayed under a new handle); an index on ``expires_at``
(``ix_gearstash_jobs_expires_at``; partial, ``WHERE expires_at IS NOT NULL``, on SQLite and
PostgreSQL; a full index, as tables made by earlier 0.1 development builds have, works the same);
an index on (state, id) (``ix_gearstash_jobs_state``, schema version 3) for listing jobs by state
newest first and counting them by state (an index-only scan).

``gearstash_chunks``: what the job said while running, in order, for the *current* attempt only (a
new ``started`` deletes the job's chunks and ``seq`` starts again at 0). Primary key (job_id, seq).

=============== ============================ ====================================================
job_id          BIGINT                       ``gearstash_jobs.id`` (ON DELETE CASCADE)
seq             INTEGER                      0, 1, 2, ... per job: the order the worker said it
kind            VARCHAR(8)                   ``data`` (WORK_DATA), ``warning`` or ``status``
payload         BYTEA / LONGBLOB, null       the chunk's bytes; NULL for ``status``
numerator       BIGINT, null                 status numerator; NULL for ``data``/``warning``
denominator     BIGINT, null                 status denominator; NULL for ``data``/``warning``
at              DOUBLE                       Unix time the worker said it
=============== ============================ ====================================================

``gearstash_meta``: ``key`` VARCHAR(64) primary key, ``value`` VARCHAR(255). Holds ``schema_version``
(``"4"``) and, once a purge has cleaned something, ``purged_until`` (the expiry up to which expired
jobs have been cleaned; see :mod:`gearstash_sql.maintenance`). ``key`` is a reserved word in
MySQL/MariaDB: quote it (```key```) in hand-written SQL. A store refuses to open tables whose
schema_version is newer than it knows.

Schema version 1 → 2 → 3 → 4 (:func:`ensure_schema` migrates on open, once, under a lock: SQLite's
``BEGIN IMMEDIATE``, a ``FOR UPDATE`` of the version row on PostgreSQL, ``GET_LOCK`` on MariaDB):
adds the column ``lease_until`` and the index ``ix_gearstash_jobs_unique_key`` (version 2), the
index ``ix_gearstash_jobs_state`` (version 3), the column ``workload`` (version 4), then sets
schema_version to ``"4"``. Every step is skipped when already done, so an interrupted migration is
finished by the next opener. Rows keep their values (``lease_until`` and ``workload`` NULL).
Building the index blocks writes to ``gearstash_jobs`` while it
runs (a second or so per million jobs).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from gearstash.errors import StoreError

SCHEMA_VERSION = 4
MIGRATABLE = frozenset({1, 2, 3})  # older versions ensure_schema upgrades
MAX_KEY_BYTES = 255  # handle and unique_key; server is at most 255 characters

_MYSQL = ("mysql", "mariadb")

Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)
KeyBytes = sa.LargeBinary().with_variant(mysql.VARBINARY(MAX_KEY_BYTES), *_MYSQL)
LongText = sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL)
ServerText = sa.String(255).with_variant(
    mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), *_MYSQL
)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = sa.Table(
    "gearstash_jobs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("server", ServerText, nullable=False),
    sa.Column("handle", KeyBytes, nullable=False),
    sa.Column("unique_key", KeyBytes, nullable=False),
    sa.Column("function", Blob, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("result", Blob, nullable=True),
    sa.Column("error_kind", sa.String(16), nullable=True),
    sa.Column("error_message", LongText, nullable=True),
    sa.Column("traceback", LongText, nullable=True),
    sa.Column("worker", sa.Text(), nullable=False),
    sa.Column("started_at", sa.Double(), nullable=True),
    sa.Column("finished_at", sa.Double(), nullable=True),
    sa.Column("updated_at", sa.Double(), nullable=True),
    sa.Column("expires_at", sa.Double(), nullable=True),
    sa.Column("next_seq", sa.Integer(), nullable=False),
    sa.Column("lease_until", sa.Double(), nullable=True),  # schema version 2
    sa.Column("workload", Blob, nullable=True),  # schema version 4
    # handle first: the same constraint also serves lookups by handle alone (no second index to
    # write on every insert, which on SQLite costs ~20% of the write rate)
    sa.UniqueConstraint("handle", "server", "unique_key", name="key"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
# Partial where the database has them (SQLite, PostgreSQL): rows without a TTL (``?ttl=0``, or
# ``ttl=0`` per function) cost no index entry, one page fewer to write per new job (about 7 us of
# the ~35 us of a new job's write on SQLite). A purge's ``WHERE expires_at < ?`` implies ``IS NOT
# NULL``, so it still uses the index.
_HAS_TTL = jobs.c.expires_at.is_not(None)
sa.Index(None, jobs.c.expires_at, sqlite_where=_HAS_TTL, postgresql_where=_HAS_TTL)
# lookups by unique alone (schema version 2): unique_key = ? [AND server = ?] ORDER BY id DESC
# (SQLite and InnoDB index entries end in the row id, so the newest is found in the index).
# A second index on every new job's insert: the price of finding a replayed job.
unique_index = sa.Index(None, jobs.c.unique_key, jobs.c.server)
# listing by state and counting by state (schema version 3): ``state = ? ORDER BY id DESC`` walks
# it backwards, and ``GROUP BY state`` counts from the index alone (expired rows are counted
# apart, on the expires_at index).
state_index = sa.Index(None, jobs.c.state, jobs.c.id)

chunks = sa.Table(
    "gearstash_chunks",
    metadata,
    sa.Column(
        "job_id",
        Id,
        sa.ForeignKey(jobs.c.id, ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("payload", Blob, nullable=True),
    sa.Column("numerator", sa.BigInteger(), nullable=True),
    sa.Column("denominator", sa.BigInteger(), nullable=True),
    sa.Column("at", sa.Double(), nullable=False),
    # SQLite: stored in primary-key order, as InnoDB does: no separate rowid b-tree and key index
    # to write (a write with chunks measured ~10-15% cheaper) and a job's chunks read as one range.
    # Big payloads still work (overflow pages); SQLite advises this layout for rows well under a
    # page, which progress chunks are.
    sqlite_with_rowid=False,
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

meta = sa.Table(
    "gearstash_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


def read_schema_version(conn: sa.Connection) -> int | None:
    """The ``schema_version`` stored in ``gearstash_meta``, or None when there is none yet."""
    if not sa.inspect(conn).has_table(meta.name):
        return None
    value = conn.execute(
        sa.select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar_one_or_none()
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return -1


def ensure_schema(engine: sa.Engine, name: str) -> int:
    """Create the tables if missing, migrate older ones, check ``schema_version``; return the
    version in use.

    Safe to run from several processes at once: losing a ``CREATE TABLE`` or version-row race is
    retried, and a migration runs under a lock (see the module doc). Raises
    :class:`~gearstash.errors.StoreError` for a schema newer than this release (``name`` names the
    store in the message) and lets database errors through for the caller to map.
    """
    with engine.begin() as conn:
        _check_version(read_schema_version(conn), name)
    version: int | None = None
    for attempt in range(5):
        try:
            metadata.create_all(engine, checkfirst=True)
            with engine.begin() as conn:
                version = read_schema_version(conn)
                if version is None:
                    # tables made just now; or version 1 tables whose version row an old
                    # build never wrote (it stopped between the two): migrated below
                    columns = {c["name"] for c in sa.inspect(conn).get_columns(jobs.name)}
                    version = 2 if "lease_until" in columns else 1  # migrated below
                    conn.execute(meta.insert().values(key="schema_version", value=str(version)))
            if version in MIGRATABLE:
                _migrate(engine)
                with engine.begin() as conn:
                    version = read_schema_version(conn)
            break
        except sa.exc.DBAPIError as exc:  # another process created the same table or row first
            if exc.connection_invalidated or attempt == 4:
                raise
            time.sleep(0.02 * (attempt + 1))
    _check_version(version, name)
    if version in MIGRATABLE:  # pragma: no cover - _migrate sets the version or raises
        raise StoreError(f"{name}: migrating the tables to schema_version {SCHEMA_VERSION} failed")
    return SCHEMA_VERSION


def _check_version(version: int | None, name: str) -> None:
    if version is None or version == SCHEMA_VERSION or version in MIGRATABLE:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{name}: the tables have schema_version {version}, newer than this gearstash "
            f"understands ({SCHEMA_VERSION}); upgrade gearstash to use this store"
        )
    raise StoreError(
        f"{name}: gearstash_meta holds a bad schema_version ({version}); expected {SCHEMA_VERSION}"
    )


# MySQL/MariaDB: a column or index that already exists (another opener added it)
_MYSQL_ALREADY = frozenset({1060, 1061})
_MIGRATION_LOCK = "gearstash_schema"  # MySQL/MariaDB GET_LOCK name (server-wide)
_MIGRATION_WAIT_S = 120


def _migrate(engine: sa.Engine) -> None:
    """Bring version 1 to 3 tables to :data:`SCHEMA_VERSION`, once, under a lock; idempotent.

    SQLite: one ``BEGIN IMMEDIATE`` transaction (its DDL is transactional). PostgreSQL: one
    transaction that first locks the version row (``FOR UPDATE``), so concurrent openers wait and
    then find the work done. MariaDB/MySQL (whose DDL commits at once): under ``GET_LOCK``, each
    step checked first (and a column or index that appeared meanwhile tolerated); the version row
    is written last, so an interrupted migration is finished by the next opener.
    """
    family = engine.dialect.name
    if family == "sqlite":
        with engine.begin() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            if read_schema_version(conn) in MIGRATABLE:
                _upgrade(conn)
        return
    if family == "postgresql":
        with engine.begin() as conn:
            version = conn.execute(
                sa.select(meta.c.value).where(meta.c.key == "schema_version").with_for_update()
            ).scalar_one_or_none()
            if version is not None and _int(version) in MIGRATABLE:
                _upgrade(conn)
        return
    with engine.connect() as conn:
        conn.execute(sa.select(sa.func.get_lock(_MIGRATION_LOCK, _MIGRATION_WAIT_S)))
        conn.commit()
        try:
            if read_schema_version(conn) in MIGRATABLE:
                conn.commit()  # a fresh snapshot for the checks below
                _upgrade(conn)
            conn.commit()
        finally:
            conn.rollback()
            conn.execute(sa.select(sa.func.release_lock(_MIGRATION_LOCK)))
            conn.commit()


def _upgrade(conn: sa.Connection) -> None:
    """Version 1, 2 or 3 → 4 on ``conn`` (the caller holds the migration lock): each step if not
    done."""
    dialect = conn.dialect
    prepare = dialect.identifier_preparer
    inspector = sa.inspect(conn)
    columns = {column["name"] for column in inspector.get_columns(jobs.name)}
    indexes = {index["name"] for index in inspector.get_indexes(jobs.name)}
    steps: list[str] = []
    for column in (jobs.c.lease_until, jobs.c.workload):  # nullable: old rows read NULL
        if column.name not in columns:
            kind = column.type.compile(dialect=dialect)
            steps.append(
                f"ALTER TABLE {prepare.format_table(jobs)} ADD COLUMN "
                f"{prepare.quote(column.name)} {kind} NULL"
            )
    for index in (unique_index, state_index):
        if index.name not in indexes:
            steps.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)))
    for statement in steps:
        try:
            conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            code = getattr(exc.orig, "args", (None,))[:1]
            if dialect.name not in ("mysql", "mariadb") or not set(code) & _MYSQL_ALREADY:
                raise
    conn.execute(
        meta.update()
        .where(meta.c.key == "schema_version", meta.c.value.in_(sorted(map(str, MIGRATABLE))))
        .values(value=str(SCHEMA_VERSION))
    )


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1
