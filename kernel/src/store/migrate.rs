//! `aos migrate`: copies an installation's SQLite database into an empty PostgreSQL
//! database, table by table, and checks the copy before committing it.
//!
//! The SQLite file is opened read-only and read inside one transaction, so the copy is
//! one consistent snapshot even if something else still has the file open (the caller
//! should still make sure no kernel runs on it: later writes would not be copied). The
//! whole copy is one PostgreSQL transaction: rows go in foreign-key order, RuntimeLog
//! rows keep their seqs, and the row counts and checksums of both sides are compared
//! before the commit, so a failed or interrupted migration leaves the target empty.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Postgres, QueryBuilder, Row};

use super::postgres::PgStore;
use super::{Store, StoreError};

/// What a migration copied: per table, the rows read from SQLite and the rows the
/// target held after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// `(table, rows copied, rows counted in PostgreSQL)`, in copy order.
    pub tables: Vec<(String, u64, u64)>,
}

/// Why a migration stopped. Nothing is committed to the target in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("there is no SQLite database at {0}")]
    SourceMissing(PathBuf),
    #[error("cannot read the SQLite database at {path} while {action}: {source}")]
    Source {
        path: PathBuf,
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the SQLite database at {path} cannot be migrated: {message}")]
    SourceSchema { path: PathBuf, message: String },
    #[error(
        "the PostgreSQL database {url} is not empty ({rows}); migrate into a new, empty database"
    )]
    TargetNotEmpty { url: String, rows: String },
    #[error("cannot open the PostgreSQL database: {0}")]
    Target(#[from] StoreError),
    #[error("cannot write to the PostgreSQL database {url} while {action}: {source}")]
    Write {
        url: String,
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the copy of table `{table}` does not match the SQLite database ({message}); nothing was committed"
    )]
    Verify {
        table: &'static str,
        message: String,
    },
}

/// How a column's value travels.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    /// TEXT in SQLite, BYTEA (its UTF-8 bytes) in PostgreSQL.
    TextAsBytes,
}

