//! `aos-guard`: command policy on `tool.before`.
//!
//! Every bash command is checked against the rules (the session's, the agent's, then
//! `rules.json`); the first match decides: `deny` refuses with the rule's name and
//! reason (the model sees it as the tool result), `allow` lets it run, `ask` holds the
//! command until a person decides through `aos-guard.decide` or the deadline passes
//! (then it is denied). Decisions carry the rule in their reason, which the kernel
//! writes to the RuntimeLog (`tool.admission` rows); asks and their outcomes are also
//! events (`skill.aos-guard.ask`, `skill.aos-guard.decided`) for UIs.

mod rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_sdk::protocol::service::{CallerInfo, HookSubscription, OpKindWire};
use aos_sdk::protocol::{ErrorCode, Timestamp};
use aos_sdk::service::{OpError, Service, ServiceClient, Verdict};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use rules::{Action, Decision, MAX_ASK_MS, Overrides, Policy, Rule, RulesFile};

struct Pending {
    info: Value,
    reply: oneshot::Sender<(bool, String, String)>,
}

struct Guard {
    client: ServiceClient,
    rules: Vec<Rule>,
    ask_timeout_ms: u64,
    workspace_only: bool,
    pending: Mutex<HashMap<String, Pending>>,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-guard", 1, serve)
}

