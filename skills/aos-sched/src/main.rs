//! `aos-sched`: scheduling policy over the kernel's compute gate, a system service.
//!
//! The kernel owns the mechanism: every model call takes a permit from its provider's
//! gate, waiting calls are admitted highest priority first (first come first served
//! within a priority, with aging), and `compute.before` may set the priority a call
//! waits at or hold it for a while. This service is the policy, decided in its
//! `compute.before` handler from memory (no I/O on the hot path):
//!
//! 1. **Budgets.** An agent over a token or cost budget of the current day or month
//!    (UTC, on the service's clock) is refused, with the budget, its limit, what was
//!    used and when it resets. Usage is counted from `compute.after` (its cost priced
//!    by the kernel from the provider's `prices`) and kept in SQLite, so it survives
//!    restarts.
//! 2. **Rate limits.** Per provider, at most `requestsPerMinute` calls and
//!    `tokensPerMinute` tokens in any window of `windowMs` (default one minute). A call
//!    counts from its admission until a window after it finished, so the provider never
//!    sees more than the limit in any window, however long calls wait in the gate. A
//!    call over the limit is held (`retryAfterMs`) until a slot frees, never refused.
//! 3. **Order.** The gate priority is `level × 2,000,000 + sub`, where `level` is the
//!    dispatch's static priority (its own, else its session's, else its agent's) and
//!    `sub` comes from the policy: `priority` — 0 (first come first served within a
//!    level); `fair-share` (the default) — minus the agent's model calls admitted in the
//!    last `fairShareWindowSeconds` per unit of weight, ×100, so the agent that had less
//!    goes first (stride scheduling); `deadline` — earliest deadline first (the
//!    dispatch's `deadlineAt`: its start plus `deadlineMs`, else the system timeout).
//!
//! `clock: manual` (tests) replaces the wall clock of budget periods by one that only
//! `aos-sched.tick` moves. Rate-limit windows always run on the monotonic clock.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aos_sdk::protocol::ErrorCode;
use aos_sdk::protocol::service::{CallerInfo, EventParams, HookSubscription, OpKindWire};
use aos_sdk::service::{OpError, Service, ServiceClient, Verdict};
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Width of one static priority level in gate priorities.
const LEVEL: i64 = 2_000_000;
/// Largest magnitude of a policy's term within a level.
const SUB: i64 = 999_999;
/// A call admitted longer ago than this without an end is forgotten.
const PENDING_LIMIT: Duration = Duration::from_secs(3_600);
/// Re-ask after this long when only unfinished calls fill a window.
const PENDING_RETRY_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Policy {
    Priority,
    FairShare,
    Deadline,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Limit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    month: Option<Limit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens_per_minute: Option<u64>,
    /// The window the limits hold over (default 60000 ms, one minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window_ms: Option<u64>,
}

impl RateLimit {
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.unwrap_or(60_000).max(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    policy: Policy,
    /// `system` or `manual` (moved only by `aos-sched.tick`).
    clock: String,
    fair_share_window_seconds: u64,
    /// Fair-share weight per agent id (default 1).
    weights: HashMap<String, f64>,
    /// Budget per agent id.
    budgets: HashMap<String, Budget>,
    /// Budget of agents without their own.
    default_budget: Option<Budget>,
    /// Rate limit per provider name.
    rate_limits: HashMap<String, RateLimit>,
}

/// Calls of one provider in its rate-limit window.
#[derive(Default)]
struct Lane {
    /// Admitted, not finished: dispatch id → admitted at.
    pending: HashMap<String, Instant>,
    /// Finished: when, and the tokens it used.
    done: VecDeque<(Instant, u64)>,
}

impl Lane {
    fn prune(&mut self, window: Duration, now: Instant) {
        while self
            .done
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            self.done.pop_front();
        }
        self.pending
            .retain(|_, since| now.duration_since(*since) < PENDING_LIMIT);
    }

    /// A call ended: it leaves the pending set and stays in the window as finished (a
    /// call this lane never admitted counts only when it used tokens).
    fn finish(&mut self, dispatch_id: &str, tokens: u64, now: Instant) {
        if self.pending.remove(dispatch_id).is_some() || tokens > 0 {
            self.done.push_back((now, tokens));
        }
    }
}