/// A checksum over one column, compared between both sides.
#[derive(Debug, Clone, Copy)]
enum Check {
    Sum(&'static str),
    /// Total length in bytes of a text (or, in PostgreSQL, BYTEA) column.
    Bytes(&'static str),
    Max(&'static str),
    NonNull(&'static str),
}

impl Check {
    fn sqlite(self) -> String {
        match self {
            Check::Sum(c) => format!("COALESCE(SUM({c}), 0)"),
            Check::Bytes(c) => format!("COALESCE(SUM(length(CAST({c} AS BLOB))), 0)"),
            Check::Max(c) => format!("COALESCE(MAX({c}), 0)"),
            Check::NonNull(c) => format!("COUNT({c})"),
        }
    }

    fn postgres(self) -> String {
        match self {
            Check::Sum(c) => format!("COALESCE(SUM({c}), 0)::BIGINT"),
            Check::Bytes(c) => format!("COALESCE(SUM(octet_length({c})), 0)::BIGINT"),
            Check::Max(c) => format!("COALESCE(MAX({c}), 0)::BIGINT"),
            Check::NonNull(c) => format!("COUNT({c})"),
        }
    }

    fn label(self) -> String {
        match self {
            Check::Sum(c) => format!("sum of {c}"),
            Check::Bytes(c) => format!("bytes of {c}"),
            Check::Max(c) => format!("largest {c}"),
            Check::NonNull(c) => format!("{c} set"),
        }
    }
}

/// One table to copy.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// The primary key, which orders the copy.
    order: &'static str,
    checks: &'static [Check],
}

use Kind::{Int, OptInt, OptText, Text, TextAsBytes};

/// Every table of the schema, parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "system_cb",
        columns: &[
            ("id", Int),
            ("revision", Int),
            ("updated_at", Int),
            ("body", Text),
        ],
        order: "id",
        checks: &[Check::Sum("revision"), Check::Bytes("body")],
    },
    Table {
        name: "agents",
        columns: &[
            ("agent_id", Text),
            ("status", Text),
            ("revision", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("cost_micros", Int),
            ("turns", Int),
            ("dispatches", Int),
            ("body", Text),
        ],
        order: "agent_id",
        checks: &[
            Check::Sum("revision"),
            Check::Sum("prompt_tokens"),
            Check::Sum("completion_tokens"),
            Check::Sum("cost_micros"),
            Check::Sum("turns"),
            Check::Sum("dispatches"),
            Check::Bytes("body"),
        ],
    },
    Table {
        name: "sessions",
        columns: &[
            ("session_id", Text),
            ("agent_id", Text),
            ("status", Text),
            ("phase", Text),
            ("revision", Int),
            ("last_seq", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("cost_micros", Int),
            ("turns", Int),
            ("dispatches", Int),
            ("body", Text),
        ],
        order: "session_id",
        checks: &[
            Check::Sum("revision"),
            Check::Sum("last_seq"),
            Check::Sum("prompt_tokens"),
            Check::Sum("cost_micros"),
            Check::Bytes("body"),
        ],
    },
    Table {
        name: "history",
        columns: &[
            ("session_id", Text),
            ("seq", Int),
            ("session_revision", Int),
            ("message_id", Text),
            ("role", Text),
            ("origin", Text),
            ("dispatch_id", OptText),
            ("created_at", Int),
            ("parts", Text),
        ],
        order: "session_id, seq",
        checks: &[
            Check::Sum("seq"),
            Check::Sum("session_revision"),
            Check::Bytes("parts"),
        ],
    },
    Table {
        name: "content",
        columns: &[
            ("content_id", Text),
            ("session_id", Text),
            ("agent_id", Text),
            ("size_chars", Int),
            ("line_count", Int),
            ("created_by", Text),
            ("created_at", Int),
            ("body", TextAsBytes),
        ],
        order: "content_id",
        checks: &[Check::Sum("size_chars"), Check::Bytes("body")],
    },
    Table {
        name: "runtime_log",
        columns: &[
            ("seq", Int),
            ("log_id", Text),
            ("ts", Int),
            ("caller", Text),
            ("op", Text),
            ("agent_id", OptText),
            ("session_id", OptText),
            ("outcome", Text),
            ("duration_us", Int),
            ("targets", OptText),
            ("data", OptText),
        ],
        order: "seq",
        checks: &[
            Check::Sum("seq"),
            Check::Max("seq"),
            Check::NonNull("session_id"),
            Check::Bytes("op"),
        ],
    },
    Table {
        name: "dispatches",
        columns: &[
            ("dispatch_id", Text),
            ("session_id", Text),
            ("agent_id", Text),
            ("status", Text),
            ("queued_at", Int),
            ("body", Text),
        ],
        order: "dispatch_id",
        checks: &[Check::Bytes("body")],
    },
    Table {
        name: "tokens",
        columns: &[
            ("token_id", Text),
            ("secret_hash", Text),
            ("scope", Text),
            ("label", OptText),
            ("created_by", Text),
            ("created_at", Int),
            ("expires_at", OptInt),
            ("revoked_at", OptInt),
        ],
        order: "token_id",
        checks: &[Check::NonNull("revoked_at"), Check::Bytes("secret_hash")],
    },
];

/// Rows per INSERT at most; PostgreSQL allows 65 535 bound parameters a statement.
const BATCH_ROWS: usize = 1000;
/// Text per INSERT at most, so big content blobs go a few at a time.
const BATCH_BYTES: usize = 8 << 20;

/// One value on its way.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Vec<u8>),
}

impl Value {
    fn size(&self) -> usize {
        match self {
            Value::Int(_) => 8,
            Value::Text(text) => text.as_ref().map_or(0, String::len),
            Value::Bytes(bytes) => bytes.len(),
        }
    }
}

/// Copies the SQLite database at `sqlite_path` into the PostgreSQL database at
/// `pg_url`, which must hold no rows in any AOS table (its schema is created or
/// brought up to date first). Returns what was copied once it is committed.
pub async fn copy_sqlite_to_postgres(
    sqlite_path: &Path,
    pg_url: &str,
) -> Result<MigrateReport, CopyError> {
    if !sqlite_path.is_file() {
        return Err(CopyError::SourceMissing(sqlite_path.to_owned()));
    }
    let source_error = |action: &str| {
        let path = sqlite_path.to_owned();
        let action = action.to_owned();
        move |source| CopyError::Source {
            path,
            action,
            source,
        }
    };
    let mut source = SqliteConnectOptions::new()
        .filename(sqlite_path)
        .read_only(true)
        .connect()
        .await
        .map_err(source_error("opening it read-only"))?;
    check_source_schema(&mut source, sqlite_path).await?;

    let store = PgStore::open_with(pg_url, 2).await?;
    let outcome = copy_into(&mut source, sqlite_path, &store).await;
    let _ = source.close().await;
    if outcome.is_ok() {
        // Fresh statistics after a bulk load; a failure only costs plan quality.
        let _ = sqlx::query("ANALYZE").execute(store.pool()).await;
    }
    store.close().await;
    outcome
}

/// Refuses a file that is not an AOS database or whose schema differs from the one
/// this build writes (older: start `aos up` on it once; newer: use that build).
async fn check_source_schema(source: &mut SqliteConnection, path: &Path) -> Result<(), CopyError> {
    let schema_error = |message: String| CopyError::SourceSchema {
        path: path.to_owned(),
        message,
    };
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *source)
            .await
            .map_err(|e| {
                schema_error(format!(
                    "it has no AOS migration table, so it is not an AOS database ({e})"
                ))
            })?;
    let known: Vec<i64> = super::sqlite::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    if applied != known {
        return Err(schema_error(format!(
            "its schema has migrations {applied:?} but this aos writes {known:?}; \
             run `aos up` on it once with this version (or use the version that wrote it)"
        )));
    }
    Ok(())
}

async fn copy_into(
    source: &mut SqliteConnection,
    sqlite_path: &Path,
    store: &PgStore,
) -> Result<MigrateReport, CopyError> {
    let url = store.url().to_owned();
    let write_error = |action: String| {
        let url = url.clone();
        move |source| CopyError::Write {
            url,
            action,
            source,
        }
    };
    let mut target = store
        .pool()
        .begin()
        .await
        .map_err(write_error("starting the copy".into()))?;
    // No kernel may write while the copy runs; readers may look.
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.join(", ")
    )))
    .execute(&mut *target)
    .await
    .map_err(write_error("locking the tables".into()))?;
    let mut occupied = Vec::new();
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            table.name
        )))
        .fetch_one(&mut *target)
        .await
        .map_err(write_error(format!("counting rows of `{}`", table.name)))?;
        if rows > 0 {
            occupied.push(format!("{rows} in {}", table.name));
        }
    }
    if !occupied.is_empty() {
        return Err(CopyError::TargetNotEmpty {
            url: url.clone(),
            rows: occupied.join(", "),
        });
    }

    // One read transaction: every table comes from the same snapshot.
    let mut snapshot = source.begin().await.map_err(|e| CopyError::Source {
        path: sqlite_path.to_owned(),
        action: "starting a read transaction".into(),
        source: e,
    })?;
    let mut report = MigrateReport { tables: Vec::new() };
    for table in TABLES {
        let copied = copy_table(&mut snapshot, &mut target, table)
            .await
            .map_err(|e| match e {
                Side::Source(source) => CopyError::Source {
                    path: sqlite_path.to_owned(),
                    action: format!("reading table `{}`", table.name),
                    source,
                },
                Side::Target(source) => CopyError::Write {
                    url: url.clone(),
                    action: format!("copying table `{}`", table.name),
                    source,
                },
            })?;
        let verified = verify_table(&mut snapshot, &mut target, table, sqlite_path, &url).await?;
        report
            .tables
            .push((table.name.to_owned(), copied, verified));
    }
    verify_sessions(&mut target, &url).await?;
    // Later log rows continue after the copied ones.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('runtime_log', 'seq'),
                       COALESCE(MAX(seq), 1), MAX(seq) IS NOT NULL)
         FROM runtime_log",
    )
    .execute(&mut *target)
    .await
    .map_err(write_error("moving the RuntimeLog sequence on".into()))?;
    target
        .commit()
        .await
        .map_err(write_error("committing the copy".into()))?;
    let _ = snapshot.rollback().await;
    Ok(report)
}