fn load_rules() -> Result<RulesFile, String> {
    let dir = std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let path = dir.join("rules.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn serve() -> Result<(), String> {
    let file = load_rules()?;
    let rules = file
        .rules
        .into_iter()
        .map(|spec| Rule::compile(spec, "file"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("rules.json: {e}"))?;
    let service = Service::from_env("aos-guard");
    let guard = Arc::new(Guard {
        client: service.client(),
        rules,
        ask_timeout_ms: file.ask_timeout_ms.min(MAX_ASK_MS),
        workspace_only: file.workspace_only,
        pending: Mutex::new(HashMap::new()),
    });
    tracing::info!(rules = guard.rules.len(), "aos-guard ready");
    let (check, list, decide) = (guard.clone(), guard.clone(), guard.clone());
    service
        .on_hook_with(
            HookSubscription {
                name: "tool.before".into(),
                priority: Some(-100),
                // An `ask` may wait this long; the kernel fails closed after it.
                timeout_ms: Some(MAX_ASK_MS + 60_000),
                interactive: true,
            },
            move |input, output| {
                let guard = check.clone();
                async move { guard.check(&input, &output).await }
            },
        )
        .on_op(
            "pending",
            OpKindWire::Query,
            "Commands waiting for a decision, oldest first: [{id, agentId, sessionId, command, rule, reason, askedAt, deadline}]; params {sessionId?}.",
            move |params: Value, caller| {
                let guard = list.clone();
                async move { guard.list(&params, &caller) }
            },
        )
        .on_op(
            "decide",
            OpKindWire::Command,
            "Decide a waiting command: params {id, decision: allow|deny, reason?}. Only people (admin tokens) and services decide; agents cannot approve their own commands.",
            move |params: Value, caller| {
                let guard = decide.clone();
                async move { guard.decide(&params, &caller) }
            },
        )
        .run()
        .await
        .map_err(|e| e.to_string())
}

impl Guard {
    async fn overrides(
        &self,
        op: &str,
        id_field: &str,
        id: Option<&str>,
    ) -> Result<Overrides, String> {
        let Some(id) = id else {
            return Ok(Overrides::default());
        };
        let record = self
            .client
            .call_ok(op, json!({ id_field: id }))
            .await
            .map_err(|e| format!("reading {id}: {}", e.message))?;
        Overrides::from_metadata(record.get("metadata")).map_err(|e| format!("{id}: {e}"))
    }

    async fn check(&self, input: &Value, output: &Value) -> Verdict {
        let args = output.get("args").unwrap_or(&input["args"]);
        let Some(command) = args.get("command").and_then(Value::as_str) else {
            return Verdict::Allow;
        };
        let agent_id = input.get("agentId").and_then(Value::as_str);
        let session_id = input.get("sessionId").and_then(Value::as_str);
        // Read on every call (two cached reads in the kernel, in parallel), so a change
        // of an agent's or session's rules applies to the very next command.
        let (session, agent) = match tokio::join!(
            self.overrides("session.get", "sessionId", session_id),
            self.overrides("agent.get", "agentId", agent_id),
        ) {
            (Ok(s), Ok(a)) => (s, a),
            (Err(e), _) | (_, Err(e)) => {
                return Verdict::Reject(format!(
                    "aos-guard cannot read its configuration ({e}); the command is refused"
                ));
            }
        };
        let mut extra = Vec::new();
        for (overrides, source) in [(&session, "session"), (&agent, "agent")] {
            for spec in overrides.rules.clone() {
                match Rule::compile(spec, source) {
                    Ok(rule) => extra.push(rule),
                    Err(e) => {
                        return Verdict::Reject(format!(
                            "aos-guard: the {source}'s rules are invalid ({e}); the command is refused"
                        ));
                    }
                }
            }
        }
        let disabled: Vec<&String> = session.disable.iter().chain(&agent.disable).collect();
        let policy = Policy {
            rules: extra
                .iter()
                .chain(self.rules.iter().filter(|r| !disabled.contains(&&r.name)))
                .collect(),
            workspace_only: session
                .workspace_only
                .or(agent.workspace_only)
                .unwrap_or(self.workspace_only),
        };
        let workspace = input
            .get("workspace")
            .and_then(Value::as_str)
            .map(PathBuf::from);
        let cwd = match (&workspace, args.get("cwd").and_then(Value::as_str)) {
            (Some(ws), Some(dir)) => Some(ws.join(dir)),
            _ => None,
        };
        let decision = policy.decide(command, workspace.as_deref(), cwd.as_deref());
        let Some(rule) = decision.rule.clone() else {
            return Verdict::Allow;
        };
        tracing::info!(?decision.action, rule, session_id, command, "decided");
        match decision.action {
            Action::Allow => Verdict::AllowBecause(
                format!("allowed by aos-guard rule `{rule}`: {}", decision.reason),
                None,
            ),
            Action::Deny => Verdict::Reject(format!(
                "blocked by aos-guard rule `{rule}`: {}",
                decision.reason
            )),
            Action::Ask => self.ask(input, command, decision).await,
        }
    }

    async fn ask(&self, input: &Value, command: &str, decision: Decision) -> Verdict {
        let rule = decision.rule.clone().unwrap_or_default();
        let wait = decision
            .timeout_ms
            .unwrap_or(self.ask_timeout_ms)
            .min(MAX_ASK_MS);
        let id = format!("ask_{}", uuid::Uuid::now_v7().simple());
        let now = Timestamp::now();
        let deadline = Timestamp::from_millis(now.as_millis() + wait as i64);
        let info = json!({
            "id": id,
            "agentId": input.get("agentId"),
            "sessionId": input.get("sessionId"),
            "dispatchId": input.get("dispatchId"),
            "command": command,
            "rule": rule,
            "reason": decision.reason,
            "askedAt": now,
            "deadline": deadline,
        });
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Pending {
                    info: info.clone(),
                    reply: tx,
                },
            );
        self.publish("ask", input, info).await;
        let outcome = tokio::time::timeout(Duration::from_millis(wait), rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let (allowed, by, why) = match outcome {
            Ok(Ok(decided)) => decided,
            _ => (
                false,
                "deadline".to_owned(),
                format!("no decision within {} s", wait / 1000),
            ),
        };
        self.publish(
            "decided",
            input,
            json!({"id": id, "rule": rule, "command": command, "decision": if allowed { "allow" } else { "deny" }, "by": by, "reason": why}),
        )
        .await;
        if allowed {
            Verdict::AllowBecause(
                format!("aos-guard rule `{rule}` asked; allowed by {by}: {why}"),
                None,
            )
        } else {
            Verdict::Reject(format!(
                "aos-guard rule `{rule}` asked for approval; denied by {by}: {why}"
            ))
        }
    }

    async fn publish(&self, event: &str, input: &Value, payload: Value) {
        let mut params = json!({"name": format!("skill.aos-guard.{event}"), "payload": payload});
        if let Some(session) = input.get("sessionId").and_then(Value::as_str) {
            params["sessionId"] = json!(session);
        }
        if let Err(error) = self.client.call_ok("event.publish", params).await {
            tracing::warn!(event, message = %error.message, "cannot publish");
        }
    }

    fn list(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        if let Some(unknown) = params
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "sessionId"))
        {
            return Err(OpError::invalid(format!(
                "unknown field `{unknown}`; accepted: sessionId"
            )));
        }
        let wanted = match params.get("sessionId") {
            None | Some(Value::Null) => caller.session_id.clone(),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(OpError::invalid("`sessionId` must be a session id string")),
        };
        if let (Some(own), Some(w)) = (&caller.session_id, &wanted)
            && own != w
        {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                "a session token sees only its own session's waiting commands",
            ));
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut items: Vec<&Value> = pending
            .values()
            .map(|p| &p.info)
            .filter(|info| wanted.as_deref().is_none_or(|w| info["sessionId"] == w))
            .filter(|info| {
                caller
                    .agent_id
                    .as_deref()
                    .is_none_or(|a| info["agentId"] == a)
            })
            .collect();
        items.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(json!({"items": items}))
    }

    fn decide(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        if matches!(caller.kind.as_str(), "session" | "agent") {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                "agents cannot decide their own commands: a person decides with an admin token (the web UI or `aos call aos-guard.decide`)",
            ));
        }
        if let Some(unknown) = params.as_object().and_then(|o| {
            o.keys()
                .find(|k| !["id", "decision", "reason"].contains(&k.as_str()))
        }) {
            return Err(OpError::invalid(format!(
                "unknown field `{unknown}`; accepted: id, decision, reason"
            )));
        }
        let Some(id) = params.get("id").and_then(Value::as_str) else {
            return Err(OpError::invalid(
                "`id` (from aos-guard.pending) is required",
            ));
        };
        let allowed = match params.get("decision").and_then(Value::as_str) {
            Some("allow") => true,
            Some("deny") => false,
            _ => return Err(OpError::invalid("`decision` must be `allow` or `deny`")),
        };
        let reason = params
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or(if allowed { "approved" } else { "refused" })
            .to_owned();
        let Some(pending) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no command waits as `{id}` (decided already, or past its deadline)"),
            ));
        };
        let info = pending.info.clone();
        // The waiting hook may have just timed out; then the send finds no receiver.
        if pending
            .reply
            .send((allowed, caller.identity.clone(), reason))
            .is_err()
        {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("`{id}` passed its deadline while being decided"),
            ));
        }
        Ok(
            json!({"id": id, "decision": if allowed { "allow" } else { "deny" }, "command": info["command"], "sessionId": info["sessionId"]}),
        )
    }
}
