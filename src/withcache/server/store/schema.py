"""The schema's steps both SQL stores take alike: the same text, in types both
databases know (SQLite takes each by its affinity: BIGINT as INTEGER, DOUBLE
PRECISION as REAL, BOOLEAN's true and false as 1 and 0), put together into
each store's MIGRATIONS with what is its own (the secrets' bytes, the
triggers that keep the totals, PostgreSQL's notices). `{identity}` stands
for the store's kind of generated primary key. A step once released is
never edited; a change is a new step.
"""

# The first tables (SQLite's first version; PostgreSQL's first has them too).
FIRST_TABLES = """
    CREATE TABLE artifacts (
        id {identity},
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        headers TEXT NOT NULL,
        fetched_at DOUBLE PRECISION NOT NULL,
        hits BIGINT NOT NULL DEFAULT 0,
        misses BIGINT NOT NULL DEFAULT 0,
        last_hit DOUBLE PRECISION,
        UNIQUE (key, scope)
    );
    CREATE INDEX artifacts_sha256 ON artifacts (sha256);
    CREATE INDEX artifacts_fetched_at ON artifacts (fetched_at);
    CREATE TABLE misses (
        key TEXT PRIMARY KEY,
        url TEXT,
        count BIGINT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX misses_last_seen ON misses (last_seen);
    CREATE TABLE fills (
        id {identity},
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        expected_sha256 TEXT,
        credentialed BOOLEAN NOT NULL DEFAULT false,
        bytes_done BIGINT NOT NULL DEFAULT 0,
        total BIGINT,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX fills_one_active ON fills (key, scope)
        WHERE state IN ('queued', 'running');
    CREATE INDEX fills_state ON fills (state, id);
    CREATE TABLE events (
        id {identity},
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        url TEXT,
        actor TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    """

# Totals kept by triggers (each store's own), so the header strip, /healthz
# and the cap check cost one row read instead of a scan of every artifact.
COUNTS = """
    CREATE TABLE blob_refs (
        sha256 TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        refs BIGINT NOT NULL
    );
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        artifacts BIGINT NOT NULL,
        bytes BIGINT NOT NULL
    );
    """

# API tokens: only the SHA-256 of each token is kept.
TOKENS = """
    CREATE TABLE tokens (
        id {identity},
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        last_used DOUBLE PRECISION,
        created_by TEXT
    );
    """

# Leases: which host runs a fill (or keeps a credentialed fill's
# credentials), and until when.
LEASES = """
    ALTER TABLE fills ADD COLUMN holder TEXT;
    ALTER TABLE fills ADD COLUMN lease_until DOUBLE PRECISION;
    """

# Bytes promised to running fills under --max-bytes; where an interrupted
# fill resumes from; when each blob was last re-hashed (the scrub's order).
RESERVATIONS = """
    ALTER TABLE fills ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE fills ADD COLUMN resume TEXT;
    ALTER TABLE artifacts ADD COLUMN checked_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    CREATE INDEX artifacts_checked_at ON artifacts (checked_at);
    """

# Pre-seeded and air-gapped labs: a fill's expected digest names its
# algorithm; imported artifacts say so; lists group the fills added together.
LISTS = """
    ALTER TABLE fills RENAME COLUMN expected_sha256 TO expected_digest;
    UPDATE fills SET expected_digest = 'sha256:' || lower(expected_digest)
        WHERE expected_digest IS NOT NULL;
    ALTER TABLE artifacts ADD COLUMN imported BOOLEAN NOT NULL DEFAULT false;
    CREATE TABLE lists (
        id {identity},
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT
    );
    CREATE INDEX lists_created_at ON lists (created_at);
    CREATE TABLE list_items (
        list_id BIGINT NOT NULL,
        line INTEGER NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        fill_id BIGINT,
        size BIGINT,
        note TEXT,
        PRIMARY KEY (list_id, line)
    );
    CREATE INDEX list_items_fill ON list_items (fill_id) WHERE fill_id IS NOT NULL;
    """

# Mutable URLs and a full cache: pins, when the origin last vouched for an
# artifact's bytes and who is asking it now, the origin's ETag to ask
# with, eviction's order; when a fill for an unhealthy origin may run.
PINS = """
    ALTER TABLE artifacts ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false;
    ALTER TABLE artifacts ADD COLUMN validated_at DOUBLE PRECISION;
    ALTER TABLE artifacts ADD COLUMN revalidating_until DOUBLE PRECISION;
    ALTER TABLE artifacts ADD COLUMN etag TEXT;
    ALTER TABLE fills ADD COLUMN not_before DOUBLE PRECISION;
    CREATE INDEX artifacts_last_used ON artifacts (pinned, (coalesce(last_hit, fetched_at)), id);
    """

# Operator sessions ended (logged out) before their cookie expires, on any host.
ENDED_SESSIONS = """
    CREATE TABLE ended_sessions (nonce TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL);
    CREATE INDEX ended_sessions_expires ON ended_sessions (expires);
    """

# Where an object store keeps each blob it left where it was uploaded (see
# store.BlobObjects): pending while sha256 is NULL and it is not abandoned.
BLOB_OBJECTS = """
    CREATE TABLE blob_objects (
        location TEXT PRIMARY KEY,
        sha256 TEXT UNIQUE,
        started_at DOUBLE PRECISION NOT NULL,
        abandoned BOOLEAN NOT NULL DEFAULT false
    );
    CREATE INDEX blob_objects_pending ON blob_objects (started_at) WHERE sha256 IS NULL;
"""

# Where the host running a fill serves its bytes to the other hosts of a
# shared store (fill/peers.py); NULL on a store only one host uses.
PEER_URLS = "ALTER TABLE fills ADD COLUMN peer_url TEXT;"
