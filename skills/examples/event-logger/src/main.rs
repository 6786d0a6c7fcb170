//! `event-logger`: an example skill service written with the Rust SDK. It keeps the
//! newest events it is sent and answers `event-logger.recent {limit?, name?}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aos_sdk::protocol::name_matches;
use aos_sdk::protocol::service::{EventParams, OpKindWire};
use aos_sdk::service::{OpError, Service};
use serde_json::{Value, json};

const KEEP: usize = 500;

#[derive(Default)]
struct Log {
    events: VecDeque<EventParams>,
    seen: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // Locked only to push or copy out; never across an `.await`.
    let log = Arc::new(Mutex::new(Log::default()));
    let record = |log: Arc<Mutex<Log>>| {
        move |event: EventParams| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if log.events.len() == KEEP {
                    log.events.pop_front();
                }
                log.events.push_back(event);
                log.seen += 1;
            }
        }
    };
    let reader = log.clone();
    let service = Service::from_env("event-logger")
        .on_event("session.*", record(log.clone()))
        .on_event("skill.*", record(log.clone()))
        .on_event("service.*", record(log.clone()))
        .on_op(
            "recent",
            OpKindWire::Query,
            "The newest events this service received, newest last; params {limit? (1-500, default 50), name? (pattern)}.",
            move |params: Value, _caller| {
                let log = reader.clone();
                async move { recent(&log, &params) }
            },
        );
    match service.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("event-logger: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn recent(log: &Mutex<Log>, params: &Value) -> Result<Value, OpError> {
    let limit = match params.get("limit") {
        None => 50,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=500) => n as usize,
            _ => return Err(OpError::invalid("`limit` must be an integer from 1 to 500")),
        },
    };
    let pattern = match params.get("name") {
        None => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => {
            return Err(OpError::invalid(
                "`name` must be a string pattern such as `session.*`",
            ));
        }
    };
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    let matching: Vec<&EventParams> = log
        .events
        .iter()
        .filter(|e| pattern.as_deref().is_none_or(|p| name_matches(p, &e.name)))
        .collect();
    let start = matching.len().saturating_sub(limit);
    Ok(json!({"events": matching[start..], "seen": log.seen}))
}
