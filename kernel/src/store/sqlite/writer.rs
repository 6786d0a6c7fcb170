//! The SQLite write thread: one OS thread owns the connection that makes the hot writes
//! (appends, control-block and dispatch saves, usage, RuntimeLog rows) and commits
//! whatever is queued as one transaction.
//!
//! The thread calls SQLite directly (rusqlite), so a batch of writes costs one thread
//! hand-off, not one per statement as through a pooled async driver; on a loaded
//! two-core machine those hand-offs were a third of the kernel's CPU time.
//!
//! Callers wait for the commit: an acknowledged write is in the WAL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aos_sdk::protocol::{AgentCb, Dispatch, SessionCb, Timestamp, Usage};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::super::codec::{cost_micros, phase_str, session_status_str, status_str};
use super::super::{AppendOutcome, NewLogEntry, NewMessage, StoreError, StoreResult};
use super::{BUSY_TIMEOUT, BlockCache, SyncMode, lock_cache, update_cache};

/// Writes committed together at most.
const BATCH: usize = 256;
/// RuntimeLog rows per `INSERT` (10 bound values each, far under SQLite's limit).
const LOG_ROWS_PER_STATEMENT: usize = 500;

/// A write the thread runs.
#[derive(Debug)]
pub(super) enum WriteOp {
    Append {
        message: NewMessage,
        parts: String,
    },
    SaveSession {
        session: SessionCb,
        expected: u64,
        body: String,
    },
    SaveAgent {
        agent: AgentCb,
        expected: u64,
        body: String,
    },
    InsertDispatch {
        dispatch: Dispatch,
        body: String,
    },
    SaveDispatch {
        dispatch: Dispatch,
        body: String,
    },
    /// Two statements (session, then agent).
    AddUsage {
        session_id: String,
        usage: Usage,
        now: Timestamp,
    },
    /// RuntimeLog rows with their `targets` and `data` already encoded.
    Log {
        rows: Vec<(NewLogEntry, Option<String>, Option<String>)>,
    },
}

/// What a write did.
#[derive(Debug)]
pub(super) enum Written {
    Appended(AppendOutcome),
    /// Rows the statement changed.
    Rows(u64),
    Usage {
        agent_id: String,
        session_revision: u64,
        agent_revision: u64,
    },
}

/// One queued write and where its outcome goes.
#[derive(Debug)]
pub(super) struct WriteJob {
    pub op: WriteOp,
    pub reply: oneshot::Sender<StoreResult<Written>>,
}

/// The running write thread.
#[derive(Debug)]
pub(super) struct Writer {
    queue: Mutex<Option<mpsc::Sender<WriteJob>>>,
    /// Resolves when the thread has finished its queue and closed its connection.
    finished: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Writer {
    /// Opens the write connection to `path` (migrated already) and starts the thread.
    pub(super) fn start(
        path: &Path,
        sync: SyncMode,
        cache: Arc<Mutex<BlockCache>>,
    ) -> StoreResult<Self> {
        let open_error = |e: rusqlite::Error| StoreError::Open {
            url: path.display().to_string(),
            message: e.to_string(),
        };
        let connection = Connection::open(path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
                 PRAGMA temp_store = MEMORY;",
                match sync {
                    SyncMode::Normal => "NORMAL",
                    SyncMode::Full => "FULL",
                }
            ))
            .map_err(open_error)?;
        connection.set_prepared_statement_cache_capacity(32);
        let (queue, jobs) = mpsc::channel(4096);
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new()
            .name("aos-sqlite-writer".into())
            .spawn(move || {
                run(connection, &cache, jobs);
                let _ = done.send(());
            })
            .map_err(|e| StoreError::Open {
                url: path.display().to_string(),
                message: format!("cannot start the write thread: {e}"),
            })?;
        Ok(Self {
            queue: Mutex::new(Some(queue)),
            finished: tokio::sync::Mutex::new(Some(finished)),
        })
    }

    /// Queues `op` and waits for its commit.
    pub(super) async fn write(&self, action: &'static str, op: WriteOp) -> StoreResult<Written> {
        let closed = || StoreError::Unavailable {
            action,
            source: "the store is closed".into(),
        };
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(closed)?;
        let (reply, outcome) = oneshot::channel();
        queue
            .send(WriteJob { op, reply })
            .await
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// Lets the thread finish what it holds, then waits for it to close its connection.
    pub(super) async fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(finished) = self.finished.lock().await.take() {
            let _ = finished.await;
        }
    }
}

