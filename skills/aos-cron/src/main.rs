//! `aos-cron`: scheduled dispatches, a system service.
//!
//! A job is a cron expression, an agent, a target (one session, or a new session per
//! run) and a task. Jobs live in SQLite in the service's data directory, so they
//! survive restarts of the service and the kernel. Every `tickMs` the service runs the
//! jobs that are due: it dispatches the task (`session.dispatch`, queued behind other
//! work of that session) unless the job's previous run is still queued or running —
//! then the run is skipped and logged, never stacked.
//!
//! Missed runs: when a job is found more than one occurrence late (the kernel or the
//! service was down), `missed: once` runs it once now and `skip` runs nothing; either
//! way the next run is the next occurrence after now.
//!
//! `clock: manual` (tests) replaces the wall clock by one that only `aos-cron.tick`
//! moves, so schedules can be checked without waiting.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_sdk::protocol::ErrorCode;
use aos_sdk::protocol::service::{CallerInfo, OpKindWire};
use aos_sdk::service::{OpError, Service, ServiceClient};
use chrono::{DateTime, SecondsFormat, Utc};
use croner::Cron;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    /// `system` (the wall clock) or `manual` (moved only by `aos-cron.tick`).
    clock: String,
    /// Default missed-run policy: `once` or `skip`.
    missed: String,
    /// How often due jobs are looked for.
    tick_ms: u64,
    max_jobs_per_agent: i64,
}

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, expr TEXT NOT NULL, agent_id TEXT NOT NULL, session_id TEXT,
    task TEXT NOT NULL, missed TEXT NOT NULL CHECK (missed IN ('once', 'skip')),
    created_by TEXT NOT NULL, created_at TEXT NOT NULL, next_run_at TEXT NOT NULL,
    last_run_at TEXT, last_dispatch_id TEXT, last_session_id TEXT, last_status TEXT,
    runs INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0)"];

struct Scheduler {
    pool: SqlitePool,
    client: ServiceClient,
    config: Config,
    /// The manual clock's time.
    manual_now: Mutex<DateTime<Utc>>,
    /// One evaluation of due jobs at a time.
    ticking: tokio::sync::Mutex<()>,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-cron", 2, serve)
}

async fn serve() -> Result<(), String> {
    let skill_dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config: Config = serde_json::from_str(
        &std::fs::read_to_string(skill_dir.join("config.json"))
            .map_err(|e| format!("config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    if !matches!(config.clock.as_str(), "system" | "manual") {
        return Err(format!(
            "config.json: `clock` is `{}`; accepted: system, manual",
            config.clock
        ));
    }
    if !matches!(config.missed.as_str(), "once" | "skip") {
        return Err(format!(
            "config.json: `missed` is `{}`; accepted: once, skip",
            config.missed
        ));
    }
    let data =
        std::env::var_os("AOS_DATA_DIR").map_or_else(|| skill_dir.join("data"), PathBuf::from);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let options = SqliteConnectOptions::new()
        .filename(data.join("cron.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", data.join("cron.db").display()))?;
    for statement in SCHEMA {
        sqlx::query(*statement)
            .execute(&pool)
            .await
            .map_err(|e| format!("preparing the job store: {e}"))?;
    }
    let service = Service::from_env("aos-cron");
    let cron = Arc::new(Scheduler {
        pool,
        client: service.client(),
        manual_now: Mutex::new(Utc::now()),
        ticking: tokio::sync::Mutex::new(()),
        config,
    });
    if cron.config.clock == "system" {
        let ticker = cron.clone();
        tokio::spawn(async move {
            // Waits for the connection, so the first pass also catches up missed runs.
            let _ = ticker.client.hello().await;
            let mut interval =
                tokio::time::interval(Duration::from_millis(ticker.config.tick_ms.max(100)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticker.run_due().await;
            }
        });
    }
    macro_rules! op {
        ($service:expr, $name:literal, $kind:expr, $doc:literal, $method:ident) => {{
            let c = cron.clone();
            $service.on_op($name, $kind, $doc, move |params, caller| {
                let c = c.clone();
                async move { c.$method(&params, &caller).await }
            })
        }};
    }
    let service = op!(
        service,
        "add",
        OpKindWire::Command,
        "Schedule a task: params {expr (cron: minute hour day month weekday, optional leading seconds; UTC), task, agentId? (default the caller's agent), sessionId? (run in this session; default a new session per run), missed? (once|skip)}; returns the job.",
        add
    );
    let service = op!(
        service,
        "list",
        OpKindWire::Query,
        "Jobs with their next run and last result: params {agentId?}; agents see their own.",
        list
    );
    let service = op!(
        service,
        "remove",
        OpKindWire::Command,
        "Delete a job: params {id}.",
        remove
    );
    let service = op!(
        service,
        "run",
        OpKindWire::Command,
        "Run a job now (skipped if its previous run is still going): params {id}; returns {status, dispatchId?, sessionId?}.",
        run_now
    );
    let service = op!(
        service,
        "tick",
        OpKindWire::Command,
        "Manual clock only (config clock: manual): set the time and run what is due: params {now (RFC 3339, not earlier than the clock)}; returns {now, results}.",
        tick
    );
    service.run().await.map_err(|e| e.to_string())
}

fn string<'a>(params: &'a Value, field: &str) -> Result<&'a str, OpError> {
    params
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OpError::invalid(format!("`{field}` (a non-empty string) is required")))
}