/// Used tokens and cost of one agent in one period.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    tokens: u64,
    cost_usd: f64,
}

#[derive(Default)]
struct State {
    policy: Option<Policy>,
    weights: HashMap<String, f64>,
    budgets: HashMap<String, Budget>,
    rate_limits: HashMap<String, RateLimit>,
    /// Model calls admitted per agent, for fair share.
    charges: HashMap<String, VecDeque<Instant>>,
    lanes: HashMap<String, Lane>,
    /// (agent, period) → used; periods `day:YYYY-MM-DD`, `month:YYYY-MM`.
    used: HashMap<(String, String), Used>,
    /// Held calls: dispatch id → (agent, provider, since).
    held: HashMap<String, (String, String, Instant)>,
    /// Decision times in microseconds, the newest 1024.
    decisions: VecDeque<u64>,
}

struct Sched {
    pool: SqlitePool,
    client: ServiceClient,
    config: Config,
    state: Mutex<State>,
    manual_now: Mutex<DateTime<Utc>>,
    /// Monotonic zero of deadline terms.
    started: DateTime<Utc>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage (agent_id TEXT NOT NULL, period TEXT NOT NULL,
        tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
        calls INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (agent_id, period))",
];

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-sched", 2, serve)
}

async fn serve() -> Result<(), String> {
    let skill_dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let text = std::fs::read_to_string(skill_dir.join("config.json"))
        .map_err(|e| format!("config.json: {e}"))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| {
        format!(
            "config.json: {e} (policy: priority, fair-share or deadline; clock: system or manual)"
        )
    })?;
    if !matches!(config.clock.as_str(), "system" | "manual") {
        return Err(format!(
            "config.json: `clock` is `{}`; accepted: system, manual",
            config.clock
        ));
    }
    if let Some((agent, w)) = config
        .weights
        .iter()
        .find(|(_, w)| w.is_nan() || **w <= 0.0)
    {
        return Err(format!(
            "config.json: weight of `{agent}` is {w}; weights must be greater than 0"
        ));
    }
    let data =
        std::env::var_os("AOS_DATA_DIR").map_or_else(|| skill_dir.join("data"), PathBuf::from);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let path = data.join("sched.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    for statement in SCHEMA {
        sqlx::query(*statement)
            .execute(&pool)
            .await
            .map_err(|e| format!("preparing {}: {e}", path.display()))?;
    }
    let service = Service::from_env("aos-sched");
    let sched = Arc::new(Sched {
        pool,
        client: service.client(),
        state: Mutex::new(State::default()),
        manual_now: Mutex::new(Utc::now()),
        started: Utc::now(),
        config,
    });
    sched.load().await?;
    tracing::info!(policy = ?sched.policy(), "aos-sched ready");
    macro_rules! op {
        ($service:expr, $name:literal, $kind:expr, $doc:literal, $method:ident) => {{
            let s = sched.clone();
            $service.on_op($name, $kind, $doc, move |params, caller| {
                let s = s.clone();
                async move { s.$method(&params, &caller).await }
            })
        }};
    }
    let (decide, after, ended) = (sched.clone(), sched.clone(), sched.clone());
    let service = service
        .on_hook_with(
            HookSubscription {
                name: "compute.before".into(),
                priority: Some(100),
                timeout_ms: None,
                interactive: false,
            },
            move |input, _output| {
                let s = decide.clone();
                async move { s.decide(&input) }
            },
        )
        .on_event("compute.after", move |event| {
            let s = after.clone();
            async move { s.record(&event).await }
        })
        .on_event("session.dispatch.after", move |event| {
            let s = ended.clone();
            async move { s.ended(&event) }
        });
    let service = op!(
        service,
        "status",
        OpKindWire::Query,
        "The scheduler's view: params {agentId?}; returns {policy, now, shares, budgets, rateLimits, held, queue, decisionUs}. Agents see their own shares and budgets.",
        status
    );
    let service = op!(
        service,
        "set",
        OpKindWire::Command,
        "Change policy (admin): params {policy?, agentId?|sessionId?, priority? (-1000..1000, on the agent or session), weight? (> 0), budget? ({day?, month?: {tokens?, costUsd?}} or null), provider?, rateLimit? ({requestsPerMinute?, tokensPerMinute?, windowMs?} or null)}; persisted.",
        set
    );
    let service = op!(
        service,
        "tick",
        OpKindWire::Command,
        "Manual clock only (config clock: manual): set the time budgets are counted on: params {now (RFC 3339, not earlier than the clock)}; returns {now}.",
        tick
    );
    service.run().await.map_err(|e| e.to_string())
}