/// The thread: takes every queued write, runs them in one `BEGIN IMMEDIATE`
/// transaction, updates the block cache in commit order and only then answers each
/// caller.
///
/// Even a lone write gets its transaction: in autocommit mode an `INSERT … RETURNING`
/// hands back its row before SQLite commits, and a commit that then fails (a full
/// disk) would go unnoticed — an acknowledged write that is not there.
fn run(mut connection: Connection, cache: &Mutex<BlockCache>, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = run_batch(&mut connection, &batch);
        {
            let mut cache = lock_cache(cache);
            for (job, result) in batch.iter().zip(&results) {
                if let Ok(written) = result {
                    update_cache(&mut cache, &job.op, written);
                }
            }
        }
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Runs several writes in one transaction. A statement that fails (an unknown or
/// archived session, a duplicate id) fails alone; a failed commit fails them all, and
/// so does an error after which SQLite rolled the transaction back itself (disk full,
/// I/O): the writes after it are not run outside the transaction.
fn run_batch(connection: &mut Connection, batch: &[WriteJob]) -> Vec<StoreResult<Written>> {
    let fail_all = |error: &rusqlite::Error| {
        batch
            .iter()
            .map(|_| Err(classify_shared("writing to the database", error)))
            .collect()
    };
    if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
        return fail_all(&error);
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = run_op(connection, &job.op);
        let failed = result.is_err();
        results.push(result);
        if failed && connection.is_autocommit() {
            let error = results.pop().and_then(Result::err);
            let message = error.map_or_else(String::new, |e| e.to_string());
            return batch
                .iter()
                .map(|_| {
                    Err(StoreError::Unavailable {
                        action: "writing to the database",
                        source: format!("the transaction was rolled back: {message}").into(),
                    })
                })
                .collect();
        }
    }
    match connection.execute_batch("COMMIT") {
        Ok(()) => results,
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            fail_all(&error)
        }
    }
}

fn run_op(connection: &Connection, op: &WriteOp) -> StoreResult<Written> {
    match op {
        WriteOp::Append { message, parts } => {
            insert_message(connection, message, parts).map(Written::Appended)
        }
        WriteOp::SaveSession {
            session,
            expected,
            body,
        } => connection
            .prepare_cached(
                "UPDATE sessions SET status = ?1, phase = ?2, revision = ?3, updated_at = ?4, body = ?5
                 WHERE session_id = ?6 AND revision = ?7",
            )
            .and_then(|mut update| {
                update.execute(params![
                    session_status_str(session.status),
                    phase_str(session.phase),
                    session.revision as i64,
                    session.updated_at.as_millis(),
                    body,
                    session.session_id,
                    *expected as i64,
                ])
            })
            .map(|rows| Written::Rows(rows as u64))
            .map_err(classify("saving a session")),
        WriteOp::SaveAgent {
            agent,
            expected,
            body,
        } => connection
            .prepare_cached(
                "UPDATE agents SET status = ?1, revision = ?2, updated_at = ?3, body = ?4
                 WHERE agent_id = ?5 AND revision = ?6",
            )
            .and_then(|mut update| {
                update.execute(params![
                    status_str(agent.status),
                    agent.revision as i64,
                    agent.updated_at.as_millis(),
                    body,
                    agent.agent_id,
                    *expected as i64,
                ])
            })
            .map(|rows| Written::Rows(rows as u64))
            .map_err(classify("saving an agent")),
        WriteOp::InsertDispatch { dispatch, body } => connection
            .prepare_cached(
                "INSERT INTO dispatches (dispatch_id, session_id, agent_id, status, queued_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    dispatch.dispatch_id,
                    dispatch.session_id,
                    dispatch.agent_id,
                    dispatch.status.as_str(),
                    dispatch.queued_at.as_millis(),
                    body,
                ])
            })
            .map(|rows| Written::Rows(rows as u64))
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Duplicate {
                        kind: "dispatch",
                        id: dispatch.dispatch_id.clone(),
                    }
                } else {
                    classify("recording a dispatch")(e)
                }
            }),
        WriteOp::SaveDispatch { dispatch, body } => connection
            .prepare_cached("UPDATE dispatches SET status = ?1, body = ?2 WHERE dispatch_id = ?3")
            .and_then(|mut update| {
                update.execute(params![dispatch.status.as_str(), body, dispatch.dispatch_id])
            })
            .map(|rows| Written::Rows(rows as u64))
            .map_err(classify("updating a dispatch")),
        WriteOp::AddUsage {
            session_id,
            usage,
            now,
        } => add_usage(connection, session_id, usage, *now),
        WriteOp::Log { rows } => insert_log(connection, rows).map(Written::Rows),
    }
}

/// The append statement: number the message from the session row and insert it; the
/// `history_advances_session` trigger moves `last_seq` and `revision` on.
fn insert_message(
    connection: &Connection,
    message: &NewMessage,
    parts: &str,
) -> StoreResult<AppendOutcome> {
    let appended = connection
        .prepare_cached(
            "INSERT INTO history (session_id, seq, session_revision, message_id, role, origin,
                                  dispatch_id, created_at, parts)
             SELECT session_id, last_seq + 1, revision + 1, ?2, ?3, ?4, ?5, ?6, ?7
               FROM sessions WHERE session_id = ?1 AND status <> 'archived'
             RETURNING seq, session_revision",
        )
        .and_then(|mut insert| {
            insert
                .query_row(
                    params![
                        message.session_id,
                        message.id,
                        message.role.as_str(),
                        message.origin.to_string(),
                        message.dispatch_id.as_deref(),
                        message.created_at.as_millis(),
                        parts,
                    ],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate {
                    kind: "message",
                    id: message.id.clone(),
                }
            } else {
                classify("appending to history")(e)
            }
        })?;
    if let Some((seq, revision)) = appended {
        return Ok(AppendOutcome {
            seq: count(seq),
            session_revision: count(revision),
        });
    }
    let status: Option<String> = connection
        .prepare_cached("SELECT status FROM sessions WHERE session_id = ?1")
        .and_then(|mut select| {
            select
                .query_row([&message.session_id], |row| row.get(0))
                .optional()
        })
        .map_err(classify("appending to history"))?;
    Err(match status {
        Some(_) => StoreError::SessionArchived(message.session_id.clone()),
        None => StoreError::NotFound {
            kind: "session",
            id: message.session_id.clone(),
        },
    })
}