fn db_error(e: sqlx::Error) -> OpError {
    OpError::new(
        ErrorCode::StorageUnavailable,
        format!("the cron job store failed: {e}"),
    )
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn schedule(expr: &str) -> Result<Cron, OpError> {
    Cron::from_str(expr).map_err(|e| {
        OpError::invalid(format!(
            "`{expr}` is not a cron expression ({e}); accepted: five fields `minute hour day month weekday` (e.g. `*/15 9-17 * * 1-5`), or six with leading seconds"
        ))
    })
}

/// The first occurrence of `cron` strictly after `t`.
fn next_after(cron: &Cron, t: DateTime<Utc>) -> Result<DateTime<Utc>, OpError> {
    cron.find_next_occurrence(&t, false)
        .map_err(|e| OpError::invalid(format!("the expression never fires again: {e}")))
}

fn job_json(row: &sqlx::sqlite::SqliteRow) -> Value {
    json!({
        "id": row.get::<String, _>("id"),
        "expr": row.get::<String, _>("expr"),
        "agentId": row.get::<String, _>("agent_id"),
        "sessionId": row.get::<Option<String>, _>("session_id"),
        "task": row.get::<String, _>("task"),
        "missed": row.get::<String, _>("missed"),
        "createdBy": row.get::<String, _>("created_by"),
        "createdAt": row.get::<String, _>("created_at"),
        "nextRunAt": row.get::<String, _>("next_run_at"),
        "lastRunAt": row.get::<Option<String>, _>("last_run_at"),
        "lastDispatchId": row.get::<Option<String>, _>("last_dispatch_id"),
        "lastSessionId": row.get::<Option<String>, _>("last_session_id"),
        "lastStatus": row.get::<Option<String>, _>("last_status"),
        "runs": row.get::<i64, _>("runs"),
        "skipped": row.get::<i64, _>("skipped"),
    })
}

impl Scheduler {
    fn now(&self) -> DateTime<Utc> {
        if self.config.clock == "manual" {
            *self.manual_now.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            Utc::now()
        }
    }

    async fn call(&self, op: &str, params: Value) -> Result<Value, OpError> {
        self.client
            .call_ok(op, params)
            .await
            .map_err(|e| OpError::new(e.code, e.message))
    }

    /// The agent a call manages: the caller's own, or (admin, services) the one named.
    fn agent_of(&self, params: &Value, caller: &CallerInfo) -> Result<Option<String>, OpError> {
        let named = params.get("agentId").and_then(Value::as_str);
        match (&caller.agent_id, named) {
            (Some(own), Some(named)) if own != named => Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!("a token of agent {own} cannot manage the jobs of {named}"),
            )),
            (Some(own), _) => Ok(Some(own.clone())),
            (None, named) => Ok(named.map(str::to_owned)),
        }
    }

    async fn job(&self, id: &str, caller: &CallerInfo) -> Result<sqlx::sqlite::SqliteRow, OpError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no cron job `{id}`; `cron list` shows yours"),
                )
            })?;
        let owner: String = row.get("agent_id");
        if caller.agent_id.as_deref().is_some_and(|own| own != owner) {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!("job `{id}` belongs to agent {owner}"),
            ));
        }
        Ok(row)
    }

    async fn add(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["expr", "task", "agentId", "sessionId", "missed"])?;
        let expr = string(params, "expr")?;
        let cron = schedule(expr)?;
        let task = string(params, "task")?;
        if task.chars().count() > 20_000 {
            return Err(OpError::invalid("`task` must be at most 20000 characters"));
        }
        let missed = match params.get("missed").and_then(Value::as_str) {
            None => self.config.missed.clone(),
            Some(m @ ("once" | "skip")) => m.to_owned(),
            Some(other) => {
                return Err(OpError::invalid(format!(
                    "`missed` is `{other}`; accepted: once, skip"
                )));
            }
        };
        let session_id = params.get("sessionId").and_then(Value::as_str);
        let agent = match (self.agent_of(params, caller)?, session_id) {
            (Some(agent), _) => agent,
            (None, Some(session)) => self
                .call("session.get", json!({"sessionId": session}))
                .await?["agentId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            (None, None) => {
                return Err(OpError::invalid(
                    "`agentId` (or a `sessionId`) is required for callers that are not an agent",
                ));
            }
        };
        let agent_record = self.call("agent.get", json!({"agentId": agent})).await?;
        if agent_record["status"] == "archived" {
            return Err(OpError::new(
                ErrorCode::AgentArchived,
                format!("agent {agent} is archived"),
            ));
        }
        if let Some(session) = session_id {
            let record = self
                .call("session.get", json!({"sessionId": session}))
                .await?;
            if record["agentId"] != agent.as_str() {
                return Err(OpError::new(
                    ErrorCode::PermissionDenied,
                    format!("session {session} is not a session of agent {agent}"),
                ));
            }
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE agent_id = ?")
            .bind(&agent)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        if count >= self.config.max_jobs_per_agent {
            return Err(OpError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "agent {agent} has {count} jobs, the limit (maxJobsPerAgent in aos-cron's config.json); remove one first"
                ),
            ));
        }
        let now = self.now();
        let id = format!("cron_{}", uuid::Uuid::now_v7().simple());
        sqlx::query("INSERT INTO jobs (id, expr, agent_id, session_id, task, missed, created_by, created_at, next_run_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(expr)
            .bind(&agent)
            .bind(session_id)
            .bind(task)
            .bind(&missed)
            .bind(&caller.identity)
            .bind(stamp(now))
            .bind(stamp(next_after(&cron, now)?))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(job_json(&self.job(&id, caller).await?))
    }

    async fn list(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["agentId"])?;
        let agent = self.agent_of(params, caller)?;
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE (? IS NULL OR agent_id = ?) ORDER BY next_run_at, id",
        )
        .bind(agent.as_deref())
        .bind(agent.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(
            json!({"items": rows.iter().map(job_json).collect::<Vec<_>>(), "now": stamp(self.now())}),
        )
    }

    async fn remove(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["id"])?;
        let id = string(params, "id")?;
        self.job(id, caller).await?;
        sqlx::query("DELETE FROM jobs WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(json!({"id": id, "removed": true}))
    }

    async fn run_now(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["id"])?;
        let row = self.job(string(params, "id")?, caller).await?;
        let _one = self.ticking.lock().await;
        Ok(self.fire(&row, "run by hand").await)
    }

    async fn tick(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["now"])?;
        if self.config.clock != "manual" {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "`tick` moves the manual clock; this service runs on the system clock (config.json `clock`)",
            ));
        }
        if caller.agent_id.is_some() {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                "only admin and services move the clock",
            ));
        }
        let text = string(params, "now")?;
        let now = parse_time(text).ok_or_else(|| {
            OpError::invalid(format!(
                "`now` is `{text}`; accepted: an RFC 3339 time such as 2026-12-02T09:00:00Z"
            ))
        })?;
        {
            let mut clock = self.manual_now.lock().unwrap_or_else(|p| p.into_inner());
            if now < *clock {
                return Err(OpError::invalid(format!(
                    "`now` {text} is before the clock ({}); the clock only moves forward",
                    stamp(*clock)
                )));
            }
            *clock = now;
        }
        let results = self.run_due().await;
        Ok(json!({"now": stamp(now), "results": results}))
    }

    /// Runs every job that is due, each at most once; returns what happened to each.
    async fn run_due(&self) -> Vec<Value> {
        let _one = self.ticking.lock().await;
        let now = self.now();
        let due =
            match sqlx::query("SELECT * FROM jobs WHERE next_run_at <= ? ORDER BY next_run_at")
                .bind(stamp(now))
                .fetch_all(&self.pool)
                .await
            {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "cannot read due jobs");
                    return Vec::new();
                }
            };
        let mut results = Vec::new();
        for row in due {
            let id: String = row.get("id");
            let Ok(cron) = Cron::from_str(&row.get::<String, _>("expr")) else {
                continue;
            };
            let Some(scheduled) = parse_time(&row.get::<String, _>("next_run_at")) else {
                continue;
            };
            // More than one occurrence passed: the service was not running.
            let late = cron
                .find_next_occurrence(&scheduled, false)
                .is_ok_and(|after| after <= now);
            let mut result = if late && row.get::<String, _>("missed") == "skip" {
                tracing::info!(job = %id, scheduled = %stamp(scheduled), "missed runs skipped");
                self.set_status(&id, "missed runs skipped", false).await;
                json!({"id": id, "status": "missed", "scheduled": stamp(scheduled)})
            } else {
                self.fire(
                    &row,
                    if late {
                        "missed, run once"
                    } else {
                        "on schedule"
                    },
                )
                .await
            };
            let next = cron
                .find_next_occurrence(&now, false)
                .map(stamp)
                .unwrap_or_else(|_| "9999-12-31T23:59:59.999Z".into());
            result["nextRunAt"] = json!(next);
            if let Err(error) = sqlx::query("UPDATE jobs SET next_run_at = ? WHERE id = ?")
                .bind(&next)
                .bind(&id)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(%error, job = %id, "cannot schedule the next run");
            }
            results.push(result);
        }
        results
    }

    async fn set_status(&self, id: &str, status: &str, skipped: bool) {
        if let Err(error) =
            sqlx::query("UPDATE jobs SET last_status = ?, skipped = skipped + ? WHERE id = ?")
                .bind(status)
                .bind(i64::from(skipped))
                .bind(id)
                .execute(&self.pool)
                .await
        {
            tracing::warn!(%error, job = id, "cannot record the job's status");
        }
    }

    /// Dispatches a job's task, unless its previous run is still going.
    async fn fire(&self, row: &sqlx::sqlite::SqliteRow, why: &str) -> Value {
        let id: String = row.get("id");
        if let Some(previous) = row.get::<Option<String>, _>("last_dispatch_id") {
            let status = self
                .call("dispatch.get", json!({"dispatchId": previous}))
                .await
                .map(|d| d["status"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            if matches!(status.as_str(), "queued" | "running") {
                tracing::info!(job = %id, previous = %previous, "skipped: the previous run is still {status}");
                let text = format!("skipped: the previous run {previous} is still {status}");
                self.set_status(&id, &text, true).await;
                self.publish(
                    &row.get::<String, _>("agent_id"),
                    json!({"id": id, "status": "skipped", "previousDispatchId": previous}),
                )
                .await;
                return json!({"id": id, "status": "skipped", "previousDispatchId": previous});
            }
        }
        let agent: String = row.get("agent_id");
        let task: String = row.get("task");
        let session = match row.get::<Option<String>, _>("session_id") {
            Some(session) => Ok(session),
            None => self
                .call(
                    "session.create",
                    json!({
                        "agentId": agent,
                        "title": format!("cron: {}", task.chars().take(60).collect::<String>()),
                        "metadata": {"aos-cron": {"jobId": id}},
                    }),
                )
                .await
                .map(|s| s["sessionId"].as_str().unwrap_or_default().to_owned()),
        };
        let dispatched = match session {
            Ok(session) => self
                .call(
                    "session.dispatch",
                    json!({
                        "sessionId": session,
                        "message": {"role": "user", "content": format!("[cron job {id} ({}), {why}]\n{task}", row.get::<String, _>("expr"))},
                        "ifBusy": "queue",
                    }),
                )
                .await
                .map(|d| (session, d["dispatchId"].as_str().unwrap_or_default().to_owned())),
            Err(error) => Err(error),
        };
        match dispatched {
            Ok((session, dispatch)) => {
                let recorded = sqlx::query("UPDATE jobs SET last_run_at = ?, last_dispatch_id = ?, last_session_id = ?, last_status = ?, runs = runs + 1 WHERE id = ?")
                    .bind(stamp(self.now()))
                    .bind(&dispatch)
                    .bind(&session)
                    .bind(format!("dispatched ({why})"))
                    .bind(&id)
                    .execute(&self.pool)
                    .await;
                if let Err(error) = recorded {
                    tracing::warn!(%error, job = %id, "cannot record the run");
                }
                tracing::info!(job = %id, dispatch = %dispatch, why, "fired");
                let result = json!({"id": id, "status": "dispatched", "dispatchId": dispatch, "sessionId": session});
                self.publish(&agent, result.clone()).await;
                result
            }
            Err(error) => {
                tracing::warn!(job = %id, message = %error.message, "cannot dispatch");
                let text = format!("failed: {}", error.message);
                self.set_status(&id, &text, false).await;
                json!({"id": id, "status": "failed", "error": error.message})
            }
        }
    }

    async fn publish(&self, agent: &str, mut payload: Value) {
        payload["agentId"] = json!(agent);
        if let Some(session) = payload.get("sessionId").cloned() {
            payload["targetSessionId"] = session;
        }
        let params = json!({"name": "skill.aos-cron.run", "payload": payload});
        if let Err(error) = self.client.call_ok("event.publish", params).await {
            tracing::debug!(message = %error.message, "cannot publish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse_and_find_the_next_run() {
        let cron = schedule("*/15 * * * *").unwrap_or_else(|e| panic!("{}", e.message));
        let t = parse_time("2026-12-02T09:07:00Z").unwrap_or_else(|| panic!("a time"));
        let next = next_after(&cron, t).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(stamp(next), "2026-12-02T09:15:00.000Z");
        let error = schedule("every tuesday")
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(error.contains("minute hour day month weekday"), "{error}");
    }
}