fn db_error(e: sqlx::Error) -> OpError {
    OpError::new(
        ErrorCode::StorageUnavailable,
        format!("the scheduler's store failed: {e}"),
    )
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The periods `t` falls in, and when each ends.
fn periods(t: DateTime<Utc>) -> [(&'static str, String, DateTime<Utc>); 2] {
    let day = t.date_naive();
    let next_day = day.succ_opt().unwrap_or(day);
    let (y, m) = (day.year(), day.month());
    let next_month = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .unwrap_or(next_day);
    let midnight =
        |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
    [
        ("day", format!("day:{day}"), midnight(next_day)),
        (
            "month",
            format!("month:{y:04}-{m:02}"),
            midnight(next_month),
        ),
    ]
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.4}")
    }
}

impl Sched {
    fn now(&self) -> DateTime<Utc> {
        if self.config.clock == "manual" {
            *self.manual_now.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            Utc::now()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn policy(&self) -> Policy {
        self.lock().policy.unwrap_or(self.config.policy)
    }

    /// Settings changed with `set` over the config; usage of the current periods.
    async fn load(&self) -> Result<(), String> {
        let rows = sqlx::query("SELECT key, value FROM settings")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| format!("reading settings: {e}"))?;
        let mut state = State {
            weights: self.config.weights.clone(),
            budgets: self.config.budgets.clone(),
            rate_limits: self.config.rate_limits.clone(),
            ..State::default()
        };
        for row in rows {
            let (key, value): (String, String) = (row.get("key"), row.get("value"));
            let value: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
            apply_setting(&mut state, &key, value);
        }
        let rows = sqlx::query("SELECT agent_id, period, tokens, cost_usd FROM usage")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| format!("reading usage: {e}"))?;
        for row in rows {
            state.used.insert(
                (row.get("agent_id"), row.get("period")),
                Used {
                    tokens: row.get::<i64, _>("tokens").max(0) as u64,
                    cost_usd: row.get("cost_usd"),
                },
            );
        }
        *self.lock() = state;
        Ok(())
    }

    async fn save_setting(&self, key: &str, value: &Value) -> Result<(), OpError> {
        if value.is_null() {
            sqlx::query("DELETE FROM settings WHERE key = ?")
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        } else {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        }
        apply_setting(&mut self.lock(), key, value.clone());
        Ok(())
    }

    fn budget_of<'a>(&'a self, state: &'a State, agent: &str) -> Option<&'a Budget> {
        state
            .budgets
            .get(agent)
            .or(self.config.default_budget.as_ref())
    }

    /// The refusal for an agent over a budget, if it is.
    fn over_budget(&self, state: &State, agent: &str, now: DateTime<Utc>) -> Option<String> {
        let budget = self.budget_of(state, agent)?;
        for (name, key, resets) in periods(now) {
            let limit = if name == "day" {
                budget.day.as_ref()
            } else {
                budget.month.as_ref()
            };
            let Some(limit) = limit else { continue };
            let used = state
                .used
                .get(&(agent.to_owned(), key.clone()))
                .copied()
                .unwrap_or_default();
            let period = key.split_once(':').map_or("", |(_, p)| p);
            let adjective = if name == "day" { "daily" } else { "monthly" };
            if let Some(tokens) = limit.tokens
                && used.tokens >= tokens
            {
                return Some(format!(
                    "agent {agent} is over its {adjective} token budget: {} of {tokens} tokens used in {period} (UTC); it resets at {} (aos-sched.set raises it)",
                    used.tokens,
                    stamp(resets)
                ));
            }
            if let Some(cost) = limit.cost_usd
                && used.cost_usd >= cost
            {
                return Some(format!(
                    "agent {agent} is over its {adjective} cost budget: ${} of ${} used in {period} (UTC); it resets at {} (aos-sched.set raises it)",
                    number(used.cost_usd),
                    number(cost),
                    stamp(resets)
                ));
            }
        }
        None
    }

