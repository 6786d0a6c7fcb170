//! Persistent state behind one trait: control blocks, the append-only session history,
//! content blobs, the RuntimeLog, dispatch records and tokens.
//!
//! [`Store`] speaks in domain operations, not SQL, so each backend can make every
//! operation atomic in its own way. Two backends implement it and pass the same tests
//! (`store::conformance`):
//!
//! - SQLite ([`sqlite::SqliteStore`]), the embedded default: one file under
//!   `$AOS_HOME` written by one kernel, which may therefore cache control blocks and
//!   group commits;
//! - PostgreSQL ([`postgres::PgStore`]), one database shared by several kernels: no
//!   cache, every write a statement whose row locks order it against other processes.
//!
//! Both use the same tables and columns (`migrations/<backend>/`, decoded by `codec`),
//! so [`migrate::copy_sqlite_to_postgres`] moves an installation table by table.
//! [`open_url`] picks the backend from a URL.

mod codec;
#[cfg(test)]
pub mod conformance;
pub mod conformance_fixtures;
pub mod migrate;
pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use aos_sdk::protocol::{
    AgentCb, AgentStatus, ContentInfo, Dispatch, DispatchStatus, LogEntry, Message, Origin, Part,
    Role, SessionCb, SessionStatus, SystemCb, Timestamp, TokenInfo, Usage,
};
use async_trait::async_trait;

/// Errors of the storage layer. They name the object and the action that failed; the
/// syscall layer turns them into stable wire codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} `{id}` already exists")]
    Duplicate { kind: &'static str, id: String },
    #[error("{kind} `{id}` was changed concurrently (expected revision {expected})")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: u64,
    },
    #[error("session `{0}` is archived")]
    SessionArchived(String),
    #[error("the database is unavailable while {action}: {source}")]
    Unavailable {
        action: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("database error while {action}: {source}")]
    Database {
        action: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("stored {what} is corrupt: {message}")]
    Corrupt { what: String, message: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open the database at {url}: {message}")]
    Open { url: String, message: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The database driver's own error behind a [`StoreError`] (sqlx or rusqlite).
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

/// A message to append; the store assigns its seq.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub session_id: String,
    pub role: Role,
    pub origin: Origin,
    pub parts: Vec<Part>,
    pub dispatch_id: Option<String>,
    pub created_at: Timestamp,
}

/// What an append produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub seq: u64,
    /// The session's revision after the append.
    pub session_revision: u64,
}

/// A range of history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Lowest seq (inclusive).
    pub from_seq: Option<u64>,
    /// Highest seq (inclusive).
    pub to_seq: Option<u64>,
    pub limit: u32,
    pub descending: bool,
}

/// A page request for id-ordered lists: items after `after` (an id), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: u32,
}

/// A content blob with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRecord {
    pub info: ContentInfo,
    pub body: String,
}

/// A stored token: its public info and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub secret_hash: String,
}

/// Filters for the RuntimeLog.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub op: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub after_seq: Option<u64>,
    pub limit: u32,
}

/// A RuntimeLog row to write (the store assigns `seq`).
pub type NewLogEntry = LogEntry;