/// Adds usage to a session's and its agent's totals (inside the batch's transaction).
fn add_usage(
    connection: &Connection,
    session_id: &str,
    usage: &Usage,
    now: Timestamp,
) -> StoreResult<Written> {
    let cost = cost_micros(usage);
    let counters = params![
        usage.prompt_tokens as i64,
        usage.completion_tokens as i64,
        cost,
        usage.turns as i64,
        usage.dispatches as i64,
        session_id,
        now.as_millis(),
    ];
    let session: Option<(String, i64)> = connection
        .prepare_cached(
            "UPDATE sessions SET prompt_tokens = prompt_tokens + ?1,
                 completion_tokens = completion_tokens + ?2, cost_micros = cost_micros + ?3,
                 turns = turns + ?4, dispatches = dispatches + ?5,
                 revision = revision + 1, updated_at = ?7
             WHERE session_id = ?6 RETURNING agent_id, revision",
        )
        .and_then(|mut update| {
            update
                .query_row(counters, |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(classify("recording usage"))?;
    let Some((agent_id, session_revision)) = session else {
        return Err(StoreError::NotFound {
            kind: "session",
            id: session_id.to_owned(),
        });
    };
    let agent_revision: i64 = connection
        .prepare_cached(
            "UPDATE agents SET prompt_tokens = prompt_tokens + ?1,
                 completion_tokens = completion_tokens + ?2, cost_micros = cost_micros + ?3,
                 turns = turns + ?4, dispatches = dispatches + ?5,
                 revision = revision + 1, updated_at = ?7
             WHERE agent_id = ?6 RETURNING revision",
        )
        .and_then(|mut update| {
            update.query_row(
                params![
                    usage.prompt_tokens as i64,
                    usage.completion_tokens as i64,
                    cost,
                    usage.turns as i64,
                    usage.dispatches as i64,
                    agent_id,
                    now.as_millis(),
                ],
                |row| row.get(0),
            )
        })
        .map_err(classify("recording usage"))?;
    Ok(Written::Usage {
        agent_id,
        session_revision: count(session_revision),
        agent_revision: count(agent_revision),
    })
}

/// RuntimeLog rows, one multi-row `INSERT` per [`LOG_ROWS_PER_STATEMENT`].
fn insert_log(
    connection: &Connection,
    rows: &[(NewLogEntry, Option<String>, Option<String>)],
) -> StoreResult<u64> {
    let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::Text);
    let mut written = 0;
    for chunk in rows.chunks(LOG_ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut values = Vec::with_capacity(chunk.len() * 10);
        for (entry, targets, data) in chunk {
            values.extend([
                Value::Text(entry.id.clone()),
                Value::Integer(entry.ts.as_millis()),
                Value::Text(entry.caller.clone()),
                Value::Text(entry.op.clone()),
                text(&entry.agent_id),
                text(&entry.session_id),
                Value::Text(entry.outcome.clone()),
                Value::Integer(entry.duration_us.min(i64::MAX as u64) as i64),
                text(targets),
                text(data),
            ]);
        }
        written += connection
            .prepare_cached(&format!(
                "INSERT INTO runtime_log (log_id, ts, caller, op, agent_id, session_id, outcome, \
                 duration_us, targets, data) VALUES {placeholders}"
            ))
            .and_then(|mut insert| insert.execute(rusqlite::params_from_iter(values)))
            .map_err(classify("writing the runtime log"))? as u64;
    }
    Ok(written)
}

fn count(value: i64) -> u64 {
    value.max(0) as u64
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    error.sqlite_error().is_some_and(|e| {
        e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    })
}

/// Whether SQLite could not write at all right now (busy, locked, read-only, I/O error,
/// disk full, cannot open) rather than refused this one write.
fn is_unavailable(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as Code;
    matches!(
        error.sqlite_error_code(),
        Some(
            Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::ReadOnly
                | Code::SystemIoFailure
                | Code::DiskFull
                | Code::CannotOpen
        )
    )
}

fn classify(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
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

/// [`classify`] for one error that fails a whole batch: each caller gets its words.
fn classify_shared(action: &'static str, error: &rusqlite::Error) -> StoreError {
    let source = error.to_string().into();
    if is_unavailable(error) {
        StoreError::Unavailable { action, source }
    } else {
        StoreError::Database { action, source }
    }
}
