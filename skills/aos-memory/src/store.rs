//! Where facts live: SQLite with FTS5 in the service's data directory, or, when the
//! kernel runs on PostgreSQL, the schema `aos_memory` of the kernel's database (so the
//! copies of this service on every node share one memory), searched with a `tsvector`
//! index. Both rank best first and report `rank` lower-is-better (BM25 on SQLite, the
//! negated `ts_rank_cd` on PostgreSQL).
//!
//! A store that fails its integrity check, or that is missing while the data directory
//! says one was created, is refused with the reason; it is never silently recreated
//! empty.

use std::path::Path;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

/// One stored fact, as both backends return it.
#[derive(Debug, Clone, FromRow)]
pub struct Fact {
    pub id: String,
    pub agent_id: String,
    pub scope: String,
    pub text: String,
    /// Lowercase words separated by spaces.
    pub tags: String,
    pub created_at: String,
    /// Search results only: lower is better.
    #[sqlx(default)]
    pub rank: Option<f64>,
}

/// A fact to save.
#[derive(Debug)]
pub struct NewFact<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub scope: &'a str,
    pub text: &'a str,
    pub tags: &'a str,
    pub session_id: Option<&'a str>,
    pub created_at: &'a str,
}

/// The open store.
#[derive(Debug, Clone)]
pub enum Facts {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS memories (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, scope TEXT NOT NULL CHECK (scope IN ('private', 'shared')),
        text TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '', session_id TEXT, created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS memories_by_agent ON memories (agent_id, created_at)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5 (text, tags, content='memories', content_rowid='rowid')",
    "CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, text, tags) VALUES (new.rowid, new.text, new.tags); END",
    "CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, text, tags) VALUES ('delete', old.rowid, old.text, old.tags); END",
];

/// The `simple` text-search configuration: words as written, lowercased, no stemming
/// and no stopword list of its own, like FTS5's default tokenizer; the service drops
/// common words itself.
const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS aos_memory",
    "CREATE TABLE IF NOT EXISTS aos_memory.memories (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, scope TEXT NOT NULL CHECK (scope IN ('private', 'shared')),
        text TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '', session_id TEXT, created_at TEXT NOT NULL,
        search tsvector GENERATED ALWAYS AS (to_tsvector('simple', text || ' ' || tags)) STORED)",
    "CREATE INDEX IF NOT EXISTS memories_by_agent ON aos_memory.memories (agent_id, created_at)",
    "CREATE INDEX IF NOT EXISTS memories_search ON aos_memory.memories USING GIN (search)",
];

/// Serialises schema creation between the copies of this service on several nodes.
const SCHEMA_LOCK: i64 = 0x0061_6f73_5f6d_656d;

impl Facts {
    /// Opens the store: the kernel's PostgreSQL database when `database_url` is given,
    /// else `memory.db` in `dir`.
    pub async fn open(dir: &Path, database_url: Option<&str>) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        match database_url {
            Some(url) => open_postgres(dir, url).await.map(Self::Postgres),
            None => open_sqlite(dir).await.map(Self::Sqlite),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn insert(&self, fact: &NewFact<'_>) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO memories (id, agent_id, scope, text, tags, session_id, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(fact.id)
                .bind(fact.agent_id)
                .bind(fact.scope)
                .bind(fact.text)
                .bind(fact.tags)
                .bind(fact.session_id)
                .bind(fact.created_at)
                .execute(pool)
                .await?;
            }
            Self::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO aos_memory.memories (id, agent_id, scope, text, tags, session_id, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(fact.id)
                .bind(fact.agent_id)
                .bind(fact.scope)
                .bind(fact.text)
                .bind(fact.tags)
                .bind(fact.session_id)
                .bind(fact.created_at)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Facts containing any of `words` that `agent` may see (every fact for `None`),
    /// best first.
    pub async fn matching(
        &self,
        words: &[String],
        agent: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Fact>, sqlx::Error> {
        if words.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Sqlite(pool) => {
                // Each word quoted, so no FTS5 query syntax leaks through.
                let query = words
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                sqlx::query_as(
                    "SELECT m.id, m.agent_id, m.scope, m.text, m.tags, m.created_at, bm25(memories_fts) AS rank
                     FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid
                     WHERE memories_fts MATCH ? AND (? IS NULL OR m.scope = 'shared' OR m.agent_id = ?)
                     ORDER BY rank LIMIT ?",
                )
                .bind(query)
                .bind(agent)
                .bind(agent)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            }
            Self::Postgres(pool) => {
                // Words are letters and digits only; each becomes its own lexeme.
                let query = words.join(" | ");
                sqlx::query_as(
                    "SELECT id, agent_id, scope, text, tags, created_at,
                            -ts_rank_cd(search, to_tsquery('simple', $1))::float8 AS rank
                     FROM aos_memory.memories
                     WHERE search @@ to_tsquery('simple', $1)
                       AND ($2::text IS NULL OR scope = 'shared' OR agent_id = $2)
                     ORDER BY rank, created_at DESC LIMIT $3",
                )
                .bind(query)
                .bind(agent)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            }
        }
    }

    /// `agent`'s facts and shared ones (every fact for `None`), newest first.
    pub async fn list(
        &self,
        agent: Option<&str>,
        scope: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Fact>, sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT id, agent_id, scope, text, tags, created_at FROM memories
                     WHERE (? IS NULL OR scope = 'shared' OR agent_id = ?) AND (? IS NULL OR scope = ?)
                     ORDER BY created_at DESC, id DESC LIMIT ?",
                )
                .bind(agent)
                .bind(agent)
                .bind(scope)
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT id, agent_id, scope, text, tags, created_at FROM aos_memory.memories
                     WHERE ($1::text IS NULL OR scope = 'shared' OR agent_id = $1)
                       AND ($2::text IS NULL OR scope = $2)
                     ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .bind(agent)
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
        }
    }

