-- AOS PostgreSQL schema, version 1: the tables and columns of the SQLite schema
-- (migrations/sqlite/0001_initial.sql), so `aos migrate` copies table by table.
--
-- Integers are BIGINT (timestamps are milliseconds since the Unix epoch). JSON stays
-- TEXT, byte for byte as serde_json wrote it: history search matches on that text.
-- Ids use the "C" collation so ordering and `id > $after` paging compare bytes, as
-- SQLite does. Content bodies are BYTEA (UTF-8) because TEXT cannot hold NUL.
--
-- History, content and the runtime log are append-only: triggers refuse every UPDATE,
-- DELETE and TRUNCATE, so no code path can rewrite them. Unlike SQLite there is no
-- trigger advancing the session on insert: the append statement updates the session
-- row and inserts the message in one statement (see store/postgres.rs).

CREATE FUNCTION aos_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END;
$$;

CREATE TABLE system_cb (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    revision   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    body       TEXT NOT NULL
);

CREATE TABLE agents (
    agent_id          TEXT COLLATE "C" PRIMARY KEY,
    status            TEXT NOT NULL,
    revision          BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    turns             BIGINT NOT NULL DEFAULT 0,
    dispatches        BIGINT NOT NULL DEFAULT 0,
    body              TEXT NOT NULL
);

CREATE TABLE sessions (
    session_id        TEXT COLLATE "C" PRIMARY KEY,
    agent_id          TEXT COLLATE "C" NOT NULL REFERENCES agents (agent_id),
    status            TEXT NOT NULL,
    phase             TEXT NOT NULL,
    revision          BIGINT NOT NULL,
    last_seq          BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    turns             BIGINT NOT NULL DEFAULT 0,
    dispatches        BIGINT NOT NULL DEFAULT 0,
    body              TEXT NOT NULL
);

CREATE INDEX sessions_by_agent ON sessions (agent_id, session_id);
CREATE INDEX sessions_unsettled ON sessions (session_id)
    WHERE status = 'initializing' OR phase <> 'idle';

CREATE TABLE history (
    session_id  TEXT COLLATE "C" NOT NULL REFERENCES sessions (session_id),
    seq         BIGINT NOT NULL CHECK (seq >= 1),
    -- The session's revision after this message was appended.
    session_revision BIGINT NOT NULL,
    message_id  TEXT COLLATE "C" NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    origin      TEXT NOT NULL,
    dispatch_id TEXT COLLATE "C",
    created_at  BIGINT NOT NULL,
    parts       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TRIGGER history_is_append_only_update BEFORE UPDATE ON history FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('history is append-only: rows cannot be updated');
CREATE TRIGGER history_is_append_only_delete BEFORE DELETE ON history FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('history is append-only: rows cannot be deleted');
CREATE TRIGGER history_is_append_only_truncate BEFORE TRUNCATE ON history
    EXECUTE FUNCTION aos_refuse_change('history is append-only: rows cannot be deleted');

CREATE TABLE content (
    content_id  TEXT COLLATE "C" PRIMARY KEY,
    session_id  TEXT COLLATE "C" NOT NULL REFERENCES sessions (session_id),
    agent_id    TEXT COLLATE "C" NOT NULL,
    size_chars  BIGINT NOT NULL,
    line_count  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    body        BYTEA NOT NULL
);

CREATE TRIGGER content_is_immutable_update BEFORE UPDATE ON content FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('content is immutable: rows cannot be updated');
CREATE TRIGGER content_is_immutable_delete BEFORE DELETE ON content FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('content is immutable: rows cannot be deleted');
CREATE TRIGGER content_is_immutable_truncate BEFORE TRUNCATE ON content
    EXECUTE FUNCTION aos_refuse_change('content is immutable: rows cannot be deleted');

CREATE TABLE runtime_log (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id      TEXT COLLATE "C" NOT NULL UNIQUE,
    ts          BIGINT NOT NULL,
    caller      TEXT NOT NULL,
    op          TEXT NOT NULL,
    agent_id    TEXT COLLATE "C",
    session_id  TEXT COLLATE "C",
    outcome     TEXT NOT NULL,
    duration_us BIGINT NOT NULL,
    targets     TEXT,
    data        TEXT
);

CREATE INDEX runtime_log_by_session ON runtime_log (session_id, seq) WHERE session_id IS NOT NULL;
CREATE INDEX runtime_log_by_op ON runtime_log (op, seq);

CREATE TRIGGER runtime_log_is_append_only_update BEFORE UPDATE ON runtime_log FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('the runtime log is append-only: rows cannot be updated');
CREATE TRIGGER runtime_log_is_append_only_delete BEFORE DELETE ON runtime_log FOR EACH ROW
    EXECUTE FUNCTION aos_refuse_change('the runtime log is append-only: rows cannot be deleted');
CREATE TRIGGER runtime_log_is_append_only_truncate BEFORE TRUNCATE ON runtime_log
    EXECUTE FUNCTION aos_refuse_change('the runtime log is append-only: rows cannot be deleted');

CREATE TABLE dispatches (
    dispatch_id TEXT COLLATE "C" PRIMARY KEY,
    session_id  TEXT COLLATE "C" NOT NULL REFERENCES sessions (session_id),
    agent_id    TEXT COLLATE "C" NOT NULL,
    status      TEXT NOT NULL,
    queued_at   BIGINT NOT NULL,
    body        TEXT NOT NULL
);

CREATE INDEX dispatches_by_session ON dispatches (session_id, dispatch_id);

CREATE TABLE tokens (
    token_id    TEXT COLLATE "C" PRIMARY KEY,
    secret_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    label       TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