/// Which side of the copy failed.
enum Side {
    Source(sqlx::Error),
    Target(sqlx::Error),
}

async fn copy_table(
    source: &mut SqliteConnection,
    target: &mut sqlx::PgConnection,
    table: &Table,
) -> Result<u64, Side> {
    let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let columns = columns.join(", ");
    let select = format!(
        "SELECT {columns} FROM {} ORDER BY {}",
        table.name, table.order
    );
    // The RuntimeLog keeps its seqs, which PostgreSQL generates unless told otherwise.
    let overriding = if table.name == "runtime_log" {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let insert = format!("INSERT INTO {} ({columns}){overriding} ", table.name);
    let max_rows = BATCH_ROWS.min(60_000 / table.columns.len());
    let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&mut *source);
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(max_rows);
    let mut bytes = 0;
    let mut copied = 0u64;
    while let Some(row) = rows.try_next().await.map_err(Side::Source)? {
        let values = read_row(&row, table).map_err(Side::Source)?;
        bytes += values.iter().map(Value::size).sum::<usize>();
        batch.push(values);
        if batch.len() >= max_rows || bytes >= BATCH_BYTES {
            copied += write_batch(target, &insert, &mut batch).await?;
            bytes = 0;
        }
    }
    copied += write_batch(target, &insert, &mut batch).await?;
    Ok(copied)
}

