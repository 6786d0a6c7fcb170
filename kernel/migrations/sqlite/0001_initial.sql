-- AOS SQLite schema, version 1.
--
-- Control blocks keep the columns the store filters on or changes atomically
-- (status, revision, last_seq, usage counters) next to a JSON body holding the rest of
-- the block. History, content and the runtime log are append-only: triggers refuse
-- every UPDATE and DELETE, so no code path can rewrite them.

CREATE TABLE system_cb (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    revision  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body      TEXT NOT NULL
) STRICT;

CREATE TABLE agents (
    agent_id          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros       INTEGER NOT NULL DEFAULT 0,
    turns             INTEGER NOT NULL DEFAULT 0,
    dispatches        INTEGER NOT NULL DEFAULT 0,
    body              TEXT NOT NULL
) STRICT;

CREATE TABLE sessions (
    session_id        TEXT PRIMARY KEY,
    agent_id          TEXT NOT NULL REFERENCES agents (agent_id),
    status            TEXT NOT NULL,
    phase             TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    last_seq          INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros       INTEGER NOT NULL DEFAULT 0,
    turns             INTEGER NOT NULL DEFAULT 0,
    dispatches        INTEGER NOT NULL DEFAULT 0,
    body              TEXT NOT NULL
) STRICT;

CREATE INDEX sessions_by_agent ON sessions (agent_id, session_id);
CREATE INDEX sessions_unsettled ON sessions (session_id)
    WHERE status = 'initializing' OR phase <> 'idle';

CREATE TABLE history (
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    -- The session's revision after this message was appended.
    session_revision INTEGER NOT NULL,
    message_id  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    origin      TEXT NOT NULL,
    dispatch_id TEXT,
    created_at  INTEGER NOT NULL,
    parts       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) STRICT, WITHOUT ROWID;

-- An append is one statement: `INSERT INTO history ... SELECT last_seq + 1, revision + 1
-- FROM sessions ...`; this trigger advances the session in the same statement, so the
-- seq stays gap-free without a multi-statement transaction.
CREATE TRIGGER history_advances_session AFTER INSERT ON history
BEGIN
    UPDATE sessions
       SET last_seq = NEW.seq, revision = NEW.session_revision, updated_at = NEW.created_at
     WHERE session_id = NEW.session_id;
END;

CREATE TRIGGER history_is_append_only_update BEFORE UPDATE ON history
BEGIN SELECT RAISE(ABORT, 'history is append-only: rows cannot be updated'); END;
CREATE TRIGGER history_is_append_only_delete BEFORE DELETE ON history
BEGIN SELECT RAISE(ABORT, 'history is append-only: rows cannot be deleted'); END;

CREATE TABLE content (
    content_id  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    agent_id    TEXT NOT NULL,
    size_chars  INTEGER NOT NULL,
    line_count  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
) STRICT;

CREATE TRIGGER content_is_immutable_update BEFORE UPDATE ON content
BEGIN SELECT RAISE(ABORT, 'content is immutable: rows cannot be updated'); END;
CREATE TRIGGER content_is_immutable_delete BEFORE DELETE ON content
BEGIN SELECT RAISE(ABORT, 'content is immutable: rows cannot be deleted'); END;

CREATE TABLE runtime_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    log_id      TEXT NOT NULL UNIQUE,
    ts          INTEGER NOT NULL,
    caller      TEXT NOT NULL,
    op          TEXT NOT NULL,
    agent_id    TEXT,
    session_id  TEXT,
    outcome     TEXT NOT NULL,
    duration_us INTEGER NOT NULL,
    targets     TEXT,
    data        TEXT
) STRICT;

CREATE INDEX runtime_log_by_session ON runtime_log (session_id, seq) WHERE session_id IS NOT NULL;
CREATE INDEX runtime_log_by_op ON runtime_log (op, seq);

CREATE TRIGGER runtime_log_is_append_only_update BEFORE UPDATE ON runtime_log
BEGIN SELECT RAISE(ABORT, 'the runtime log is append-only: rows cannot be updated'); END;
CREATE TRIGGER runtime_log_is_append_only_delete BEFORE DELETE ON runtime_log
BEGIN SELECT RAISE(ABORT, 'the runtime log is append-only: rows cannot be deleted'); END;

CREATE TABLE dispatches (
    dispatch_id TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (session_id),
    agent_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    queued_at   INTEGER NOT NULL,
    body        TEXT NOT NULL
) STRICT;

CREATE INDEX dispatches_by_session ON dispatches (session_id, dispatch_id);

CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    label       TEXT,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
) STRICT;
