//! The PostgreSQL store: one database shared by several kernel processes.
//!
//! Because other kernels write the same rows, nothing is cached here: every read is a
//! query and every write one statement (or one transaction) on the pool. The ordering
//! guarantees come from PostgreSQL's row locks, whichever process the writers run in:
//!
//! - An append is one statement that advances the session row (`last_seq + 1`,
//!   `revision + 1`) and inserts the message numbered from it. The row lock taken by
//!   the `UPDATE` serializes appenders of one session, so seqs are gap-free, and a
//!   failed insert (a duplicate message id) undoes the advance with it.
//! - Control-block saves are compare-and-set: `UPDATE … SET revision = revision + 1
//!   WHERE id = $1 AND revision = $expected`; no row changed means a conflict (or an
//!   unknown id).
//! - Usage is one statement that updates the session and then its agent, always in that
//!   order, so concurrent usage updates cannot deadlock.
//!
//! - RuntimeLog seqs come from an identity column. They are unique and increasing in
//!   insert order, but with several writers a row may commit after one with a higher
//!   seq, so a reader paging with `after_seq` while others write can pass over a row
//!   that appears a moment later (SQLite, with one writer, never does this).
//!
//! Rows use the columns of the SQLite schema (`migrations/postgres/`), decoded by the
//! same code (`store::codec`), so both backends read a block the same way.

pub mod testing;

use std::str::FromStr;
use std::time::Duration;

use aos_sdk::protocol::{
    AgentCb, AgentStatus, ContentInfo, Dispatch, DispatchStatus, LogEntry, Message, SessionCb,
    SessionStatus, SystemCb, Timestamp, TokenInfo, Usage,
};
use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Row};

use super::codec::{
    StoreRow, agent_from_row, bigint, content_info_from_row, cost_micros, from_json,
    is_foreign_key_violation, is_unique_violation, limit, log_from_row, message_from_row,
    phase_str, session_from_row, session_status_str, status_str, to_json, token_from_row,
    usage_from_row,
};
use super::{
    AppendOutcome, ContentRecord, HistoryQuery, ListQuery, LogQuery, NewLogEntry, NewMessage,
    Store, StoreError, StoreResult, TokenRecord,
};

/// The PostgreSQL schema, applied at open. sqlx holds a PostgreSQL advisory lock (keyed
/// by the database name) while it checks and applies migrations, so kernels starting
/// at once on one database apply each migration exactly once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections each store opens at most, unless [`PgStore::open_with`] says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long opening the store waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a caller waits for a free connection before the store reports the database
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Log rows per INSERT statement: 10 parameters a row stays far below PostgreSQL's
/// limit of 65 535 bound parameters.
const LOG_CHUNK: usize = 500;