fn read_row(row: &SqliteRow, table: &Table) -> Result<Vec<Value>, sqlx::Error> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            Ok(match kind {
                Int => Value::Int(Some(row.try_get::<i64, _>(i)?)),
                OptInt => Value::Int(row.try_get::<Option<i64>, _>(i)?),
                Text => Value::Text(Some(row.try_get::<String, _>(i)?)),
                OptText => Value::Text(row.try_get::<Option<String>, _>(i)?),
                TextAsBytes => Value::Bytes(row.try_get::<String, _>(i)?.into_bytes()),
            })
        })
        .collect()
}

async fn write_batch(
    target: &mut sqlx::PgConnection,
    insert: &str,
    batch: &mut Vec<Vec<Value>>,
) -> Result<u64, Side> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut statement = QueryBuilder::<Postgres>::new(insert);
    statement.push_values(batch.drain(..), |mut row, values| {
        for value in values {
            match value {
                Value::Int(v) => row.push_bind(v),
                Value::Text(v) => row.push_bind(v),
                Value::Bytes(v) => row.push_bind(v),
            };
        }
    });
    let done = statement
        .build()
        .execute(&mut *target)
        .await
        .map_err(Side::Target)?;
    Ok(done.rows_affected())
}

/// Compares the row count and the table's checksums on both sides; returns the count.
async fn verify_table(
    source: &mut SqliteConnection,
    target: &mut sqlx::PgConnection,
    table: &Table,
    sqlite_path: &Path,
    url: &str,
) -> Result<u64, CopyError> {
    let select =
        |exprs: Vec<String>| format!("SELECT COUNT(*), {} FROM {}", exprs.join(", "), table.name);
    let sqlite_sql = select(table.checks.iter().map(|c| c.sqlite()).collect());
    let pg_sql = select(table.checks.iter().map(|c| c.postgres()).collect());
    let read = |row: &dyn Fn(usize) -> Result<i64, sqlx::Error>| {
        (0..=table.checks.len())
            .map(row)
            .collect::<Result<Vec<i64>, _>>()
    };
    let source_row = sqlx::query(AssertSqlSafe(sqlite_sql))
        .fetch_one(&mut *source)
        .await
        .and_then(|row| read(&|i| row.try_get(i)))
        .map_err(|e| CopyError::Source {
            path: sqlite_path.to_owned(),
            action: format!("checking table `{}`", table.name),
            source: e,
        })?;
    let target_row = sqlx::query(AssertSqlSafe(pg_sql))
        .fetch_one(&mut *target)
        .await
        .and_then(|row| read(&|i| row.try_get(i)))
        .map_err(|e| CopyError::Write {
            url: url.to_owned(),
            action: format!("checking table `{}`", table.name),
            source: e,
        })?;
    let labels = std::iter::once("rows".to_owned()).chain(table.checks.iter().map(|c| c.label()));
    let differences: Vec<String> = labels
        .zip(source_row.iter().zip(&target_row))
        .filter(|(_, (a, b))| a != b)
        .map(|(label, (a, b))| format!("{label}: {a} in SQLite, {b} in PostgreSQL"))
        .collect();
    if !differences.is_empty() {
        return Err(CopyError::Verify {
            table: table.name,
            message: differences.join("; "),
        });
    }
    Ok(target_row[0].max(0) as u64)
}