    /// The agent a fact belongs to, if it exists.
    pub async fn owner(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar("SELECT agent_id FROM memories WHERE id = ?")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT agent_id FROM aos_memory.memories WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query("DELETE FROM memories WHERE id = ?")
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Self::Postgres(pool) => {
                sqlx::query("DELETE FROM aos_memory.memories WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The marker in the data directory that says a store was created, and where.
fn marker(dir: &Path, backend: &str) -> std::path::PathBuf {
    match backend {
        "sqlite" => dir.join("memory.created"),
        _ => dir.join("memory.postgres.created"),
    }
}

fn write_marker(path: &Path, what: &str) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(
        path,
        format!("aos-memory store created in {what}; do not delete while it matters\n"),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

async fn open_sqlite(dir: &Path) -> Result<SqlitePool, String> {
    let db = dir.join("memory.db");
    let marker = marker(dir, "sqlite");
    if marker.exists() && !db.exists() {
        return Err(format!(
            "the memory store {} is missing, though {} says one was created: restore it from a backup, or delete the marker to start empty",
            db.display(),
            marker.display()
        ));
    }
    let options = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open the memory store {} (corrupt, or not a memory store; restore it from a backup): {e}", db.display()))?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("the memory store {} is not readable: {e}", db.display()))?;
    if check != "ok" {
        return Err(format!(
            "the memory store {} is corrupt ({check}); restore it from a backup",
            db.display()
        ));
    }
    for statement in SQLITE_SCHEMA {
        sqlx::query(*statement)
            .execute(&pool)
            .await
            .map_err(|e| format!("preparing the memory store: {e}"))?;
    }
    write_marker(&marker, &db.display().to_string())?;
    Ok(pool)
}

async fn open_postgres(dir: &Path, url: &str) -> Result<PgPool, String> {
    let where_ = "the kernel's PostgreSQL database (AOS_SKILL_DATABASE_URL)";
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach {where_}: {e}"))?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('aos_memory.memories') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("reading {where_}: {e}"))?;
    let marker = marker(dir, "postgres");
    if marker.exists() && !exists {
        return Err(format!(
            "the memory store (table aos_memory.memories) is missing from {where_}, though {} says it was created: restore it from a backup, or delete the marker to start empty",
            marker.display()
        ));
    }
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| format!("preparing the memory store in {where_}: {e}"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("preparing the memory store in {where_}: {e}"))?;
    for statement in POSTGRES_SCHEMA {
        sqlx::query(*statement)
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("preparing the memory store in {where_}: {e}"))?;
    }
    tx.commit()
        .await
        .map_err(|e| format!("preparing the memory store in {where_}: {e}"))?;
    write_marker(
        &marker,
        "aos_memory.memories of the kernel's PostgreSQL database",
    )?;
    Ok(pool)
}
