//! How control blocks, messages and records map to table rows, shared by every SQL
//! backend so they store and read the same columns the same way.
//!
//! A control block is a JSON body plus the columns the store filters on or changes
//! atomically (status, revision, `last_seq`, usage counters); on read the columns win
//! over whatever the body says, because appends and usage updates change only the
//! columns.

use aos_sdk::protocol::{
    AgentCb, AgentStatus, ContentInfo, LogEntry, Message, Origin, Part, Role, SessionCb,
    SessionPhase, SessionStatus, Timestamp, TokenInfo, TokenScope, Usage,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use super::{StoreError, StoreResult, TokenRecord};

/// Typed column access with errors that name the column, for any backend's rows.
pub(super) trait StoreRow {
    fn text(&self, name: &str) -> StoreResult<String>;
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>>;
    fn int(&self, name: &str) -> StoreResult<i64>;
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>>;

    /// A counter column (seq, revision, tokens): negative values read as zero.
    fn count(&self, name: &str) -> StoreResult<u64> {
        Ok(self.int(name)?.max(0) as u64)
    }

    fn timestamp(&self, name: &str) -> StoreResult<Timestamp> {
        Ok(Timestamp::from_millis(self.int(name)?))
    }
}

fn column_error(name: &str, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        what: format!("column `{name}`"),
        message: error.to_string(),
    }
}

macro_rules! store_row {
    ($row:ty) => {
        impl StoreRow for $row {
            fn text(&self, name: &str) -> StoreResult<String> {
                self.try_get(name).map_err(|e| column_error(name, e))
            }
            fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
                self.try_get(name).map_err(|e| column_error(name, e))
            }
            fn int(&self, name: &str) -> StoreResult<i64> {
                self.try_get(name).map_err(|e| column_error(name, e))
            }
            fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
                self.try_get(name).map_err(|e| column_error(name, e))
            }
        }
    };
}

store_row!(sqlx::sqlite::SqliteRow);
store_row!(sqlx::postgres::PgRow);

pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

pub(super) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

pub(super) fn to_json<T: Serialize>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        message: format!("cannot encode: {e}"),
    })
}

pub(super) fn from_json<T: DeserializeOwned>(what: &str, id: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: format!("{what} `{id}`"),
        message: e.to_string(),
    })
}

/// Cost is stored as whole micro-dollars so sums are exact.
pub(super) fn cost_micros(usage: &Usage) -> i64 {
    (usage.cost_usd * 1_000_000.0).round() as i64
}

pub(super) fn usage_from_row(row: &impl StoreRow) -> StoreResult<Usage> {
    let prompt = row.count("prompt_tokens")?;
    let completion = row.count("completion_tokens")?;
    Ok(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cost_usd: row.int("cost_micros")? as f64 / 1_000_000.0,
        turns: row.count("turns")?,
        dispatches: row.count("dispatches")?,
    })
}

pub(super) fn agent_from_row(row: &impl StoreRow) -> StoreResult<AgentCb> {
    let id = row.text("agent_id")?;
    let mut agent: AgentCb = from_json("agent", &id, &row.text("body")?)?;
    agent.revision = row.count("revision")?;
    agent.updated_at = row.timestamp("updated_at")?;
    agent.usage = usage_from_row(row)?;
    Ok(agent)
}

pub(super) fn session_from_row(row: &impl StoreRow) -> StoreResult<SessionCb> {
    let id = row.text("session_id")?;
    let mut session: SessionCb = from_json("session", &id, &row.text("body")?)?;
    session.revision = row.count("revision")?;
    session.last_seq = row.count("last_seq")?;
    session.updated_at = row.timestamp("updated_at")?;
    session.usage = usage_from_row(row)?;
    Ok(session)
}

pub(super) fn message_from_row(row: &impl StoreRow) -> StoreResult<Message> {
    let id = row.text("message_id")?;
    let role_text = row.text("role")?;
    let origin_text = row.text("origin")?;
    let corrupt = |message: String| StoreError::Corrupt {
        what: format!("message `{id}`"),
        message,
    };
    let role = Role::from_wire(&role_text).ok_or_else(|| corrupt(format!("role `{role_text}`")))?;
    let origin =
        Origin::parse(&origin_text).ok_or_else(|| corrupt(format!("origin `{origin_text}`")))?;
    let parts: Vec<Part> = from_json("message parts", &id, &row.text("parts")?)?;
    Ok(Message {
        session_id: row.text("session_id")?,
        seq: row.count("seq")?,
        role,
        origin,
        parts,
        dispatch_id: row.opt_text("dispatch_id")?,
        created_at: row.timestamp("created_at")?,
        id,
    })
}

pub(super) fn content_info_from_row(row: &impl StoreRow) -> StoreResult<ContentInfo> {
    Ok(ContentInfo {
        content_id: row.text("content_id")?,
        session_id: row.text("session_id")?,
        agent_id: row.text("agent_id")?,
        size_chars: row.count("size_chars")?,
        line_count: row.count("line_count")?,
        created_by: row.text("created_by")?,
        created_at: row.timestamp("created_at")?,
    })
}

pub(super) fn log_from_row(row: &impl StoreRow) -> StoreResult<LogEntry> {
    let id = row.text("log_id")?;
    let targets = row.opt_text("targets")?;
    let data = row.opt_text("data")?;
    Ok(LogEntry {
        seq: row.count("seq")?,
        ts: row.timestamp("ts")?,
        caller: row.text("caller")?,
        op: row.text("op")?,
        agent_id: row.opt_text("agent_id")?,
        session_id: row.opt_text("session_id")?,
        outcome: row.text("outcome")?,
        duration_us: row.count("duration_us")?,
        targets: targets
            .map(|t| from_json("log targets", &id, &t))
            .transpose()?,
        data: data.map(|d| from_json("log data", &id, &d)).transpose()?,
        id,
    })
}

pub(super) fn token_from_row(row: &impl StoreRow) -> StoreResult<TokenRecord> {
    let token_id = row.text("token_id")?;
    let scope: TokenScope = from_json("token scope", &token_id, &row.text("scope")?)?;
    Ok(TokenRecord {
        secret_hash: row.text("secret_hash")?,
        info: TokenInfo {
            scope,
            label: row.opt_text("label")?,
            created_by: row.text("created_by")?,
            created_at: row.timestamp("created_at")?,
            expires_at: row.opt_int("expires_at")?.map(Timestamp::from_millis),
            revoked_at: row.opt_int("revoked_at")?.map(Timestamp::from_millis),
            token_id,
        },
    })
}

pub(super) fn status_str(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Active => "active",
        AgentStatus::Archived => "archived",
    }
}

pub(super) fn session_status_str(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::Initializing => "initializing",
        SessionStatus::Ready => "ready",
        SessionStatus::Archived => "archived",
    }
}

pub(super) fn phase_str(phase: SessionPhase) -> &'static str {
    match phase {
        SessionPhase::Bootstrapping => "bootstrapping",
        SessionPhase::Idle => "idle",
        SessionPhase::Dispatched => "dispatched",
        SessionPhase::Compacting => "compacting",
    }
}

/// A page size as bound to `LIMIT`: at least one row, at most 10 000.
pub(super) fn limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 10_000))
}

/// A `u64` bound as a BIGINT: values past `i64::MAX` saturate.
pub(super) fn bigint(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}
