//! The SQLite store: one file under `$AOS_HOME`, WAL mode.
//!
//! All writes go through a pool of exactly one connection and `BEGIN IMMEDIATE`
//! transactions: SQLite allows one writer at a time anyway, and serializing in-process
//! avoids lock-upgrade failures and busy-waiting. Reads use a separate pool of
//! read-only connections, which WAL lets run beside the writer.
//!
//! Durability: `synchronous=NORMAL` by default. A committed transaction is in the WAL
//! file before the call returns, so a killed process (even `kill -9`) loses nothing
//! acknowledged; only a power cut can lose the last commits. `synchronous=FULL`
//! (`AOS_SQLITE_SYNC=full`) closes that window at the cost of an fsync per commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_sdk::protocol::{
    AgentCb, AgentStatus, ContentInfo, Dispatch, DispatchStatus, LogEntry, Message, SessionCb,
    SessionStatus, SystemCb, Timestamp, TokenInfo, Usage,
};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::codec::{
    StoreRow, agent_from_row, content_info_from_row, from_json, is_foreign_key_violation,
    is_unique_violation, limit, log_from_row, message_from_row, phase_str, session_from_row,
    session_status_str, status_str, to_json, token_from_row, usage_from_row,
};
use super::{
    AppendOutcome, ContentRecord, HistoryQuery, ListQuery, LogQuery, NewLogEntry, NewMessage,
    Store, StoreError, StoreResult, TokenRecord,
};

mod writer;

use writer::{WriteOp, Writer, Written};

/// The SQLite schema, applied at open.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How hard SQLite works to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Durable against process crashes; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// fsync on every commit.
    Full,
}

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    cache: Arc<Mutex<BlockCache>>,
    /// The hot writes (appends, session and dispatch saves, usage, RuntimeLog rows) go
    /// through one thread that commits whatever is queued as one transaction.
    hot: Writer,
}

/// Control blocks held in memory so hot reads skip the database.
///
/// Sound because this process is the only writer of the file (the kernel locks its
/// home directory) and every write goes through this store. Rules, applied under one
/// lock: a full write replaces a cached block only with a newer revision; a partial
/// write (append, usage) patches a block only when it is exactly one revision behind,
/// and drops it otherwise; a read fills the cache only when no write to that block
/// finished since the read began, so a slow reader can never put back an older block.
#[derive(Debug, Default)]
struct BlockCache {
    /// Counts finished writes; a read notes it before it starts.
    epoch: u64,
    system: Blocks<SystemCb>,
    sessions: Blocks<SessionCb>,
    agents: Blocks<AgentCb>,
}

/// Blocks cached per kind before the cache starts over.
const CACHE_MAX: usize = 50_000;

/// A control block the cache can order by revision.
trait Revisioned: Clone {
    fn key(&self) -> &str;
    fn revision(&self) -> u64;
    fn set_revision(&mut self, revision: u64);
}