    /// `compute.before`: refuse, hold, or admit at a priority.
    fn decide(&self, input: &Value) -> Verdict {
        let started = Instant::now();
        let verdict = self.decide_inner(input);
        let mut state = self.lock();
        if state.decisions.len() == 1024 {
            state.decisions.pop_front();
        }
        state
            .decisions
            .push_back(started.elapsed().as_micros() as u64);
        verdict
    }

    fn decide_inner(&self, input: &Value) -> Verdict {
        let text = |field: &str| input.get(field).and_then(Value::as_str).unwrap_or_default();
        let (agent, dispatch, provider) = (text("agentId"), text("dispatchId"), text("provider"));
        let level = input
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .clamp(-1000, 1000);
        let wall = self.now();
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let policy = state.policy.unwrap_or(self.config.policy);
        if let Some(refusal) = self.over_budget(state, agent, wall) {
            state.held.remove(dispatch);
            return Verdict::Reject(refusal);
        }
        if let Some(limit) = state.rate_limits.get(provider).cloned() {
            let window = limit.window();
            let lane = state.lanes.entry(provider.to_owned()).or_default();
            lane.prune(window, now);
            let calls = lane.pending.len() + lane.done.len();
            let tokens: u64 = lane.done.iter().map(|(_, t)| t).sum();
            // When the oldest finished call leaves the window.
            let frees_in = || {
                lane.done.front().map_or(PENDING_RETRY_MS, |(t, _)| {
                    (window.saturating_sub(now.duration_since(*t)).as_millis() as u64 + 1).max(1)
                })
            };
            let full = match (limit.requests_per_minute, limit.tokens_per_minute) {
                (Some(rpm), _) if calls >= rpm as usize => Some(format!(
                    "provider {provider}: {calls} of {rpm} requests in the last {} ms",
                    window.as_millis()
                )),
                (_, Some(tpm)) if tokens >= tpm => Some(format!(
                    "provider {provider}: {tokens} of {tpm} tokens in the last {} ms",
                    window.as_millis()
                )),
                _ => None,
            };
            if let Some(reason) = full {
                let wait = frees_in();
                state
                    .held
                    .entry(dispatch.to_owned())
                    .or_insert_with(|| (agent.to_owned(), provider.to_owned(), now));
                return Verdict::AllowBecause(reason, Some(json!({"retryAfterMs": wait})));
            }
            lane.pending.insert(dispatch.to_owned(), now);
        }
        state.held.remove(dispatch);
        let sub = match policy {
            Policy::Priority => 0,
            Policy::FairShare => {
                let window = Duration::from_secs(self.config.fair_share_window_seconds.max(1));
                let weight = state.weights.get(agent).copied().unwrap_or(1.0);
                let charges = state.charges.entry(agent.to_owned()).or_default();
                while charges
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    charges.pop_front();
                }
                let had = charges.len() as f64;
                charges.push_back(now);
                -((had * 100.0 / weight).round() as i64).min(SUB)
            }
            Policy::Deadline => input
                .get("deadline")
                .and_then(Value::as_str)
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map_or(0, |deadline| {
                    let from_start = (deadline.with_timezone(&Utc) - self.started)
                        .num_seconds()
                        .clamp(0, SUB - 1);
                    SUB - from_start
                }),
        };
        if policy != Policy::FairShare {
            // Shares are shown in every policy.
            state
                .charges
                .entry(agent.to_owned())
                .or_default()
                .push_back(now);
        }
        Verdict::AllowWith(json!({"priority": level * LEVEL + sub}))
    }

    /// `compute.after`: usage into the budgets, the call out of its rate window.
    async fn record(&self, event: &EventParams) {
        let payload = &event.payload;
        let Some(agent) = payload.get("agentId").and_then(Value::as_str) else {
            return;
        };
        let usage = &payload["usage"];
        let prompt = usage["promptTokens"].as_u64().unwrap_or(0);
        let completion = usage["completionTokens"].as_u64().unwrap_or(0);
        let tokens = usage["totalTokens"].as_u64().unwrap_or(prompt + completion);
        // The kernel prices calls by the provider's `prices` (aoscb.json).
        let cost = usage["costUsd"].as_f64().unwrap_or(0.0);
        let provider = payload["provider"].as_str().unwrap_or_default();
        let dispatch = payload["dispatchId"].as_str().unwrap_or_default();
        let [(_, day, _), (_, month, _)] = periods(self.now());
        {
            let mut state = self.lock();
            if state.rate_limits.contains_key(provider) {
                state.lanes.entry(provider.to_owned()).or_default().finish(
                    dispatch,
                    tokens,
                    Instant::now(),
                );
            }
            for key in [&day, &month] {
                let used = state
                    .used
                    .entry((agent.to_owned(), key.clone()))
                    .or_default();
                used.tokens += tokens;
                used.cost_usd += cost;
            }
        }
        // Both periods in one statement: one write per model call.
        let written = sqlx::query(
            "INSERT INTO usage (agent_id, period, tokens, cost_usd, calls) VALUES (?1, ?2, ?4, ?5, 1), (?1, ?3, ?4, ?5, 1)
             ON CONFLICT (agent_id, period) DO UPDATE SET tokens = tokens + excluded.tokens,
             cost_usd = cost_usd + excluded.cost_usd, calls = calls + 1",
        )
        .bind(agent)
        .bind(&day)
        .bind(&month)
        .bind(tokens as i64)
        .bind(cost)
        .execute(&self.pool)
        .await;
        if let Err(error) = written {
            tracing::error!(agent, %error, "recording usage failed");
        }
    }

    /// `session.dispatch.after`: a call that failed or was interrupted leaves its
    /// window's pending set (counted as a request: it may have reached the provider).
    fn ended(&self, event: &EventParams) {
        let Some(dispatch) = event.payload.get("dispatchId").and_then(Value::as_str) else {
            return;
        };
        let now = Instant::now();
        let mut state = self.lock();
        state.held.remove(dispatch);
        for lane in state.lanes.values_mut() {
            lane.finish(dispatch, 0, now);
        }
    }

    async fn status(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["agentId"])?;
        let only = caller.agent_id.clone().or_else(|| {
            params
                .get("agentId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let running = self
            .client
            .call_ok("dispatch.list", json!({"status": "running", "limit": 500}))
            .await
            .map(|v| v["items"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let queue: Vec<Value> = running
            .iter()
            .filter(|d| !d["waiting"].is_null())
            .filter(|d| only.as_deref().is_none_or(|a| d["agentId"] == a))
            .map(|d| {
                json!({
                    "dispatchId": d["dispatchId"], "agentId": d["agentId"], "sessionId": d["sessionId"],
                    "priority": d["priority"], "provider": d["waiting"]["provider"],
                    "position": d["waiting"]["position"], "waitingMs": d["waiting"]["waitingMs"],
                })
            })
            .collect();
        let wall = self.now();
        let now = Instant::now();
        let window = Duration::from_secs(self.config.fair_share_window_seconds.max(1));
        let mut guard = self.lock();
        let state = &mut *guard;
        let policy = state.policy.unwrap_or(self.config.policy);
        let mut agents: Vec<String> = state
            .charges
            .keys()
            .chain(state.budgets.keys())
            .chain(state.used.keys().map(|(a, _)| a))
            .filter(|a| only.as_deref().is_none_or(|o| o == a.as_str()))
            .cloned()
            .collect();
        agents.sort();
        agents.dedup();
        let counts: HashMap<String, usize> = state
            .charges
            .iter_mut()
            .map(|(agent, charges)| {
                while charges
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    charges.pop_front();
                }
                (agent.clone(), charges.len())
            })
            .collect();
        let total: usize = counts.values().sum();
        let shares: Vec<Value> = agents
            .iter()
            .map(|agent| {
                let calls = counts.get(agent).copied().unwrap_or(0);
                json!({
                    "agentId": agent,
                    "weight": state.weights.get(agent).copied().unwrap_or(1.0),
                    "calls": calls,
                    "share": if total == 0 { 0.0 } else { calls as f64 / total as f64 },
                })
            })
            .collect();
        let budgets: Vec<Value> = agents
            .iter()
            .filter_map(|agent| {
                let budget = self.budget_of(state, agent)?;
                let periods: Vec<Value> = periods(wall)
                    .into_iter()
                    .filter_map(|(name, key, resets)| {
                        let limit = if name == "day" { budget.day.as_ref() } else { budget.month.as_ref() }?;
                        let used = state.used.get(&(agent.clone(), key)).copied().unwrap_or_default();
                        Some(json!({
                            "period": name, "limit": limit, "resetsAt": stamp(resets),
                            "used": {"tokens": used.tokens, "costUsd": used.cost_usd},
                            "over": limit.tokens.is_some_and(|t| used.tokens >= t) || limit.cost_usd.is_some_and(|c| used.cost_usd >= c),
                        }))
                    })
                    .collect();
                Some(json!({"agentId": agent, "periods": periods}))
            })
            .collect();
        let limits: Vec<(String, RateLimit)> = state
            .rate_limits
            .iter()
            .map(|(p, l)| (p.clone(), l.clone()))
            .collect();
        let rate_limits: Vec<Value> = limits
            .into_iter()
            .map(|(provider, limit)| {
                let lane = state.lanes.entry(provider.clone()).or_default();
                lane.prune(limit.window(), now);
                json!({
                    "provider": provider, "limit": limit,
                    "inWindow": lane.pending.len() + lane.done.len(),
                    "pending": lane.pending.len(),
                    "tokensInWindow": lane.done.iter().map(|(_, t)| t).sum::<u64>(),
                })
            })
            .collect();
        let held: Vec<Value> = state
            .held
            .iter()
            .filter(|(_, (a, _, _))| only.as_deref().is_none_or(|o| o == a))
            .map(|(d, (a, p, since))| {
                json!({"dispatchId": d, "agentId": a, "provider": p, "heldMs": now.duration_since(*since).as_millis() as u64})
            })
            .collect();
        let mut decisions: Vec<u64> = state.decisions.iter().copied().collect();
        decisions.sort_unstable();
        let pct = |q: f64| {
            decisions
                .get(((decisions.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        Ok(json!({
            "policy": policy,
            "clock": self.config.clock,
            "now": stamp(wall),
            "shares": shares,
            "budgets": budgets,
            "rateLimits": rate_limits,
            "held": held,
            "queue": queue,
            "decisionUs": {"count": decisions.len(), "p50": pct(0.5), "p99": pct(0.99)},
        }))
    }

    async fn set(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(
            params,
            &[
                "policy",
                "agentId",
                "sessionId",
                "priority",
                "weight",
                "budget",
                "provider",
                "rateLimit",
            ],
        )?;
        if caller.agent_id.is_some() || caller.session_id.is_some() {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                "only people (admin tokens) and services change scheduling; agents read aos-sched.status",
            ));
        }
        let agent = params.get("agentId").and_then(Value::as_str);
        let session = params.get("sessionId").and_then(Value::as_str);
        let mut changed = Vec::new();
        if let Some(policy) = params.get("policy") {
            let parsed: Policy = serde_json::from_value(policy.clone()).map_err(|_| {
                OpError::invalid(format!(
                    "`policy` is {policy}; accepted: priority, fair-share, deadline"
                ))
            })?;
            self.save_setting("policy", &json!(parsed)).await?;
            changed.push("policy");
        }
        if let Some(priority) = params.get("priority") {
            let Some(p) = priority.as_i64().filter(|p| (-1000..=1000).contains(p)) else {
                return Err(OpError::invalid(format!(
                    "`priority` is {priority}; accepted: an integer from -1000 to 1000"
                )));
            };
            let (op, target) = match (session, agent) {
                (Some(s), _) => ("session.update", json!({"sessionId": s, "priority": p})),
                (None, Some(a)) => ("agent.update", json!({"agentId": a, "priority": p})),
                (None, None) => {
                    return Err(OpError::invalid(
                        "`priority` needs an `agentId` or a `sessionId`",
                    ));
                }
            };
            self.client
                .call_ok(op, target)
                .await
                .map_err(|e| OpError::new(e.code, e.message))?;
            changed.push("priority");
        }
        if let Some(weight) = params.get("weight") {
            let (Some(agent), Some(w)) = (agent, weight.as_f64().filter(|w| *w > 0.0)) else {
                return Err(OpError::invalid(format!(
                    "`weight` is {weight}; accepted: a number greater than 0, with an `agentId`"
                )));
            };
            self.save_setting(&format!("weight:{agent}"), &json!(w))
                .await?;
            changed.push("weight");
        }
        if let Some(budget) = params.get("budget") {
            let Some(agent) = agent else {
                return Err(OpError::invalid("`budget` needs an `agentId`"));
            };
            if !budget.is_null() {
                serde_json::from_value::<Budget>(budget.clone()).map_err(|e| {
                    OpError::invalid(format!(
                        "`budget`: {e}; accepted: {{day?, month?: {{tokens?, costUsd?}}}} or null"
                    ))
                })?;
            }
            self.save_setting(&format!("budget:{agent}"), budget)
                .await?;
            changed.push("budget");
        }
        if let Some(limit) = params.get("rateLimit") {
            let Some(provider) = params.get("provider").and_then(Value::as_str) else {
                return Err(OpError::invalid("`rateLimit` needs a `provider`"));
            };
            if !limit.is_null() {
                serde_json::from_value::<RateLimit>(limit.clone()).map_err(|e| {
                    OpError::invalid(format!(
                        "`rateLimit`: {e}; accepted: {{requestsPerMinute?, tokensPerMinute?, windowMs?}} or null"
                    ))
                })?;
            }
            self.save_setting(&format!("rateLimit:{provider}"), limit)
                .await?;
            changed.push("rateLimit");
        }
        if changed.is_empty() {
            return Err(OpError::invalid(
                "nothing to change; accepted: policy, priority, weight, budget, rateLimit",
            ));
        }
        tracing::info!(?changed, by = caller.identity, "scheduling changed");
        Ok(json!({"changed": changed}))
    }

    async fn tick(&self, params: &Value, _caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["now"])?;
        if self.config.clock != "manual" {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "aos-sched.tick moves only the manual clock; this service runs on the system clock (config clock: system)",
            ));
        }
        let text = params
            .get("now")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let now = DateTime::parse_from_rfc3339(text)
            .map_err(|e| OpError::invalid(format!("`now` must be an RFC 3339 time: {e}")))?
            .with_timezone(&Utc);
        let mut clock = self.manual_now.lock().unwrap_or_else(|p| p.into_inner());
        if now < *clock {
            return Err(OpError::invalid(format!(
                "`now` ({}) is earlier than the clock ({}); the clock only moves forward",
                stamp(now),
                stamp(*clock)
            )));
        }
        *clock = now;
        Ok(json!({"now": stamp(now)}))
    }
}

fn apply_setting(state: &mut State, key: &str, value: Value) {
    let (kind, name) = key.split_once(':').unwrap_or((key, ""));
    match kind {
        "policy" => state.policy = serde_json::from_value(value).ok(),
        "weight" => match value.as_f64() {
            Some(w) => {
                state.weights.insert(name.to_owned(), w);
            }
            None => {
                state.weights.remove(name);
            }
        },
        "budget" => match serde_json::from_value::<Budget>(value) {
            Ok(b) => {
                state.budgets.insert(name.to_owned(), b);
            }
            Err(_) => {
                state.budgets.remove(name);
            }
        },
        "rateLimit" => match serde_json::from_value::<RateLimit>(value) {
            Ok(l) => {
                state.rate_limits.insert(name.to_owned(), l);
            }
            Err(_) => {
                state.rate_limits.remove(name);
            }
        },
        _ => tracing::warn!(key, "unknown setting ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_end_at_the_next_midnight_and_month() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        let [(_, day, day_end), (_, month, month_end)] = periods(t);
        assert_eq!(day, "day:2026-12-31");
        assert_eq!(stamp(day_end), "2027-01-01T00:00:00.000Z");
        assert_eq!(month, "month:2026-12");
        assert_eq!(stamp(month_end), "2027-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_lane_counts_a_call_until_a_window_after_it_finished() {
        let mut lane = Lane::default();
        let t0 = Instant::now();
        lane.pending.insert("d1".into(), t0);
        let window = Duration::from_millis(50);
        lane.prune(window, t0 + Duration::from_millis(100));
        assert_eq!(lane.pending.len(), 1, "an unfinished call stays counted");
        lane.finish("d1", 10, t0 + Duration::from_millis(100));
        assert!(
            lane.pending.is_empty(),
            "a finished call is no longer pending"
        );
        lane.prune(window, t0 + Duration::from_millis(120));
        assert_eq!(lane.done.len(), 1);
        lane.prune(window, t0 + Duration::from_millis(151));
        assert!(lane.done.is_empty());
    }
}
