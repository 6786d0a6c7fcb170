//! `aos-memory`: long-term memory for agents, a system service.
//!
//! Facts live in SQLite in the service's data directory (`memory.db`, WAL,
//! `synchronous=FULL`: a save is acknowledged only once it is on disk), indexed with FTS5
//! and ranked by BM25 — or, when the kernel runs on PostgreSQL, in the kernel's database
//! (`store.rs`). A fact is `private` (its agent only) or `shared` (every agent of
//! this AOS); access is checked on every call from the caller the kernel names.
//! Operations: `aos-memory.save`, `.search`, `.list`, `.forget`. On
//! `session.system.transform` the few facts most relevant to the user's message are
//! offered to the model, with their ids, under a character budget — nothing when
//! nothing matches. Common English words are not searched for, so a message that
//! shares only them with a fact does not match it.
//!
//! A store that fails its integrity check, or that is missing while the data directory
//! says one was created, stops the service with the reason; it is never silently
//! recreated empty.

mod store;

use std::path::PathBuf;
use std::sync::Arc;

use aos_sdk::protocol::service::{CallerInfo, HookSubscription, OpKindWire};
use aos_sdk::protocol::{ErrorCode, Timestamp};
use aos_sdk::service::{OpError, Service, Verdict};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{Fact, Facts, NewFact};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    /// Facts offered to the model per turn at most.
    offer_limit: u32,
    /// Characters of offered facts per turn at most.
    offer_chars: usize,
    /// Longest fact accepted.
    max_fact_chars: usize,
}

struct Memory {
    facts: Facts,
    config: Config,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-memory", 2, serve)
}