impl Revisioned for SystemCb {
    fn key(&self) -> &str {
        "system"
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

impl Revisioned for SessionCb {
    fn key(&self) -> &str {
        &self.session_id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

impl Revisioned for AgentCb {
    fn key(&self) -> &str {
        &self.agent_id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

/// Cached blocks of one kind, by id, and the epoch of each block's last write.
#[derive(Debug)]
struct Blocks<T> {
    cached: HashMap<String, T>,
    written: HashMap<String, u64>,
    /// Reads that began before this epoch may not fill: the `written` marks before it
    /// were forgotten.
    floor: u64,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Self {
            cached: HashMap::new(),
            written: HashMap::new(),
            floor: 0,
        }
    }
}

impl<T: Revisioned> Blocks<T> {
    fn get(&self, id: &str) -> Option<&T> {
        self.cached.get(id)
    }

    fn remove(&mut self, id: &str) {
        self.cached.remove(id);
    }

    /// A read that began at `epoch` fills the cache, unless a write to the block
    /// finished since.
    fn fill(&mut self, block: &T, epoch: u64) {
        let written = self.written.get(block.key()).copied().unwrap_or(0);
        if epoch >= self.floor && written <= epoch {
            self.cached.insert(block.key().to_owned(), block.clone());
        }
    }

    /// Notes a write to `id` finishing at `epoch`.
    fn mark(&mut self, id: &str, epoch: u64) {
        if self.written.len() >= CACHE_MAX {
            self.written.clear();
            self.floor = epoch;
        }
        self.written.insert(id.to_owned(), epoch);
    }

    /// A full write: keep whichever block is newer.
    fn put(&mut self, block: &T, epoch: u64) {
        self.mark(block.key(), epoch);
        if self.cached.len() >= CACHE_MAX {
            self.cached.clear();
        }
        match self.cached.get(block.key()) {
            Some(cached) if cached.revision() >= block.revision() => {}
            _ => {
                self.cached.insert(block.key().to_owned(), block.clone());
            }
        }
    }

    /// A partial write: apply it only on the exact predecessor, else forget the block.
    fn patch(&mut self, id: &str, revision: u64, epoch: u64, patch: impl FnOnce(&mut T)) {
        self.mark(id, epoch);
        match self.cached.get_mut(id) {
            Some(cached) if cached.revision() + 1 == revision => {
                patch(cached);
                cached.set_revision(revision);
            }
            Some(_) => {
                self.cached.remove(id);
            }
            None => {}
        }
    }
}

impl BlockCache {
    fn put_system(&mut self, system: &SystemCb) {
        self.epoch += 1;
        self.system.put(system, self.epoch);
    }

    fn put_session(&mut self, session: &SessionCb) {
        self.epoch += 1;
        self.sessions.put(session, self.epoch);
    }

    fn patch_session(&mut self, id: &str, revision: u64, patch: impl FnOnce(&mut SessionCb)) {
        self.epoch += 1;
        self.sessions.patch(id, revision, self.epoch, patch);
    }

    fn put_agent(&mut self, agent: &AgentCb) {
        self.epoch += 1;
        self.agents.put(agent, self.epoch);
    }

    fn patch_agent(&mut self, id: &str, revision: u64, patch: impl FnOnce(&mut AgentCb)) {
        self.epoch += 1;
        self.agents.patch(id, revision, self.epoch, patch);
    }
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub async fn open(path: &Path, sync: SyncMode) -> StoreResult<Self> {
        let url = path.display().to_string();
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Normal => SqliteSynchronous::Normal,
                SyncMode::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(|e| StoreError::Open {
                url: url.clone(),
                message: e.to_string(),
            })?;
        MIGRATOR.run(&writer).await?;
        // Each sqlx SQLite connection owns a worker thread; more readers than cores only
        // adds context switches.
        let readers = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2)
            .clamp(2, 8)
            * 4;
        let reader = SqlitePoolOptions::new()
            .max_connections(readers)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.pragma("query_only", "1"))
            .await
            .map_err(|e| StoreError::Open {
                url,
                message: e.to_string(),
            })?;
        let cache = Arc::new(Mutex::new(BlockCache::default()));
        let hot = Writer::start(path, sync, cache.clone())?;
        Ok(Self {
            writer,
            reader,
            path: path.to_owned(),
            cache,
            hot,
        })
    }

    // The cache lock is held only for map operations, never across an `.await`.
    fn cache(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        lock_cache(&self.cache)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the write thread and waits for its commit.
    async fn write(&self, action: &'static str, op: WriteOp) -> StoreResult<Written> {
        self.hot.write(action, op).await
    }
}

fn lock_cache(cache: &Mutex<BlockCache>) -> std::sync::MutexGuard<'_, BlockCache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// Brings the cached control blocks up to date with one committed write. Only the
/// write loop calls it, in commit order, so a block is never replaced by an older one:
/// a caller that applied its own write after the reply could race a later write that
/// the loop had already applied.
fn update_cache(cache: &mut BlockCache, op: &WriteOp, written: &Written) {
    match (op, written) {
        (WriteOp::Append { message, .. }, Written::Appended(outcome)) => {
            cache.patch_session(&message.session_id, outcome.session_revision, |s| {
                s.last_seq = outcome.seq;
                s.updated_at = message.created_at;
            });
        }
        // A successful compare-and-set proves no append or usage update came in
        // between (both bump the revision), so the block's counters are current.
        (WriteOp::SaveSession { session, .. }, Written::Rows(1)) => cache.put_session(session),
        (WriteOp::SaveAgent { agent, .. }, Written::Rows(1)) => cache.put_agent(agent),
        (
            WriteOp::AddUsage {
                session_id,
                usage,
                now,
            },
            Written::Usage {
                agent_id,
                session_revision,
                agent_revision,
            },
        ) => {
            let cost_micros = (usage.cost_usd * 1_000_000.0).round();
            let add = |total: &mut Usage| {
                total.prompt_tokens += usage.prompt_tokens;
                total.completion_tokens += usage.completion_tokens;
                total.total_tokens = total.prompt_tokens + total.completion_tokens;
                total.cost_usd =
                    ((total.cost_usd * 1_000_000.0).round() + cost_micros) / 1_000_000.0;
                total.turns += usage.turns;
                total.dispatches += usage.dispatches;
            };
            cache.patch_session(session_id, *session_revision, |s| {
                add(&mut s.usage);
                s.updated_at = *now;
            });
            cache.patch_agent(agent_id, *agent_revision, |a| {
                add(&mut a.usage);
                a.updated_at = *now;
            });
        }
        _ => {}
    }
}

/// Maps a sqlx error to a [`StoreError`], separating "the database cannot be used right
/// now" (disk full, read-only, I/O, lock timeout) from other failures.
fn classify(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |error| {
        let unavailable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|code| code.parse::<i64>().ok())
                .map(|code| code & 0xff)
                .is_some_and(|primary| {
                    // BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN
                    matches!(primary, 5 | 6 | 8 | 10 | 13 | 14)
                }),
            _ => false,
        };
        if unavailable {
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

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        // The write thread finishes what it holds and closes its connection.
        self.hot.close().await;
        self.reader.close().await;
        // A passive checkpoint keeps the WAL short for the next start; failure is harmless.
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.writer)
            .await;
        self.writer.close().await;
    }

    // -- system ----------------------------------------------------------------------------

    async fn load_system(&self) -> StoreResult<Option<SystemCb>> {
        let epoch = {
            let cache = self.cache();
            if let Some(system) = cache.system.get("system") {
                return Ok(Some(system.clone()));
            }
            cache.epoch
        };
        let row = sqlx::query("SELECT revision, updated_at, body FROM system_cb WHERE id = 1")
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("loading the system control block"))?;
        let system = row
            .map(|row| {
                let mut system: SystemCb = from_json("system", "1", &row.text("body")?)?;
                system.revision = row.count("revision")?;
                system.updated_at = row.timestamp("updated_at")?;
                Ok::<_, StoreError>(system)
            })
            .transpose()?;
        if let Some(system) = &system {
            self.cache().system.fill(system, epoch);
        }
        Ok(system)
    }

    async fn insert_system(&self, system: &SystemCb) -> StoreResult<()> {
        let body = to_json("system", system)?;
        sqlx::query(
            "INSERT INTO system_cb (id, revision, updated_at, body) VALUES (1, ?1, ?2, ?3)",
        )
        .bind(system.revision as i64)
        .bind(system.updated_at.as_millis())
        .bind(body)
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate {
                    kind: "system control block",
                    id: "1".into(),
                }
            } else {
                classify("creating the system control block")(e)
            }
        })?;
        self.cache().put_system(system);
        Ok(())
    }

    async fn save_system(&self, system: &SystemCb, expected: u64) -> StoreResult<()> {
        let body = to_json("system", system)?;
        let done = sqlx::query(
            "UPDATE system_cb SET revision = ?1, updated_at = ?2, body = ?3 WHERE id = 1 AND revision = ?4",
        )
        .bind(system.revision as i64)
        .bind(system.updated_at.as_millis())
        .bind(body)
        .bind(expected as i64)
        .execute(&self.writer)
        .await
        .map_err(classify("saving the system control block"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                kind: "system",
                id: "system".into(),
                expected,
            });
        }
        self.cache().put_system(system);
        Ok(())
    }

    // -- agents ----------------------------------------------------------------------------

    async fn insert_agent(&self, agent: &AgentCb) -> StoreResult<()> {
        let body = to_json("agent", agent)?;
        sqlx::query(
            "INSERT INTO agents (agent_id, status, revision, created_at, updated_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&agent.agent_id)
        .bind(status_str(agent.status))
        .bind(agent.revision as i64)
        .bind(agent.created_at.as_millis())
        .bind(agent.updated_at.as_millis())
        .bind(body)
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate {
                    kind: "agent",
                    id: agent.agent_id.clone(),
                }
            } else {
                classify("creating an agent")(e)
            }
        })?;
        let mut stored = agent.clone();
        stored.usage = Usage::default();
        self.cache().put_agent(&stored);
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentCb>> {
        let epoch = {
            let cache = self.cache();
            if let Some(agent) = cache.agents.get(agent_id) {
                return Ok(Some(agent.clone()));
            }
            cache.epoch
        };
        let agent = sqlx::query("SELECT * FROM agents WHERE agent_id = ?1")
            .bind(agent_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("reading an agent"))?
            .as_ref()
            .map(agent_from_row)
            .transpose()?;
        if let Some(agent) = &agent {
            self.cache().agents.fill(agent, epoch);
        }
        Ok(agent)
    }

    async fn list_agents(
        &self,
        status: Option<AgentStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<AgentCb>> {
        let rows = sqlx::query(
            "SELECT * FROM agents
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR agent_id > ?2)
             ORDER BY agent_id LIMIT ?3",
        )
        .bind(status.map(status_str))
        .bind(page.after.as_deref())
        .bind(limit(page.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify("listing agents"))?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn save_agent(&self, agent: &AgentCb, expected: u64) -> StoreResult<()> {
        let body = to_json("agent", agent)?;
        let done = self
            .write(
                "saving an agent",
                WriteOp::SaveAgent {
                    agent: agent.clone(),
                    expected,
                    body,
                },
            )
            .await?;
        if matches!(done, Written::Rows(0)) {
            // The cached block may be the stale one; let the next read go to the file.
            self.cache().agents.remove(&agent.agent_id);
            return Err(match self.get_agent(&agent.agent_id).await? {
                Some(_) => StoreError::Conflict {
                    kind: "agent",
                    id: agent.agent_id.clone(),
                    expected,
                },
                None => StoreError::NotFound {
                    kind: "agent",
                    id: agent.agent_id.clone(),
                },
            });
        }
        Ok(())
    }

    // -- sessions --------------------------------------------------------------------------

    async fn insert_session(&self, session: &SessionCb) -> StoreResult<()> {
        let body = to_json("session", session)?;
        sqlx::query(
            "INSERT INTO sessions (session_id, agent_id, status, phase, revision, last_seq,
                                   created_at, updated_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
        )
        .bind(&session.session_id)
        .bind(&session.agent_id)
        .bind(session_status_str(session.status))
        .bind(phase_str(session.phase))
        .bind(session.revision as i64)
        .bind(session.created_at.as_millis())
        .bind(session.updated_at.as_millis())
        .bind(body)
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            e2 if is_unique_violation(e2) => StoreError::Duplicate {
                kind: "session",
                id: session.session_id.clone(),
            },
            e2 if is_foreign_key_violation(e2) => StoreError::NotFound {
                kind: "agent",
                id: session.agent_id.clone(),
            },
            _ => classify("creating a session")(e),
        })?;
        // The counters start at zero in the table whatever the block says.
        let mut stored = session.clone();
        stored.last_seq = 0;
        stored.usage = Usage::default();
        self.cache().put_session(&stored);
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionCb>> {
        let epoch = {
            let cache = self.cache();
            if let Some(session) = cache.sessions.get(session_id) {
                return Ok(Some(session.clone()));
            }
            cache.epoch
        };
        let session = sqlx::query("SELECT * FROM sessions WHERE session_id = ?1")
            .bind(session_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("reading a session"))?
            .as_ref()
            .map(session_from_row)
            .transpose()?;
        if let Some(session) = &session {
            self.cache().sessions.fill(session, epoch);
        }
        Ok(session)
    }

    async fn list_sessions(
        &self,
        agent_id: Option<&str>,
        status: Option<SessionStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<SessionCb>> {
        let rows = sqlx::query(
            "SELECT * FROM sessions
             WHERE (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR session_id > ?3)
             ORDER BY session_id LIMIT ?4",
        )
        .bind(agent_id)
        .bind(status.map(session_status_str))
        .bind(page.after.as_deref())
        .bind(limit(page.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify("listing sessions"))?;
        rows.iter().map(session_from_row).collect()
    }

    async fn save_session(&self, session: &SessionCb, expected: u64) -> StoreResult<()> {
        let body = to_json("session", session)?;
        let changed = self
            .write(
                "saving a session",
                WriteOp::SaveSession {
                    session: session.clone(),
                    expected,
                    body,
                },
            )
            .await?;
        if matches!(changed, Written::Rows(0)) {
            self.cache().sessions.remove(&session.session_id);
            return Err(match self.get_session(&session.session_id).await? {
                Some(_) => StoreError::Conflict {
                    kind: "session",
                    id: session.session_id.clone(),
                    expected,
                },
                None => StoreError::NotFound {
                    kind: "session",
                    id: session.session_id.clone(),
                },
            });
        }
        Ok(())
    }

    async fn sessions_needing_recovery(&self) -> StoreResult<Vec<SessionCb>> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE status = 'initializing' OR phase <> 'idle'
             ORDER BY session_id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(classify("finding sessions to recover"))?;
        rows.iter().map(session_from_row).collect()
    }

    // -- history ---------------------------------------------------------------------------

    async fn append_message(&self, message: &NewMessage) -> StoreResult<AppendOutcome> {
        let parts = to_json("message parts", &message.parts)?;
        let op = WriteOp::Append {
            message: message.clone(),
            parts,
        };
        match self.write("appending to history", op).await? {
            Written::Appended(outcome) => Ok(outcome),
            Written::Rows(_) | Written::Usage { .. } => Err(StoreError::Unavailable {
                action: "appending to history",
                source: "the write thread answered an append oddly".into(),
            }),
        }
    }

    async fn list_messages(
        &self,
        session_id: &str,
        query: &HistoryQuery,
    ) -> StoreResult<Vec<Message>> {
        let sql = if query.descending {
            "SELECT * FROM history WHERE session_id = ?1 AND seq >= ?2 AND seq <= ?3
             ORDER BY seq DESC LIMIT ?4"
        } else {
            "SELECT * FROM history WHERE session_id = ?1 AND seq >= ?2 AND seq <= ?3
             ORDER BY seq ASC LIMIT ?4"
        };
        let rows = sqlx::query(sql)
            .bind(session_id)
            .bind(query.from_seq.unwrap_or(1).min(i64::MAX as u64) as i64)
            .bind(query.to_seq.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64)
            .bind(limit(query.limit))
            .fetch_all(&self.reader)
            .await
            .map_err(classify("reading history"))?;
        rows.iter().map(message_from_row).collect()
    }

    async fn get_message(
        &self,
        session_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<Message>> {
        sqlx::query("SELECT * FROM history WHERE session_id = ?1 AND message_id = ?2")
            .bind(session_id)
            .bind(message_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("reading a history message"))?
            .as_ref()
            .map(message_from_row)
            .transpose()
    }

    async fn get_message_by_seq(&self, session_id: &str, seq: u64) -> StoreResult<Option<Message>> {
        sqlx::query("SELECT * FROM history WHERE session_id = ?1 AND seq = ?2")
            .bind(session_id)
            .bind(seq.min(i64::MAX as u64) as i64)
            .fetch_optional(&self.reader)
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
        let rows = sqlx::query(
            "SELECT * FROM history
             WHERE session_id = ?1 AND seq < ?2 AND (?3 = '' OR instr(lower(parts), lower(?3)) > 0)
             ORDER BY seq DESC LIMIT ?4",
        )
        .bind(session_id)
        .bind(before_seq.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64)
        .bind(needle)
        .bind(limit(limit_rows))
        .fetch_all(&self.reader)
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&info.content_id)
        .bind(&info.session_id)
        .bind(&info.agent_id)
        .bind(info.size_chars as i64)
        .bind(info.line_count as i64)
        .bind(&info.created_by)
        .bind(info.created_at.as_millis())
        .bind(&content.body)
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate {
                    kind: "content",
                    id: info.content_id.clone(),
                }
            } else {
                classify("storing content")(e)
            }
        })?;
        Ok(())
    }

    async fn get_content(&self, content_id: &str) -> StoreResult<Option<ContentRecord>> {
        sqlx::query("SELECT * FROM content WHERE content_id = ?1")
            .bind(content_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("reading content"))?
            .map(|row| {
                Ok(ContentRecord {
                    info: content_info_from_row(&row)?,
                    body: row.text("body")?,
                })
            })
            .transpose()
    }

    async fn get_content_info(&self, content_id: &str) -> StoreResult<Option<ContentInfo>> {
        sqlx::query(
            "SELECT content_id, session_id, agent_id, size_chars, line_count, created_by, created_at
             FROM content WHERE content_id = ?1",
        )
        .bind(content_id)
        .fetch_optional(&self.reader)
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
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
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
            rows.push((entry.clone(), targets, data));
        }
        // All of them in one transaction, with whatever else is being committed.
        self.write("writing the runtime log", WriteOp::Log { rows })
            .await
            .map(|_| ())
    }

    async fn list_log(&self, query: &LogQuery) -> StoreResult<Vec<LogEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM runtime_log
             WHERE seq > ?1 AND (?2 IS NULL OR op = ?2) AND (?3 IS NULL OR agent_id = ?3)
               AND (?4 IS NULL OR session_id = ?4)
             ORDER BY seq LIMIT ?5",
        )
        .bind(query.after_seq.unwrap_or(0).min(i64::MAX as u64) as i64)
        .bind(query.op.as_deref())
        .bind(query.agent_id.as_deref())
        .bind(query.session_id.as_deref())
        .bind(limit(query.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify("reading the runtime log"))?;
        rows.iter().map(log_from_row).collect()
    }

    // -- dispatches ------------------------------------------------------------------------

    async fn insert_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()> {
        let body = to_json("dispatch", dispatch)?;
        let op = WriteOp::InsertDispatch {
            dispatch: dispatch.clone(),
            body,
        };
        self.write("recording a dispatch", op).await?;
        Ok(())
    }

    async fn get_dispatch(&self, dispatch_id: &str) -> StoreResult<Option<Dispatch>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM dispatches WHERE dispatch_id = ?1")
                .bind(dispatch_id)
                .fetch_optional(&self.reader)
                .await
                .map_err(classify("reading a dispatch"))?;
        body.map(|b| from_json("dispatch", dispatch_id, &b))
            .transpose()
    }

    async fn save_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()> {
        let body = to_json("dispatch", dispatch)?;
        let op = WriteOp::SaveDispatch {
            dispatch: dispatch.clone(),
            body,
        };
        if matches!(
            self.write("updating a dispatch", op).await?,
            Written::Rows(0)
        ) {
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
        let rows = sqlx::query(
            "SELECT dispatch_id, body FROM dispatches
             WHERE (?1 IS NULL OR session_id = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR dispatch_id > ?3)
             ORDER BY dispatch_id LIMIT ?4",
        )
        .bind(session_id)
        .bind(status.map(DispatchStatus::as_str))
        .bind(page.after.as_deref())
        .bind(limit(page.limit))
        .fetch_all(&self.reader)
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
        let op = WriteOp::AddUsage {
            session_id: session_id.to_owned(),
            usage: *usage,
            now: Timestamp::now(),
        };
        match self.write("recording usage", op).await? {
            Written::Usage { .. } => Ok(()),
            _ => Err(StoreError::Unavailable {
                action: "recording usage",
                source: "the write thread answered oddly".into(),
            }),
        }
    }

    async fn system_usage(&self) -> StoreResult<Usage> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
                    COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
                    COALESCE(SUM(cost_micros), 0) AS cost_micros,
                    COALESCE(SUM(turns), 0) AS turns,
                    COALESCE(SUM(dispatches), 0) AS dispatches
             FROM agents",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(classify("summing usage"))?;
        usage_from_row(&row)
    }

    // -- tokens ----------------------------------------------------------------------------

    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let info = &token.info;
        sqlx::query(
            "INSERT INTO tokens (token_id, secret_hash, scope, label, created_by, created_at,
                                 expires_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&info.token_id)
        .bind(&token.secret_hash)
        .bind(to_json("token scope", &info.scope)?)
        .bind(info.label.as_deref())
        .bind(&info.created_by)
        .bind(info.created_at.as_millis())
        .bind(info.expires_at.map(Timestamp::as_millis))
        .bind(info.revoked_at.map(Timestamp::as_millis))
        .execute(&self.writer)
        .await
        .map_err(classify("storing a token"))?;
        Ok(())
    }

    async fn find_token(&self, secret_hash: &str) -> StoreResult<Option<TokenRecord>> {
        sqlx::query("SELECT * FROM tokens WHERE secret_hash = ?1")
            .bind(secret_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify("looking up a token"))?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY token_id")
            .fetch_all(&self.reader)
            .await
            .map_err(classify("listing tokens"))?;
        rows.iter()
            .map(|row| token_from_row(row).map(|t| t.info))
            .collect()
    }

    async fn revoke_token(&self, token_id: &str, at: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = ?1 WHERE token_id = ?2 AND revoked_at IS NULL",
        )
        .bind(at.as_millis())
        .bind(token_id)
        .execute(&self.writer)
        .await
        .map_err(classify("revoking a token"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl FromStr for SyncMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "normal" => Ok(SyncMode::Normal),
            "full" => Ok(SyncMode::Full),
            other => Err(format!(
                "unknown SQLite sync mode `{other}`: expected `normal` or `full`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::conformance;

    async fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(&dir.join("aos.db"), SyncMode::Normal)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn passes_the_store_conformance_suite() {
        let root = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        conformance::run_all(|| {
            let dir = root.path().join(
                counter
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            async move {
                std::fs::create_dir_all(&dir).unwrap();
                Arc::new(open(&dir).await) as Arc<dyn Store>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn history_content_and_log_rows_cannot_be_rewritten_even_with_raw_sql() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store
            .insert_agent(&conformance::agent("agt_a"))
            .await
            .unwrap();
        store
            .insert_session(&conformance::session("ses_a", "agt_a"))
            .await
            .unwrap();
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
            .append_log(&[LogEntry {
                seq: 0,
                id: "log_1".into(),
                ts: Timestamp::now(),
                caller: "admin".into(),
                op: "agent.create".into(),
                agent_id: None,
                session_id: None,
                outcome: "ok".into(),
                duration_us: 1,
                targets: None,
                data: None,
            }])
            .await
            .unwrap();
        for statement in [
            "UPDATE history SET parts = '[]'",
            "DELETE FROM history",
            "UPDATE content SET body = ''",
            "DELETE FROM runtime_log",
        ] {
            let error = sqlx::query(statement)
                .execute(&store.writer)
                .await
                .expect_err(statement);
            let text = error.to_string();
            assert!(
                text.contains("append-only") || text.contains("immutable"),
                "{statement}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store
            .insert_agent(&conformance::agent("agt_a"))
            .await
            .unwrap();
        store
            .insert_session(&conformance::session("ses_a", "agt_a"))
            .await
            .unwrap();
        let message = conformance::text_message("ses_a", "persist me");
        store.append_message(&message).await.unwrap();
        let before = store.get_message("ses_a", &message.id).await.unwrap();
        store.close().await;
        drop(store);
        let reopened = open(dir.path()).await;
        assert_eq!(
            reopened.get_message("ses_a", &message.id).await.unwrap(),
            before
        );
        assert_eq!(
            reopened
                .get_session("ses_a")
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            1
        );
    }
}