/// Durable state of one AOS instance.
///
/// Invariants every implementation keeps:
/// - history rows are never updated or deleted; `seq` is 1, 2, 3, … per session with no
///   gaps, even under concurrent appends;
/// - every control-block save checks the expected revision and writes `expected + 1`;
/// - content blobs and RuntimeLog rows are immutable once written.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for diagnostics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Flushes and closes connections. Later calls fail with `Unavailable`.
    async fn close(&self);

    // -- system --------------------------------------------------------------------------
    async fn load_system(&self) -> StoreResult<Option<SystemCb>>;
    async fn insert_system(&self, system: &SystemCb) -> StoreResult<()>;
    /// Saves `system`, whose revision must be `expected + 1`.
    async fn save_system(&self, system: &SystemCb, expected: u64) -> StoreResult<()>;

    // -- agents --------------------------------------------------------------------------
    async fn insert_agent(&self, agent: &AgentCb) -> StoreResult<()>;
    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentCb>>;
    async fn list_agents(
        &self,
        status: Option<AgentStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<AgentCb>>;
    async fn save_agent(&self, agent: &AgentCb, expected: u64) -> StoreResult<()>;

    // -- sessions ------------------------------------------------------------------------
    async fn insert_session(&self, session: &SessionCb) -> StoreResult<()>;
    async fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionCb>>;
    async fn list_sessions(
        &self,
        agent_id: Option<&str>,
        status: Option<SessionStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<SessionCb>>;
    /// Saves `session` (revision `expected + 1`). `lastSeq` and usage are owned by
    /// [`Store::append_message`] and [`Store::add_usage`] and are not written here.
    async fn save_session(&self, session: &SessionCb, expected: u64) -> StoreResult<()>;
    /// Sessions whose status is `initializing` or whose phase is not `idle`: the ones
    /// start-up recovery must look at.
    async fn sessions_needing_recovery(&self) -> StoreResult<Vec<SessionCb>>;

    // -- history -------------------------------------------------------------------------
    /// Appends atomically: seq = lastSeq + 1, and the session's revision is bumped.
    /// Fails with `SessionArchived` for archived sessions and `NotFound` for unknown ones.
    async fn append_message(&self, message: &NewMessage) -> StoreResult<AppendOutcome>;
    async fn list_messages(
        &self,
        session_id: &str,
        query: &HistoryQuery,
    ) -> StoreResult<Vec<Message>>;
    async fn get_message(&self, session_id: &str, message_id: &str)
    -> StoreResult<Option<Message>>;
    async fn get_message_by_seq(&self, session_id: &str, seq: u64) -> StoreResult<Option<Message>>;
    /// Messages whose stored parts contain `needle` (case-insensitive), newest first,
    /// with seq below `before_seq` when given. A coarse prefilter: callers match precisely.
    async fn find_messages_containing(
        &self,
        session_id: &str,
        needle: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<Message>>;

    // -- content -------------------------------------------------------------------------
    async fn put_content(&self, content: &ContentRecord) -> StoreResult<()>;
    async fn get_content(&self, content_id: &str) -> StoreResult<Option<ContentRecord>>;
    async fn get_content_info(&self, content_id: &str) -> StoreResult<Option<ContentInfo>>;

    // -- runtime log ---------------------------------------------------------------------
    async fn append_log(&self, entries: &[NewLogEntry]) -> StoreResult<()>;
    async fn list_log(&self, query: &LogQuery) -> StoreResult<Vec<LogEntry>>;

    // -- dispatches ----------------------------------------------------------------------
    async fn insert_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()>;
    async fn get_dispatch(&self, dispatch_id: &str) -> StoreResult<Option<Dispatch>>;
    async fn save_dispatch(&self, dispatch: &Dispatch) -> StoreResult<()>;
    async fn list_dispatches(
        &self,
        session_id: Option<&str>,
        status: Option<DispatchStatus>,
        page: &ListQuery,
    ) -> StoreResult<Vec<Dispatch>>;

    // -- usage ---------------------------------------------------------------------------
    /// Adds `usage` to the session's and its agent's totals atomically; both revisions
    /// grow by one.
    async fn add_usage(&self, session_id: &str, usage: &Usage) -> StoreResult<()>;
    /// Totals over every agent.
    async fn system_usage(&self) -> StoreResult<Usage>;

    // -- tokens --------------------------------------------------------------------------
    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    async fn find_token(&self, secret_hash: &str) -> StoreResult<Option<TokenRecord>>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>>;
    /// Marks a token revoked; returns false when it was unknown or already revoked.
    async fn revoke_token(&self, token_id: &str, at: Timestamp) -> StoreResult<bool>;
}

/// Opens the store a URL names: `postgres://…` or `postgresql://…` opens a
/// [`postgres::PgStore`]; `sqlite:<path>` or `sqlite://<path>` opens a
/// [`sqlite::SqliteStore`] at that path (relative paths are relative to the working
/// directory; `sqlite:///abs/path` is absolute) with `sqlite_sync`. Either runs pending
/// migrations.
pub async fn open_url(url: &str, sqlite_sync: sqlite::SyncMode) -> StoreResult<Arc<dyn Store>> {
    // ASCII lowercasing keeps byte offsets, so the prefix lengths below index `url`.
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::open(url).await?));
    }
    if lower.starts_with("sqlite:") {
        let rest = &url["sqlite:".len()..];
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(StoreError::Open {
                url: url.to_owned(),
                message: "the SQLite URL names no file: expected `sqlite:<path>` or \
                          `sqlite://<path>`"
                    .into(),
            });
        }
        return Ok(Arc::new(
            sqlite::SqliteStore::open(Path::new(path), sqlite_sync).await?,
        ));
    }
    Err(StoreError::Open {
        url: postgres::redact_url(url),
        message: "unknown kind of store URL: expected `postgres://…`, `postgresql://…`, \
                  `sqlite:<path>` or `sqlite://<path>`"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_url_picks_its_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aos.db");
        for url in [
            format!("sqlite:{}", path.display()),
            format!("sqlite://{}", path.display()),
        ] {
            let store = open_url(&url, sqlite::SyncMode::Normal).await.unwrap();
            assert_eq!(store.backend(), "sqlite", "{url}");
            store.close().await;
        }
        assert!(path.is_file());

        let db = postgres::testing::TestDatabase::create()
            .await
            .unwrap_or_else(|message| panic!("{message}"));
        let long = db.url.replacen("postgres://", "postgresql://", 1);
        for url in [&db.url, &long] {
            let store = open_url(url, sqlite::SyncMode::Normal).await.unwrap();
            assert_eq!(store.backend(), "postgres", "{url}");
            store.close().await;
        }
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_store_url_names_what_is_accepted() {
        for url in [
            "mysql://u:pw@h/db",
            "/var/lib/aos.db",
            "sqlite:",
            "sqlite://",
        ] {
            let Err(error) = open_url(url, sqlite::SyncMode::Normal).await else {
                panic!("{url} opened");
            };
            let text = error.to_string();
            assert!(matches!(error, StoreError::Open { .. }), "{text}");
            assert!(text.contains("sqlite:<path>"), "{text}");
            assert!(!text.contains("pw@"), "the password is not shown: {text}");
        }
    }
}