/// PostgreSQL implementation of [`Store`]. Clones share one pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The URL without its password, for messages.
    url: String,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`)
    /// with up to [`DEFAULT_MAX_CONNECTIONS`] connections and applies pending
    /// migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`PgStore::open`] with a pool of at most `max_connections` connections. Every
    /// kernel sharing a database holds its own pool, and the server's
    /// `max_connections` bounds their sum.
    pub async fn open_with(url: &str, max_connections: u32) -> StoreResult<Self> {
        let shown = redact_url(url);
        let open_error = |message: String| StoreError::Open {
            url: shown.clone(),
            message,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| open_error(e.to_string()))?
            .application_name("aos");
        // One plain attempt first, so a wrong URL or a server that is down fails at
        // once with the server's answer instead of after the pool's retries.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| open_error(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| open_error(e.to_string()))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        if let Err(error) = MIGRATOR.run(&pool).await {
            // sqlx leaves its advisory lock held on some failures; closing the pool ends
            // the session that holds it, so other kernels are not blocked behind it.
            pool.close().await;
            return Err(error.into());
        }
        Ok(Self { pool, url: shown })
    }

    /// The connection pool, for features that talk to the same database directly
    /// (`LISTEN`/`NOTIFY` between kernels, membership).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Saves one control block with a compare-and-set `update` (its last parameter is
    /// the expected revision); when no row changed, tells a conflict from an unknown id.
    async fn compare_and_set(
        &self,
        update: sqlx::query::Query<'_, Postgres, PgArguments>,
        exists: sqlx::query::QueryScalar<'_, Postgres, bool, PgArguments>,
        kind: &'static str,
        id: &str,
        expected: u64,
        action: &'static str,
    ) -> StoreResult<()> {
        let done = update.execute(&self.pool).await.map_err(classify(action))?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let found = exists
            .fetch_one(&self.pool)
            .await
            .map_err(classify(action))?;
        Err(if found {
            StoreError::Conflict {
                kind,
                id: id.to_owned(),
                expected,
            }
        } else {
            StoreError::NotFound {
                kind,
                id: id.to_owned(),
            }
        })
    }
}

/// Maps a sqlx error to a [`StoreError`], separating "the database cannot be used right
/// now" (unreachable, shutting down, out of space or connections, a standby, a lock or
/// statement timeout) from other failures.
/// An insert's error: a unique violation is a `Duplicate` of `id`; anything else is
/// classified as failing `action`.
fn duplicate_or(
    kind: &'static str,
    id: &str,
    action: &'static str,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    let id = id.to_owned();
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Duplicate { kind, id }
        } else {
            classify(action)(e)
        }
    }
}

fn classify(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |error| {
        if is_unavailable(&error) {
            StoreError::Unavailable {
                action,
                source: error.into(),
            }
        } else {
            StoreError::Database {
                action,
                source: error.into(),
            }
        }
    }
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (disk full, out of
            // memory, too many connections); 57P: the server is shutting down or
            // starting; 58: system error (I/O).
            ["08", "53", "57P", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                // read-only transaction (a standby), serialization failure, deadlock,
                // lock not available, statement cancelled (timeout)
                || matches!(&*code, "25006" | "40001" | "40P01" | "55P03" | "57014")
        }),
        _ => false,
    }
}

/// `url` with the password (if any) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// PostgreSQL TEXT cannot hold NUL, so no stored id or text contains one: a lookup by
/// such a key finds nothing, without asking the database.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// A paging cursor as bound: ids never contain NUL, and in byte order "after `a\0…`"
/// selects exactly the ids after `a`.
fn cursor(after: &str) -> &str {
    after.split('\0').next().unwrap_or_default()
}

/// RuntimeLog text as stored: NUL (which PostgreSQL TEXT refuses, and which would fail
/// the whole batch) becomes U+FFFD. Log rows are diagnostics; losing them is worse.
fn log_text(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn content_from_row(row: &PgRow) -> StoreResult<ContentRecord> {
    let info = content_info_from_row(row)?;
    let bytes: Vec<u8> = row.try_get("body").map_err(|e| StoreError::Corrupt {
        what: format!("content `{}`", info.content_id),
        message: e.to_string(),
    })?;
    let body = String::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("content `{}`", info.content_id),
        message: format!("the body is not UTF-8: {e}"),
    })?;
    Ok(ContentRecord { info, body })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    // -- system ----------------------------------------------------------------------------

    async fn load_system(&self) -> StoreResult<Option<SystemCb>> {
        let row = sqlx::query("SELECT revision, updated_at, body FROM system_cb WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("loading the system control block"))?;
        row.map(|row| {
            let mut system: SystemCb = from_json("system", "1", &row.text("body")?)?;
            system.revision = row.count("revision")?;
            system.updated_at = row.timestamp("updated_at")?;
            Ok(system)
        })
        .transpose()
    }

    async fn insert_system(&self, system: &SystemCb) -> StoreResult<()> {
        let body = to_json("system", system)?;
        sqlx::query(
            "INSERT INTO system_cb (id, revision, updated_at, body) VALUES (1, $1, $2, $3)",
        )
        .bind(bigint(system.revision))
        .bind(system.updated_at.as_millis())
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(duplicate_or(
            "system control block",
            "1",
            "creating the system control block",
        ))?;
        Ok(())
    }

    async fn save_system(&self, system: &SystemCb, expected: u64) -> StoreResult<()> {
        let body = to_json("system", system)?;
        let update = sqlx::query(
            "UPDATE system_cb SET revision = revision + 1, updated_at = $1, body = $2
             WHERE id = 1 AND revision = $3",
        )
        .bind(system.updated_at.as_millis())
        .bind(body)
        .bind(bigint(expected));
        self.compare_and_set(
            update,
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM system_cb WHERE id = 1)"),
            "system",
            "system",
            expected,
            "saving the system control block",
        )
        .await
    }

    // -- agents ----------------------------------------------------------------------------

    async fn insert_agent(&self, agent: &AgentCb) -> StoreResult<()> {
        let body = to_json("agent", agent)?;
        sqlx::query(
            "INSERT INTO agents (agent_id, status, revision, created_at, updated_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&agent.agent_id)
        .bind(status_str(agent.status))
        .bind(bigint(agent.revision))
        .bind(agent.created_at.as_millis())
        .bind(agent.updated_at.as_millis())
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(duplicate_or("agent", &agent.agent_id, "creating an agent"))?;
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentCb>> {
        if !storable(agent_id) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("reading an agent"))?
            .as_ref()
            .map(agent_from_row)
            .transpose()
    }

    async fn list_agents(
        &self,
        status: Option<AgentStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<AgentCb>> {
        let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM agents WHERE TRUE");
        if let Some(status) = status {
            query.push(" AND status = ").push_bind(status_str(status));
        }
        if let Some(after) = &page.after {
            query.push(" AND agent_id > ").push_bind(cursor(after));
        }
        query
            .push(" ORDER BY agent_id LIMIT ")
            .push_bind(limit(page.limit));
        let rows = query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(classify("listing agents"))?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn save_agent(&self, agent: &AgentCb, expected: u64) -> StoreResult<()> {
        let body = to_json("agent", agent)?;
        let update = sqlx::query(
            "UPDATE agents SET status = $1, revision = revision + 1, updated_at = $2, body = $3
             WHERE agent_id = $4 AND revision = $5",
        )
        .bind(status_str(agent.status))
        .bind(agent.updated_at.as_millis())
        .bind(body)
        .bind(&agent.agent_id)
        .bind(bigint(expected));
        self.compare_and_set(
            update,
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE agent_id = $1)")
                .bind(&agent.agent_id),
            "agent",
            &agent.agent_id,
            expected,
            "saving an agent",
        )
        .await
    }

    // -- sessions --------------------------------------------------------------------------

    async fn insert_session(&self, session: &SessionCb) -> StoreResult<()> {
        let body = to_json("session", session)?;
        // The counters start at zero in the table whatever the block says.
        sqlx::query(
            "INSERT INTO sessions (session_id, agent_id, status, phase, revision, last_seq,
                                   created_at, updated_at, body)
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)",
        )
        .bind(&session.session_id)
        .bind(&session.agent_id)
        .bind(session_status_str(session.status))
        .bind(phase_str(session.phase))
        .bind(bigint(session.revision))
        .bind(session.created_at.as_millis())
        .bind(session.updated_at.as_millis())
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate {
                    kind: "session",
                    id: session.session_id.clone(),
                }
            } else if is_foreign_key_violation(&e) {
                StoreError::NotFound {
                    kind: "agent",
                    id: session.agent_id.clone(),
                }
            } else {
                classify("creating a session")(e)
            }
        })?;
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionCb>> {
        if !storable(session_id) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("reading a session"))?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn list_sessions(
        &self,
        agent_id: Option<&str>,
        status: Option<SessionStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<SessionCb>> {
        if agent_id.is_some_and(|id| !storable(id)) {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM sessions WHERE TRUE");
        if let Some(agent_id) = agent_id {
            query.push(" AND agent_id = ").push_bind(agent_id);
        }
        if let Some(status) = status {
            query
                .push(" AND status = ")
                .push_bind(session_status_str(status));
        }
        if let Some(after) = &page.after {
            query.push(" AND session_id > ").push_bind(cursor(after));
        }
        query
            .push(" ORDER BY session_id LIMIT ")
            .push_bind(limit(page.limit));
        let rows = query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(classify("listing sessions"))?;
        rows.iter().map(session_from_row).collect()
    }

    async fn save_session(&self, session: &SessionCb, expected: u64) -> StoreResult<()> {
        let body = to_json("session", session)?;
        let update = sqlx::query(
            "UPDATE sessions
                SET status = $1, phase = $2, revision = revision + 1, updated_at = $3, body = $4
              WHERE session_id = $5 AND revision = $6",
        )
        .bind(session_status_str(session.status))
        .bind(phase_str(session.phase))
        .bind(session.updated_at.as_millis())
        .bind(body)
        .bind(&session.session_id)
        .bind(bigint(expected));
        self.compare_and_set(
            update,
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sessions WHERE session_id = $1)")
                .bind(&session.session_id),
            "session",
            &session.session_id,
            expected,
            "saving a session",
        )
        .await
    }

    async fn sessions_needing_recovery(&self) -> StoreResult<Vec<SessionCb>> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE status = 'initializing' OR phase <> 'idle'
             ORDER BY session_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify("finding sessions to recover"))?;
        rows.iter().map(session_from_row).collect()
    }

    // -- history ---------------------------------------------------------------------------

    async fn append_message(&self, message: &NewMessage) -> StoreResult<AppendOutcome> {
        let parts = to_json("message parts", &message.parts)?;
        // The session's updated_at becomes the message's time, as SQLite's trigger does.
        let appended = sqlx::query(
            "WITH advanced AS (
                 UPDATE sessions
                    SET last_seq = last_seq + 1, revision = revision + 1, updated_at = $6
                  WHERE session_id = $1 AND status <> 'archived'
              RETURNING session_id, last_seq, revision
             )
             INSERT INTO history (session_id, seq, session_revision, message_id, role, origin,
                                  dispatch_id, created_at, parts)
             SELECT session_id, last_seq, revision, $2, $3, $4, $5, $6, $7 FROM advanced
             RETURNING seq, session_revision",
        )
        .bind(&message.session_id)
        .bind(&message.id)
        .bind(message.role.as_str())
        .bind(message.origin.to_string())
        .bind(message.dispatch_id.as_deref())
        .bind(message.created_at.as_millis())
        .bind(parts)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| match &e {
            // Only the message id can collide: the seq comes from the locked row.
            sqlx::Error::Database(db)
                if is_unique_violation(&e) && db.constraint() != Some("history_pkey") =>
            {
                StoreError::Duplicate {
                    kind: "message",
                    id: message.id.clone(),
                }
            }
            _ => classify("appending to history")(e),
        })?;
        if let Some(row) = appended {
            return Ok(AppendOutcome {
                seq: row.count("seq")?,
                session_revision: row.count("session_revision")?,
            });
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM sessions WHERE session_id = $1")
                .bind(&message.session_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify("appending to history"))?;
        Err(match status {
            Some(_) => StoreError::SessionArchived(message.session_id.clone()),
            None => StoreError::NotFound {
                kind: "session",
                id: message.session_id.clone(),
            },
        })
    }

    async fn list_messages(
        &self,
        session_id: &str,
        query: &HistoryQuery,
    ) -> StoreResult<Vec<Message>> {
        if !storable(session_id) {
            return Ok(Vec::new());
        }
        let sql = if query.descending {
            "SELECT * FROM history WHERE session_id = $1 AND seq >= $2 AND seq <= $3
             ORDER BY seq DESC LIMIT $4"
        } else {
            "SELECT * FROM history WHERE session_id = $1 AND seq >= $2 AND seq <= $3
             ORDER BY seq ASC LIMIT $4"
        };
        let rows = sqlx::query(sql)
            .bind(session_id)
            .bind(bigint(query.from_seq.unwrap_or(1)))
            .bind(bigint(query.to_seq.unwrap_or(u64::MAX)))
            .bind(limit(query.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify("reading history"))?;
        rows.iter().map(message_from_row).collect()
    }

    async fn get_message(
        &self,
        session_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<Message>> {
        if !storable(session_id) || !storable(message_id) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM history WHERE session_id = $1 AND message_id = $2")
            .bind(session_id)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("reading a history message"))?
            .as_ref()
            .map(message_from_row)
            .transpose()
    }

    async fn get_message_by_seq(&self, session_id: &str, seq: u64) -> StoreResult<Option<Message>> {
        if !storable(session_id) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM history WHERE session_id = $1 AND seq = $2")
            .bind(session_id)
            .bind(bigint(seq))
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("reading a history message"))?
            .as_ref()
            .map(message_from_row)
            .transpose()
    }

    async fn find_messages_containing(
        &self,
        session_id: &str,
        needle: &str,
        before_seq: Option<u64>,
        limit_rows: u32,
    ) -> StoreResult<Vec<Message>> {
        // Stored parts are JSON, which escapes NUL: a needle holding one matches nothing.
        if !storable(session_id) || !storable(needle) {
            return Ok(Vec::new());
        }
        // lower() under the "C" collation folds ASCII letters only, like SQLite's.
        let rows = sqlx::query(
            "SELECT * FROM history
             WHERE session_id = $1 AND seq < $2
               AND ($3 = '' OR strpos(lower(parts COLLATE \"C\"), lower($3 COLLATE \"C\")) > 0)
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(session_id)
        .bind(bigint(before_seq.unwrap_or(u64::MAX)))
        .bind(needle)
        .bind(limit(limit_rows))
        .fetch_all(&self.pool)
        .await
        .map_err(classify("searching history"))?;
        rows.iter().map(message_from_row).collect()
    }

    // -- content ---------------------------------------------------------------------------

    async fn put_content(&self, content: &ContentRecord) -> StoreResult<()> {
        let info = &content.info;
        sqlx::query(
            "INSERT INTO content (content_id, session_id, agent_id, size_chars, line_count,
                                  created_by, created_at, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&info.content_id)
        .bind(&info.session_id)
        .bind(&info.agent_id)
        .bind(bigint(info.size_chars))
        .bind(bigint(info.line_count))
        .bind(&info.created_by)
        .bind(info.created_at.as_millis())
        .bind(content.body.as_bytes())
        .execute(&self.pool)
        .await
        .map_err(duplicate_or("content", &info.content_id, "storing content"))?;
        Ok(())
    }

    async fn get_content(&self, content_id: &str) -> StoreResult<Option<ContentRecord>> {
        if !storable(content_id) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM content WHERE content_id = $1")
            .bind(content_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("reading content"))?
            .as_ref()
            .map(content_from_row)
            .transpose()
    }

    async fn get_content_info(&self, content_id: &str) -> StoreResult<Option<ContentInfo>> {
        if !storable(content_id) {
            return Ok(None);
        }
        sqlx::query(
            "SELECT content_id, session_id, agent_id, size_chars, line_count, created_by, created_at
             FROM content WHERE content_id = $1",
        )
        .bind(content_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify("reading content metadata"))?
        .as_ref()
        .map(content_info_from_row)
        .transpose()
    }

    // -- runtime log -----------------------------------------------------------------------

    async fn append_log(&self, entries: &[NewLogEntry]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One multi-row INSERT per chunk; several chunks commit together.
        let mut tx = if entries.len() > LOG_CHUNK {
            Some(
                self.pool
                    .begin()
                    .await
                    .map_err(classify("writing the runtime log"))?,
            )
        } else {
            None
        };
        for chunk in entries.chunks(LOG_CHUNK) {
            let mut rows = Vec::with_capacity(chunk.len());
            for entry in chunk {
                let targets = entry
                    .targets
                    .as_ref()
                    .map(|t| to_json("log targets", t))
                    .transpose()?;
                let data = entry
                    .data
                    .as_ref()
                    .map(|d| to_json("log data", d))
                    .transpose()?;
                rows.push((entry, targets, data));
            }
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO runtime_log (log_id, ts, caller, op, agent_id, session_id, outcome, \
                 duration_us, targets, data) ",
            );
            insert.push_values(rows, |mut row, (entry, targets, data)| {
                row.push_bind(log_text(&entry.id))
                    .push_bind(entry.ts.as_millis())
                    .push_bind(log_text(&entry.caller))
                    .push_bind(log_text(&entry.op))
                    .push_bind(entry.agent_id.as_deref().map(log_text))
                    .push_bind(entry.session_id.as_deref().map(log_text))
                    .push_bind(log_text(&entry.outcome))
                    .push_bind(bigint(entry.duration_us))
                    .push_bind(targets)
                    .push_bind(data);
            });
            let statement = insert.build();
            let done = match tx.as_mut() {
                Some(tx) => statement.execute(&mut **tx).await,
                None => statement.execute(&self.pool).await,
            };
            done.map_err(classify("writing the runtime log"))?;
        }
        if let Some(tx) = tx {
            tx.commit()
                .await
                .map_err(classify("writing the runtime log"))?;
        }
        Ok(())
    }

    async fn list_log(&self, query: &LogQuery) -> StoreResult<Vec<LogEntry>> {
        let filters = [&query.op, &query.agent_id, &query.session_id];
        if filters
            .iter()
            .any(|f| f.as_deref().is_some_and(|f| !storable(f)))
        {
            return Ok(Vec::new());
        }
        let mut select = QueryBuilder::<Postgres>::new("SELECT * FROM runtime_log WHERE seq > ");
        select.push_bind(bigint(query.after_seq.unwrap_or(0)));
        if let Some(op) = &query.op {
            select.push(" AND op = ").push_bind(op);
        }
        if let Some(agent_id) = &query.agent_id {
            select.push(" AND agent_id = ").push_bind(agent_id);
        }
        if let Some(session_id) = &query.session_id {
            select.push(" AND session_id = ").push_bind(session_id);
        }
        select
            .push(" ORDER BY seq LIMIT ")
            .push_bind(limit(query.limit));
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(classify("reading the runtime log"))?;
        rows.iter().map(log_from_row).collect()
    }

    // -- dispatches ------------------------------------------------------------------------

    async fn insert_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()> {
        let body = to_json("dispatch", dispatch)?;
        sqlx::query(
            "INSERT INTO dispatches (dispatch_id, session_id, agent_id, status, queued_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&dispatch.dispatch_id)
        .bind(&dispatch.session_id)
        .bind(&dispatch.agent_id)
        .bind(dispatch.status.as_str())
        .bind(dispatch.queued_at.as_millis())
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(duplicate_or(
            "dispatch",
            &dispatch.dispatch_id,
            "recording a dispatch",
        ))?;
        Ok(())
    }

    async fn get_dispatch(&self, dispatch_id: &str) -> StoreResult<Option<Dispatch>> {
        if !storable(dispatch_id) {
            return Ok(None);
        }
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM dispatches WHERE dispatch_id = $1")
                .bind(dispatch_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify("reading a dispatch"))?;
        body.map(|b| from_json("dispatch", dispatch_id, &b))
            .transpose()
    }

    async fn save_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()> {
        let body = to_json("dispatch", dispatch)?;
        let done =
            sqlx::query("UPDATE dispatches SET status = $1, body = $2 WHERE dispatch_id = $3")
                .bind(dispatch.status.as_str())
                .bind(body)
                .bind(&dispatch.dispatch_id)
                .execute(&self.pool)
                .await
                .map_err(classify("updating a dispatch"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "dispatch",
                id: dispatch.dispatch_id.clone(),
            });
        }
        Ok(())
    }

    async fn list_dispatches(
        &self,
        session_id: Option<&str>,
        status: Option<DispatchStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<Dispatch>> {
        if session_id.is_some_and(|id| !storable(id)) {
            return Ok(Vec::new());
        }
        let mut query =
            QueryBuilder::<Postgres>::new("SELECT dispatch_id, body FROM dispatches WHERE TRUE");
        if let Some(session_id) = session_id {
            query.push(" AND session_id = ").push_bind(session_id);
        }
        if let Some(status) = status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(after) = &page.after {
            query.push(" AND dispatch_id > ").push_bind(cursor(after));
        }
        query
            .push(" ORDER BY dispatch_id LIMIT ")
            .push_bind(limit(page.limit));
        let rows = query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(classify("listing dispatches"))?;
        rows.iter()
            .map(|row| {
                let id = row.text("dispatch_id")?;
                from_json("dispatch", &id, &row.text("body")?)
            })
            .collect()
    }

    // -- usage -----------------------------------------------------------------------------

    async fn add_usage(&self, session_id: &str, usage: &Usage) -> StoreResult<()> {
        // One statement, so one transaction: the session row first, then its agent's
        // (every writer locks in that order, so two usage updates cannot deadlock).
        let updated = sqlx::query(
            "WITH counted AS (
                 UPDATE sessions
                    SET prompt_tokens = prompt_tokens + $1,
                        completion_tokens = completion_tokens + $2,
                        cost_micros = cost_micros + $3, turns = turns + $4,
                        dispatches = dispatches + $5,
                        revision = revision + 1, updated_at = $7
                  WHERE session_id = $6
              RETURNING agent_id
             )
             UPDATE agents AS a
                SET prompt_tokens = a.prompt_tokens + $1,
                    completion_tokens = a.completion_tokens + $2,
                    cost_micros = a.cost_micros + $3, turns = a.turns + $4,
                    dispatches = a.dispatches + $5,
                    revision = a.revision + 1, updated_at = $7
               FROM counted
              WHERE a.agent_id = counted.agent_id
          RETURNING a.revision",
        )
        .bind(bigint(usage.prompt_tokens))
        .bind(bigint(usage.completion_tokens))
        .bind(cost_micros(usage))
        .bind(bigint(usage.turns))
        .bind(bigint(usage.dispatches))
        .bind(session_id)
        .bind(Timestamp::now().as_millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(classify("recording usage"))?;
        // The foreign key guarantees the agent row, so no row means no session.
        match updated {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "session",
                id: session_id.to_owned(),
            }),
        }
    }

    async fn system_usage(&self) -> StoreResult<Usage> {
        // SUM over BIGINT is NUMERIC in PostgreSQL; the columns decode as BIGINT.
        let row = sqlx::query(
            "SELECT COALESCE(SUM(prompt_tokens), 0)::BIGINT AS prompt_tokens,
                    COALESCE(SUM(completion_tokens), 0)::BIGINT AS completion_tokens,
                    COALESCE(SUM(cost_micros), 0)::BIGINT AS cost_micros,
                    COALESCE(SUM(turns), 0)::BIGINT AS turns,
                    COALESCE(SUM(dispatches), 0)::BIGINT AS dispatches
             FROM agents",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify("summing usage"))?;
        usage_from_row(&row)
    }

    // -- tokens ----------------------------------------------------------------------------

    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let info = &token.info;
        // Like the SQLite store, a duplicate id or hash is a plain database error: both
        // are random, so a collision means a bug, not a caller's mistake.
        sqlx::query(
            "INSERT INTO tokens (token_id, secret_hash, scope, label, created_by, created_at,
                                 expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&info.token_id)
        .bind(&token.secret_hash)
        .bind(to_json("token scope", &info.scope)?)
        .bind(info.label.as_deref())
        .bind(&info.created_by)
        .bind(info.created_at.as_millis())
        .bind(info.expires_at.map(Timestamp::as_millis))
        .bind(info.revoked_at.map(Timestamp::as_millis))
        .execute(&self.pool)
        .await
        .map_err(classify("storing a token"))?;
        Ok(())
    }

    async fn find_token(&self, secret_hash: &str) -> StoreResult<Option<TokenRecord>> {
        if !storable(secret_hash) {
            return Ok(None);
        }
        sqlx::query("SELECT * FROM tokens WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify("looking up a token"))?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY token_id")
            .fetch_all(&self.pool)
            .await
            .map_err(classify("listing tokens"))?;
        rows.iter()
            .map(|row| token_from_row(row).map(|t| t.info))
            .collect()
    }

    async fn revoke_token(&self, token_id: &str, at: Timestamp) -> StoreResult<bool> {
        if !storable(token_id) {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL",
        )
        .bind(at.as_millis())
        .bind(token_id)
        .execute(&self.pool)
        .await
        .map_err(classify("revoking a token"))?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use aos_sdk::protocol::LogEntry;

    use super::testing::TestDatabase;
    use super::*;
    use crate::store::conformance;

    /// Connections per store in tests: several tests run at once against one server.
    const TEST_POOL: u32 = 8;

    async fn database() -> TestDatabase {
        TestDatabase::create()
            .await
            .unwrap_or_else(|message| panic!("{message}"))
    }

    async fn open(db: &TestDatabase) -> PgStore {
        PgStore::open_with(&db.url, TEST_POOL).await.unwrap()
    }

    async fn with_session(store: &PgStore, agent_id: &str, session_id: &str) {
        store
            .insert_agent(&conformance::agent(agent_id))
            .await
            .unwrap();
        store
            .insert_session(&conformance::session(session_id, agent_id))
            .await
            .unwrap();
    }

    fn log_entry(op: &str) -> LogEntry {
        LogEntry {
            seq: 0,
            id: crate::ids::new_id("log_"),
            ts: Timestamp::now(),
            caller: "admin".into(),
            op: op.into(),
            agent_id: None,
            session_id: None,
            outcome: "ok".into(),
            duration_us: 1,
            targets: None,
            data: None,
        }
    }

    #[tokio::test]
    async fn passes_the_store_conformance_suite() {
        let previous: Mutex<Option<TestDatabase>> = Mutex::new(None);
        let previous = &previous;
        conformance::run_all(move || async move {
            // The previous check is over and its store dropped: its database can go.
            let old = previous.lock().unwrap().take();
            if let Some(old) = old {
                old.drop_database().await.unwrap();
            }
            let db = database().await;
            let store = open(&db).await;
            *previous.lock().unwrap() = Some(db);
            Arc::new(store) as Arc<dyn Store>
        })
        .await;
        let last = previous.lock().unwrap().take();
        if let Some(db) = last {
            db.drop_database().await.unwrap();
        }
    }

    #[tokio::test]
    async fn history_content_and_log_rows_cannot_be_rewritten_even_with_raw_sql() {
        let db = database().await;
        let store = open(&db).await;
        with_session(&store, "agt_a", "ses_a").await;
        store
            .append_message(&conformance::text_message("ses_a", "fact"))
            .await
            .unwrap();
        store
            .put_content(&ContentRecord {
                info: ContentInfo {
                    content_id: "cnt_1".into(),
                    session_id: "ses_a".into(),
                    agent_id: "agt_a".into(),
                    size_chars: 4,
                    line_count: 1,
                    created_by: "human".into(),
                    created_at: Timestamp::now(),
                },
                body: "blob".into(),
            })
            .await
            .unwrap();
        store
            .append_log(&[log_entry("agent.create")])
            .await
            .unwrap();
        for statement in [
            "UPDATE history SET parts = '[]'",
            "DELETE FROM history",
            "TRUNCATE history CASCADE",
            "UPDATE content SET body = ''",
            "DELETE FROM content",
            "TRUNCATE content",
            "UPDATE runtime_log SET op = 'x'",
            "DELETE FROM runtime_log",
            "TRUNCATE runtime_log",
        ] {
            let error = sqlx::query(statement)
                .execute(store.pool())
                .await
                .expect_err(statement);
            let text = error.to_string();
            assert!(
                text.contains("append-only") || text.contains("immutable"),
                "{statement}: {text}"
            );
        }
        store.close().await;
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let db = database().await;
        let store = open(&db).await;
        with_session(&store, "agt_a", "ses_a").await;
        let message = conformance::text_message("ses_a", "persist me");
        store.append_message(&message).await.unwrap();
        store
            .add_usage(
                "ses_a",
                &Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7,
                    cost_usd: 0.000_123,
                    turns: 1,
                    dispatches: 1,
                },
            )
            .await
            .unwrap();
        store
            .append_log(&[log_entry("agent.create")])
            .await
            .unwrap();
        let before = store.get_message("ses_a", &message.id).await.unwrap();
        let session = store.get_session("ses_a").await.unwrap();
        store.close().await;
        assert!(matches!(
            store.get_session("ses_a").await,
            Err(StoreError::Unavailable { .. })
        ));
        drop(store);

        let reopened = open(&db).await;
        assert_eq!(
            reopened.get_message("ses_a", &message.id).await.unwrap(),
            before
        );
        assert_eq!(reopened.get_session("ses_a").await.unwrap(), session);
        let session = session.unwrap();
        assert_eq!((session.last_seq, session.revision), (1, 3));
        assert!((session.usage.cost_usd - 0.000_123).abs() < 1e-12);
        // The RuntimeLog goes on after the rows already there.
        reopened
            .append_log(&[log_entry("agent.update")])
            .await
            .unwrap();
        let log = reopened
            .list_log(&LogQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        reopened.close().await;
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn kernels_starting_together_apply_the_schema_once() {
        let db = database().await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { PgStore::open_with(&url, 2).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(open.await.unwrap().unwrap());
        }
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(stores[0].pool())
                .await
                .unwrap();
        let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions, known, "each migration applied exactly once");
        for store in stores {
            store.close().await;
        }
        db.drop_database().await.unwrap();
    }

    /// Two kernel processes on one database, simulated by two stores with their own
    /// pools: concurrent appends to one session from both still number 1..=N.
    #[tokio::test]
    async fn two_nodes_appending_to_one_session_leave_no_gaps() {
        const TASKS: usize = 8;
        const APPENDS: usize = 50;
        let db = database().await;
        let nodes = [Arc::new(open(&db).await), Arc::new(open(&db).await)];
        with_session(&nodes[0], "agt_a", "ses_a").await;
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for t in 0..TASKS {
                let node = node.clone();
                tasks.push(tokio::spawn(async move {
                    let mut seqs = Vec::with_capacity(APPENDS);
                    for i in 0..APPENDS {
                        let text = format!("node {n} task {t} append {i}");
                        let outcome = node
                            .append_message(&conformance::text_message("ses_a", &text))
                            .await
                            .unwrap();
                        seqs.push(outcome.seq);
                    }
                    seqs
                }));
            }
        }
        let total = (nodes.len() * TASKS * APPENDS) as u64;
        let mut seqs = BTreeSet::new();
        for task in tasks {
            for seq in task.await.unwrap() {
                assert!(seqs.insert(seq), "seq {seq} was handed out twice");
            }
        }
        assert_eq!(seqs, (1..=total).collect::<BTreeSet<_>>());
        for node in &nodes {
            let history = node
                .list_messages(
                    "ses_a",
                    &HistoryQuery {
                        limit: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                history.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=total).collect::<Vec<_>>()
            );
            let session = node.get_session("ses_a").await.unwrap().unwrap();
            assert_eq!(session.last_seq, total);
            assert_eq!(session.revision, 1 + total);
        }
        for node in &nodes {
            node.close().await;
        }
        db.drop_database().await.unwrap();
    }

    /// Two nodes saving the same session from the same revision: exactly one wins,
    /// the other sees a conflict, and what is stored is the winner's block.
    #[tokio::test]
    async fn two_nodes_saving_one_session_conflict_and_one_wins() {
        let db = database().await;
        let nodes = [open(&db).await, open(&db).await];
        with_session(&nodes[0], "agt_a", "ses_a").await;
        for round in 0..20u64 {
            let mut blocks = Vec::new();
            for (n, node) in nodes.iter().enumerate() {
                let mut block = node.get_session("ses_a").await.unwrap().unwrap();
                assert_eq!(block.revision, 1 + round);
                block.title = Some(format!("node {n} round {round}"));
                block.revision += 1;
                blocks.push(block);
            }
            let expected = 1 + round;
            let (first, second) = tokio::join!(
                nodes[0].save_session(&blocks[0], expected),
                nodes[1].save_session(&blocks[1], expected),
            );
            let winner = match (&first, &second) {
                (Ok(()), Err(StoreError::Conflict { expected: e, .. })) if *e == expected => 0,
                (Err(StoreError::Conflict { expected: e, .. }), Ok(())) if *e == expected => 1,
                other => panic!("round {round}: expected one win and one conflict, got {other:?}"),
            };
            for node in &nodes {
                let stored = node.get_session("ses_a").await.unwrap().unwrap();
                assert_eq!(stored.revision, expected + 1);
                assert_eq!(stored.title, blocks[winner].title);
            }
        }
        // A save on a revision an append moved past loses too, on either node.
        let mut stale = nodes[0].get_session("ses_a").await.unwrap().unwrap();
        nodes[1]
            .append_message(&conformance::text_message("ses_a", "moves the revision"))
            .await
            .unwrap();
        let expected = stale.revision;
        stale.revision += 1;
        assert!(matches!(
            nodes[0].save_session(&stale, expected).await,
            Err(StoreError::Conflict { .. })
        ));
        for node in &nodes {
            node.close().await;
        }
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn text_postgresql_cannot_hold_is_looked_up_and_logged_safely() {
        let db = database().await;
        let store = open(&db).await;
        with_session(&store, "agt_a", "ses_a").await;
        store
            .append_message(&conformance::text_message("ses_a", "has \0 inside"))
            .await
            .unwrap();
        assert!(store.get_agent("agt_a\0").await.unwrap().is_none());
        assert!(store.get_session("ses_\0").await.unwrap().is_none());
        assert!(
            store
                .find_messages_containing("ses_a", "\0", None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let inside = store
            .find_messages_containing("ses_a", "HAS", None, 10)
            .await
            .unwrap();
        assert_eq!(inside.len(), 1, "NUL in a message survives as JSON");
        let page = store
            .list_agents(
                None,
                &ListQuery {
                    after: Some("agt_\0x".into()),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(page.len(), 1, "a cursor with NUL pages like its prefix");
        let mut entry = log_entry("bad\0op");
        entry.session_id = Some("ses_\0".into());
        store.append_log(&[entry, log_entry("good")]).await.unwrap();
        let log = store
            .list_log(&LogQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(log[0].op, "bad\u{fffd}op");
        assert_eq!(log[1].op, "good");
        store.close().await;
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_open_error_naming_the_url() {
        let error = PgStore::open("postgres://aos:secret@127.0.0.1:1/aos")
            .await
            .expect_err("nothing listens on port 1");
        let text = error.to_string();
        assert!(matches!(error, StoreError::Open { .. }), "{text}");
        assert!(
            text.contains("postgres://aos:***@127.0.0.1:1/aos"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