async fn serve() -> Result<(), String> {
    let skill_dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config: Config = serde_json::from_str(
        &std::fs::read_to_string(skill_dir.join("config.json"))
            .map_err(|e| format!("config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    let data =
        std::env::var_os("AOS_DATA_DIR").map_or_else(|| skill_dir.join("data"), PathBuf::from);
    let database_url = std::env::var("AOS_SKILL_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let facts = Facts::open(&data, database_url.as_deref()).await?;
    tracing::info!(backend = facts.backend(), "aos-memory store open");
    let memory = Arc::new(Memory { facts, config });
    let (save, search, list, forget, offer) = (
        memory.clone(),
        memory.clone(),
        memory.clone(),
        memory.clone(),
        memory.clone(),
    );
    Service::from_env("aos-memory")
        .on_op(
            "save",
            OpKindWire::Command,
            "Save a fact: params {text, tags? (list of words), scope? (private|shared, default private), agentId? (admin and services only)}; returns {id, scope}.",
            move |params, caller| {
                let m = save.clone();
                async move { m.save(&params, &caller).await }
            },
        )
        .on_op(
            "search",
            OpKindWire::Query,
            "Facts matching any of the words (common English words ignored), best first (BM25): params {query, limit? (1-50, default 5)}; returns {items: [{id, text, tags, scope, agentId, createdAt, rank}]}. Callers see their agent's private facts and all shared ones.",
            move |params, caller| {
                let m = search.clone();
                async move { m.search(&params, &caller).await }
            },
        )
        .on_op(
            "list",
            OpKindWire::Query,
            "The caller's facts and shared ones, newest first: params {limit? (1-500, default 50), scope? (private|shared)}.",
            move |params, caller| {
                let m = list.clone();
                async move { m.list(&params, &caller).await }
            },
        )
        .on_op(
            "forget",
            OpKindWire::Command,
            "Delete a fact: params {id}. Only its agent (or admin) may.",
            move |params, caller| {
                let m = forget.clone();
                async move { m.forget(&params, &caller).await }
            },
        )
        .on_hook_with(
            HookSubscription {
                name: "session.system.transform".into(),
                priority: None,
                timeout_ms: Some(2000),
                interactive: false,
            },
            move |input, output| {
                let m = offer.clone();
                async move { m.offer(&input, output).await }
            },
        )
        .run()
        .await
        .map_err(|e| e.to_string())
}

/// The agent whose memory a call uses: the caller's own, or (admin and services) the
/// one named in `agentId`; `None` for an unconfined caller that names none.
fn agent_of(params: &Value, caller: &CallerInfo) -> Result<Option<String>, OpError> {
    let named = params
        .get("agentId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (&caller.agent_id, named) {
        (Some(own), Some(named)) if own != &named => Err(OpError::new(
            ErrorCode::PermissionDenied,
            format!("a token of agent {own} cannot use the memory of {named}"),
        )),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, named) => Ok(named),
    }
}

fn db_error(e: sqlx::Error) -> OpError {
    OpError::new(
        ErrorCode::StorageUnavailable,
        format!("the memory store failed: {e}"),
    )
}

/// English words too common to say what a message is about: a query made only of
/// them matches nothing, so "what is the plan" looks for "plan" alone and "hello
/// there" for nothing.
const STOPWORDS: &str = "\
    about above after again against all also am an and any anything are as at be \
    because been before being below between both but by can could did do does doing \
    done down during each else ever every few for from further get give go got had \
    has have having he hello her here hers herself hey hi him himself his how if in \
    into is it its itself just know let like may me might more most much must my \
    myself need no nor not now of off ok okay on once only or other our ours \
    ourselves out over own please same shall she should so some something such tell \
    than thank thanks that the their theirs them themselves then there these they \
    thing things this those through to too under until up us very want was we were \
    what when where which while who whom why will with would yes you your yours \
    yourself yourselves";

fn is_stopword(word: &str) -> bool {
    STOPWORDS.split_whitespace().any(|w| w == word)
}

/// The words of `text` to search for: letters and digits only (so no query syntax of
/// either backend leaks through), lowercased, without words of one letter and
/// stopwords, at most 32. Empty when nothing is left, so a message of common words
/// matches no fact.
fn search_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !is_stopword(w))
    {
        if !words.contains(&word) && words.len() < 32 {
            words.push(word);
        }
    }
    words
}

fn fact_json(fact: &Fact) -> Value {
    let mut v = json!({
        "id": fact.id,
        "agentId": fact.agent_id,
        "scope": fact.scope,
        "text": fact.text,
        "tags": fact.tags.split_whitespace().collect::<Vec<_>>(),
        "createdAt": fact.created_at,
    });
    if let Some(rank) = fact.rank {
        v["rank"] = json!(rank);
    }
    v
}

impl Memory {
    async fn save(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["text", "tags", "scope", "agentId"])?;
        let Some(agent) = agent_of(params, caller)? else {
            return Err(OpError::invalid(
                "`agentId` is required for callers that are not an agent",
            ));
        };
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        if text.is_empty() || text.chars().count() > self.config.max_fact_chars {
            return Err(OpError::invalid(format!(
                "`text` must be 1 to {} characters",
                self.config.max_fact_chars
            )));
        }
        let scope = match params
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("private")
        {
            s @ ("private" | "shared") => s,
            other => {
                return Err(OpError::invalid(format!(
                    "`scope` is `{other}`; accepted: private, shared"
                )));
            }
        };
        let tags = match params.get("tags") {
            None | Some(Value::Null) => String::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|t| t.trim().to_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
            Some(_) => return Err(OpError::invalid("`tags` must be a list of words")),
        };
        let id = format!("mem_{}", uuid::Uuid::now_v7().simple());
        self.facts
            .insert(&NewFact {
                id: &id,
                agent_id: &agent,
                scope,
                text,
                tags: &tags,
                session_id: caller.session_id.as_deref(),
                created_at: &Timestamp::now().to_string(),
            })
            .await
            .map_err(db_error)?;
        Ok(json!({"id": id, "scope": scope, "agentId": agent}))
    }

    /// Facts matching `query` that `agent` may see (all of them for `None`).
    async fn matching(
        &self,
        query: &str,
        agent: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Value>, OpError> {
        let found = self
            .facts
            .matching(&search_words(query), agent, limit)
            .await
            .map_err(db_error)?;
        Ok(found.iter().map(fact_json).collect())
    }

    async fn search(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["query", "limit", "agentId"])?;
        let agent = agent_of(params, caller)?;
        let query = params
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if query.trim().is_empty() {
            return Err(OpError::invalid("`query` (words to look for) is required"));
        }
        let limit = match params.get("limit") {
            None => 5,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=50) => n as u32,
                _ => return Err(OpError::invalid("`limit` must be 1 to 50")),
            },
        };
        Ok(json!({"items": self.matching(query, agent.as_deref(), limit).await?}))
    }

    async fn list(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["limit", "scope", "agentId"])?;
        let agent = agent_of(params, caller)?;
        let limit = match params.get("limit") {
            None => 50,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=500) => n as i64,
                _ => return Err(OpError::invalid("`limit` must be 1 to 500")),
            },
        };
        let scope = params.get("scope").and_then(Value::as_str);
        if let Some(s) = scope
            && !matches!(s, "private" | "shared")
        {
            return Err(OpError::invalid(format!(
                "`scope` is `{s}`; accepted: private, shared"
            )));
        }
        let facts = self
            .facts
            .list(agent.as_deref(), scope, limit)
            .await
            .map_err(db_error)?;
        Ok(json!({"items": facts.iter().map(fact_json).collect::<Vec<_>>()}))
    }

    async fn forget(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["id"])?;
        let Some(id) = params.get("id").and_then(Value::as_str) else {
            return Err(OpError::invalid(
                "`id` (a mem_… id from memory list or search) is required",
            ));
        };
        let owner = self.facts.owner(id).await.map_err(db_error)?;
        let Some(owner) = owner else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no memory `{id}`"),
            ));
        };
        if caller.agent_id.as_deref().is_some_and(|own| own != owner) {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!("`{id}` belongs to agent {owner}; only it may forget it"),
            ));
        }
        self.facts.delete(id).await.map_err(db_error)?;
        Ok(json!({"id": id, "forgotten": true}))
    }

    /// `session.system.transform`: the most relevant facts under the budget, appended
    /// to the system prompt.
    async fn offer(&self, input: &Value, output: Value) -> Verdict {
        let (Some(agent), Some(message)) = (
            input.get("agentId").and_then(Value::as_str),
            input.get("userMessage").and_then(Value::as_str),
        ) else {
            return Verdict::Keep;
        };
        let found = match self
            .matching(message, Some(agent), self.config.offer_limit)
            .await
        {
            Ok(found) if !found.is_empty() => found,
            Ok(_) => return Verdict::Keep,
            Err(error) => {
                tracing::warn!(message = %error.message, "cannot search memory for the prompt");
                return Verdict::Keep;
            }
        };
        let mut block = String::from(
            "\n\nFrom your memory (may be relevant; cite by id, `memory forget <id>` removes a wrong one):",
        );
        let mut used = 0;
        for fact in &found {
            let line = format!(
                "\n- [{}] {}",
                fact["id"].as_str().unwrap_or(""),
                fact["text"].as_str().unwrap_or("")
            );
            // A fact too long for what is left gives way to shorter, less relevant ones.
            if used + line.chars().count() > self.config.offer_chars {
                continue;
            }
            used += line.chars().count();
            block.push_str(&line);
        }
        if used == 0 {
            return Verdict::Keep;
        }
        let system = output
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Verdict::Output(json!({"system": format!("{system}{block}")}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_letters_and_digits_so_no_query_syntax_leaks() {
        assert_eq!(
            search_words("staging DB? (NEAR) a|b !x"),
            ["staging", "db", "near"]
        );
        assert!(search_words("a ! ?").is_empty());
    }

    #[test]
    fn common_words_are_not_searched_for() {
        assert_eq!(search_words("What is the plan for the plan?"), ["plan"]);
        assert!(search_words("hello there, how are you?").is_empty());
    }

    #[test]
    fn stopwords_are_lowercase_words() {
        assert!(
            STOPWORDS
                .split_whitespace()
                .all(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_lowercase()))
        );
    }
}