/// Each session's history is 1..=last_seq with no gap: its count and largest seq both
/// equal `last_seq`.
async fn verify_sessions(target: &mut sqlx::PgConnection, url: &str) -> Result<(), CopyError> {
    let broken: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT s.session_id, s.last_seq, COALESCE(h.n, 0), COALESCE(h.top, 0)
         FROM sessions s
         LEFT JOIN (SELECT session_id, COUNT(*) AS n, MAX(seq) AS top
                    FROM history GROUP BY session_id) h USING (session_id)
         WHERE s.last_seq <> COALESCE(h.top, 0) OR COALESCE(h.n, 0) <> COALESCE(h.top, 0)
         ORDER BY s.session_id LIMIT 5",
    )
    .fetch_all(&mut *target)
    .await
    .map_err(|e| CopyError::Write {
        url: url.to_owned(),
        action: "checking each session's history".into(),
        source: e,
    })?;
    if broken.is_empty() {
        return Ok(());
    }
    let sessions: Vec<String> = broken
        .iter()
        .map(|(id, last_seq, count, top)| {
            format!("`{id}` has lastSeq {last_seq} but {count} messages up to seq {top}")
        })
        .collect();
    Err(CopyError::Verify {
        table: "history",
        message: sessions.join("; "),
    })
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .tables
            .iter()
            .map(|(name, _, _)| name.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        writeln!(
            f,
            "{:<width$}  {:>10}  {:>13}",
            "table", "copied", "in PostgreSQL"
        )?;
        for (name, copied, verified) in &self.tables {
            writeln!(f, "{name:<width$}  {copied:>10}  {verified:>13}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aos_sdk::protocol::{
        AgentStatus, ContentInfo, Dispatch, DispatchStatus, LogEntry, SessionStatus, SystemCb,
        Timestamp, TokenInfo, TokenScope, Usage,
    };
    use serde_json::json;

    use super::*;
    use crate::ids::new_id;
    use crate::store::conformance_fixtures::{agent, session, text_message};
    use crate::store::postgres::testing::TestDatabase;
    use crate::store::sqlite::{SqliteStore, SyncMode};
    use crate::store::{ContentRecord, HistoryQuery, ListQuery, LogQuery, TokenRecord};

    const AGENTS: [&str; 3] = ["agt_a", "agt_b", "agt_c"];
    const SESSIONS: [(&str, &str); 5] = [
        ("ses_1", "agt_a"),
        ("ses_2", "agt_a"),
        ("ses_3", "agt_b"),
        ("ses_4", "agt_b"),
        ("ses_5", "agt_c"),
    ];
    const MESSAGES: usize = 400;
    const LOG_ROWS: usize = 1300;

    async fn database() -> TestDatabase {
        TestDatabase::create()
            .await
            .unwrap_or_else(|message| panic!("{message}"))
    }

    /// What the fixture wrote that queries need to name.
    struct Written {
        message_ids: Vec<(String, String)>,
        content_ids: Vec<String>,
        dispatch_ids: Vec<String>,
        secret_hashes: Vec<String>,
    }

    /// An installation with a bit of everything, written through the Store trait.
    async fn populate(store: &dyn Store) -> Written {
        let now = Timestamp::now();
        let mut system: SystemCb = serde_json::from_value(json!({
            "name": "default", "skillRoot": "/skills", "defaultSkills": [],
            "autoFoldThreshold": 16384, "compactionThreshold": 100000, "maxTurns": 50,
            "revision": 1, "createdAt": now, "updatedAt": now,
        }))
        .unwrap();
        store.insert_system(&system).await.unwrap();
        system.max_turns = 9;
        system.revision = 2;
        store.save_system(&system, 1).await.unwrap();

        for id in AGENTS {
            store.insert_agent(&agent(id)).await.unwrap();
        }
        let mut archived = store.get_agent("agt_c").await.unwrap().unwrap();
        archived.status = AgentStatus::Archived;
        archived.revision = 2;
        store.save_agent(&archived, 1).await.unwrap();
        for (id, agent_id) in SESSIONS {
            store.insert_session(&session(id, agent_id)).await.unwrap();
        }

        let mut message_ids = Vec::new();
        for i in 0..MESSAGES {
            // Uneven: the first session gets most messages.
            let (session_id, _) = SESSIONS[(i * i) % 7 % SESSIONS.len()];
            let text = match i % 4 {
                0 => format!("plain message {i}"),
                1 => format!("ünïcødé 🚀 message {i} with a NEEDLE"),
                2 => format!("quotes \"{i}\" and \\ backslash and \0 NUL"),
                _ => format!("line one {i}\nline two\ttabbed"),
            };
            let message = text_message(session_id, &text);
            store.append_message(&message).await.unwrap();
            message_ids.push((session_id.to_owned(), message.id));
        }
        let mut last = store.get_session("ses_5").await.unwrap().unwrap();
        last.status = SessionStatus::Archived;
        last.archived_at = Some(Timestamp::now());
        let expected = last.revision;
        last.revision += 1;
        store.save_session(&last, expected).await.unwrap();

        let mut content_ids = Vec::new();
        for (i, body) in [
            "short".to_owned(),
            "with \0 NUL and ünïcødé 🚀".to_owned(),
            String::new(),
            "big line\n".repeat(20_000),
            "last".to_owned(),
        ]
        .into_iter()
        .enumerate()
        {
            let (session_id, agent_id) = SESSIONS[i % SESSIONS.len()];
            let record = ContentRecord {
                info: ContentInfo {
                    content_id: format!("cnt_{i}"),
                    session_id: session_id.into(),
                    agent_id: agent_id.into(),
                    size_chars: body.chars().count() as u64,
                    line_count: body.lines().count() as u64,
                    created_by: "human".into(),
                    created_at: Timestamp::now(),
                },
                body,
            };
            store.put_content(&record).await.unwrap();
            content_ids.push(record.info.content_id);
        }

        let mut dispatch_ids = Vec::new();
        for i in 0..6 {
            let (session_id, agent_id) = SESSIONS[i % 4];
            let mut dispatch: Dispatch = serde_json::from_value(json!({
                "dispatchId": new_id("dsp_"), "sessionId": session_id, "agentId": agent_id,
                "status": "queued", "priority": i, "queuedAt": Timestamp::now(), "turns": 0,
            }))
            .unwrap();
            store.insert_dispatch(&dispatch).await.unwrap();
            if i % 2 == 0 {
                dispatch.status = DispatchStatus::Done;
                dispatch.turns = 3;
                dispatch.model = Some("local/m".into());
                store.save_dispatch(&dispatch).await.unwrap();
            }
            dispatch_ids.push(dispatch.dispatch_id);
        }

        for (i, (session_id, _)) in SESSIONS.iter().enumerate().take(4) {
            let usage = Usage {
                prompt_tokens: 100 * (i as u64 + 1),
                completion_tokens: 7,
                total_tokens: 100 * (i as u64 + 1) + 7,
                cost_usd: 0.0125 * (i as f64 + 1.0),
                turns: 2,
                dispatches: 1,
            };
            store.add_usage(session_id, &usage).await.unwrap();
            store.add_usage(session_id, &usage).await.unwrap();
        }

        let mut secret_hashes = Vec::new();
        for (i, (session_id, agent_id)) in SESSIONS.iter().enumerate().take(3) {
            let record = TokenRecord {
                info: TokenInfo {
                    token_id: format!("tok_{i}"),
                    scope: if i == 0 {
                        TokenScope::Admin
                    } else {
                        TokenScope::Session {
                            session_id: (*session_id).into(),
                            agent_id: Some((*agent_id).into()),
                        }
                    },
                    label: (i != 1).then(|| format!("label {i}")),
                    created_by: "admin".into(),
                    created_at: Timestamp::now(),
                    expires_at: (i == 2).then(|| Timestamp::now().plus_millis(60_000)),
                    revoked_at: None,
                },
                secret_hash: format!("hash{i}"),
            };
            store.insert_token(&record).await.unwrap();
            secret_hashes.push(record.secret_hash);
        }
        assert!(store.revoke_token("tok_1", Timestamp::now()).await.unwrap());

        let entries: Vec<LogEntry> = (0..LOG_ROWS)
            .map(|i| LogEntry {
                seq: 0,
                id: new_id("log_"),
                ts: Timestamp::now(),
                caller: "admin".into(),
                op: ["agent.create", "session.append", "session.dispatch"][i % 3].into(),
                agent_id: (i % 2 == 0).then(|| "agt_a".to_owned()),
                session_id: (i % 5 == 0).then(|| SESSIONS[i % 4].0.to_owned()),
                outcome: if i % 7 == 0 { "invalid_params" } else { "ok" }.into(),
                duration_us: i as u64 * 3,
                targets: (i % 3 == 0).then(|| json!({"agentId": "agt_a", "n": i})),
                data: (i % 7 == 0).then(|| json!({"message": format!("failure {i}")})),
            })
            .collect();
        for chunk in entries.chunks(200) {
            store.append_log(chunk).await.unwrap();
        }

        Written {
            message_ids,
            content_ids,
            dispatch_ids,
            secret_hashes,
        }
    }

    fn page(after: Option<&str>, limit: u32) -> ListQuery {
        ListQuery {
            after: after.map(str::to_owned),
            limit,
        }
    }

    /// Every read the kernel makes, as text: equal text means equal answers.
    async fn reads(store: &dyn Store, written: &Written) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! read {
            ($e:expr) => {
                out.push(format!("{} => {:?}", stringify!($e), $e.await.unwrap()))
            };
        }
        read!(store.load_system());
        read!(store.list_agents(None, &page(None, 100)));
        read!(store.list_agents(Some(AgentStatus::Archived), &page(None, 100)));
        read!(store.list_agents(None, &page(Some("agt_a"), 1)));
        for id in AGENTS {
            read!(store.get_agent(id));
        }
        read!(store.list_sessions(None, None, &page(None, 100)));
        read!(store.list_sessions(Some("agt_a"), None, &page(None, 100)));
        read!(store.list_sessions(None, Some(SessionStatus::Archived), &page(None, 100)));
        read!(store.list_sessions(None, None, &page(Some("ses_2"), 2)));
        read!(store.sessions_needing_recovery());
        for (id, _) in SESSIONS {
            read!(store.get_session(id));
            read!(store.list_messages(
                id,
                &HistoryQuery {
                    limit: 10_000,
                    ..Default::default()
                }
            ));
            read!(store.list_messages(
                id,
                &HistoryQuery {
                    limit: 7,
                    descending: true,
                    ..Default::default()
                }
            ));
            read!(store.list_messages(
                id,
                &HistoryQuery {
                    from_seq: Some(3),
                    to_seq: Some(17),
                    limit: 5,
                    descending: false,
                }
            ));
            read!(store.find_messages_containing(id, "needle", None, 20));
            read!(store.find_messages_containing(id, "", Some(30), 10));
            read!(store.get_message_by_seq(id, 2));
        }
        for (session_id, message_id) in written.message_ids.iter().step_by(37) {
            read!(store.get_message(session_id, message_id));
        }
        for id in &written.content_ids {
            read!(store.get_content(id));
            read!(store.get_content_info(id));
        }
        read!(store.list_log(&LogQuery {
            limit: 10_000,
            ..Default::default()
        }));
        read!(store.list_log(&LogQuery {
            op: Some("session.dispatch".into()),
            limit: 50,
            ..Default::default()
        }));
        read!(store.list_log(&LogQuery {
            session_id: Some("ses_2".into()),
            agent_id: Some("agt_a".into()),
            limit: 10_000,
            ..Default::default()
        }));
        read!(store.list_log(&LogQuery {
            after_seq: Some(1000),
            limit: 10_000,
            ..Default::default()
        }));
        read!(store.list_dispatches(None, None, &page(None, 100)));
        read!(store.list_dispatches(Some("ses_1"), Some(DispatchStatus::Done), &page(None, 100)));
        read!(store.list_dispatches(None, None, &page(Some(&written.dispatch_ids[2]), 2)));
        for id in &written.dispatch_ids {
            read!(store.get_dispatch(id));
        }
        read!(store.system_usage());
        for hash in &written.secret_hashes {
            read!(store.find_token(hash));
        }
        read!(store.list_tokens());
        out
    }

    async fn sqlite_installation(dir: &Path) -> (PathBuf, Written, Vec<String>) {
        let path = dir.join("aos.db");
        let store = SqliteStore::open(&path, SyncMode::Normal).await.unwrap();
        let written = populate(&store).await;
        let before = reads(&store, &written).await;
        store.close().await;
        (path, written, before)
    }

    #[tokio::test]
    async fn a_migrated_installation_reads_the_same_from_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let (path, written, from_sqlite) = sqlite_installation(dir.path()).await;
        let db = database().await;
        let report = copy_sqlite_to_postgres(&path, &db.url).await.unwrap();
        let expected = [
            ("system_cb", 1),
            ("agents", AGENTS.len()),
            ("sessions", SESSIONS.len()),
            ("history", MESSAGES),
            ("content", written.content_ids.len()),
            ("runtime_log", LOG_ROWS),
            ("dispatches", written.dispatch_ids.len()),
            ("tokens", written.secret_hashes.len()),
        ];
        assert_eq!(
            report.tables,
            expected
                .iter()
                .map(|(name, n)| (name.to_string(), *n as u64, *n as u64))
                .collect::<Vec<_>>()
        );
        let shown = report.to_string();
        assert!(
            shown.starts_with("table            copied  in PostgreSQL\n"),
            "{shown}"
        );
        assert!(
            shown.contains("\nhistory             400            400\n"),
            "{shown}"
        );

        let pg = PgStore::open(&db.url).await.unwrap();
        let from_postgres = reads(&pg, &written).await;
        assert_eq!(from_sqlite.len(), from_postgres.len());
        for (sqlite, postgres) in from_sqlite.iter().zip(&from_postgres) {
            assert_eq!(sqlite, postgres);
        }

        // Both numberings go on where SQLite stopped.
        let before = pg.get_session("ses_1").await.unwrap().unwrap();
        let next = pg
            .append_message(&text_message("ses_1", "after the move"))
            .await
            .unwrap();
        assert_eq!(next.seq, before.last_seq + 1);
        assert_eq!(next.session_revision, before.revision + 1);
        pg.append_log(&[LogEntry {
            seq: 0,
            id: new_id("log_"),
            ts: Timestamp::now(),
            caller: "admin".into(),
            op: "after.move".into(),
            agent_id: None,
            session_id: None,
            outcome: "ok".into(),
            duration_us: 1,
            targets: None,
            data: None,
        }])
        .await
        .unwrap();
        let newest = pg
            .list_log(&LogQuery {
                op: Some("after.move".into()),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(newest[0].seq, LOG_ROWS as u64 + 1);
        pg.close().await;
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn a_target_that_holds_rows_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = sqlite_installation(dir.path()).await;
        let db = database().await;
        let pg = PgStore::open(&db.url).await.unwrap();
        pg.insert_agent(&agent("agt_other")).await.unwrap();
        let error = copy_sqlite_to_postgres(&path, &db.url)
            .await
            .expect_err("the target has an agent");
        let text = error.to_string();
        assert!(matches!(error, CopyError::TargetNotEmpty { .. }), "{text}");
        assert!(text.contains("1 in agents"), "{text}");
        assert!(text.contains(&db.name), "names the database: {text}");
        let agents = pg.list_agents(None, &page(None, 10)).await.unwrap();
        assert_eq!(agents.len(), 1);
        assert!(pg.load_system().await.unwrap().is_none());
        pg.close().await;
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_migration_into_the_same_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = sqlite_installation(dir.path()).await;
        let db = database().await;
        copy_sqlite_to_postgres(&path, &db.url).await.unwrap();
        let error = copy_sqlite_to_postgres(&path, &db.url)
            .await
            .expect_err("already migrated");
        assert!(
            error
                .to_string()
                .contains(&format!("{MESSAGES} in history")),
            "{error}"
        );
        db.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_or_foreign_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing.db");
        let error = copy_sqlite_to_postgres(&missing, "postgres://unused@127.0.0.1:1/x")
            .await
            .expect_err("no file");
        assert!(matches!(error, CopyError::SourceMissing(_)));
        assert!(error.to_string().contains("nothing.db"), "{error}");
        assert!(!missing.exists(), "a read-only open creates nothing");

        let foreign = dir.path().join("other.db");
        let mut connection = SqliteConnectOptions::new()
            .filename(&foreign)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE notes (body TEXT)")
            .execute(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();
        let error = copy_sqlite_to_postgres(&foreign, "postgres://unused@127.0.0.1:1/x")
            .await
            .expect_err("not an AOS database");
        assert!(matches!(error, CopyError::SourceSchema { .. }), "{error}");
        assert!(error.to_string().contains("not an AOS database"), "{error}");
    }
}
