//! The hook engine: who listens to what, in which order, and what happens when a
//! handler is slow, broken or says no.
//!
//! Order: owner level system → agent → session, then `priority` (lower first), then
//! registration order. Admission chains stop at the first reject and fail closed on
//! timeout or error; transform chains pass each output on and skip a failed handler;
//! both run every handler under its own deadline. When nobody listens, nothing is
//! serialized: callers pass a closure that builds the hook data only on demand.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aos_sdk::protocol::{HookRegistration, OwnerType};
use async_trait::async_trait;
use serde_json::{Value, json};

use super::catalog::{Admission, HookClass, HookRef, Transform};
use crate::events::EventBus;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5_000);
pub const MAX_TIMEOUT: Duration = Duration::from_millis(60_000);
pub const INTERACTIVE_MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

/// Answers hook calls for one registration (a service connection, or an in-process
/// handler in tests).
#[async_trait]
pub trait HookHandler: Send + Sync + fmt::Debug {
    /// Returns the handler's reply as sent on the wire: admission
    /// `{action, reason?, output?}`, transform `{output?}`. `Err` means the handler
    /// failed (crashed, disconnected, protocol error) and carries why.
    async fn call(&self, hook: &str, input: &Value, output: &Value) -> Result<Value, String>;
}

/// Which level registered a hook; decides where it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOwner {
    /// Fires for every operation.
    System,
    /// Fires for operations on this agent and its sessions.
    Agent { agent_id: String },
    /// Fires for operations on this session.
    Session {
        agent_id: String,
        session_id: String,
    },
}

impl HookOwner {
    pub fn owner_type(&self) -> OwnerType {
        match self {
            HookOwner::System => OwnerType::System,
            HookOwner::Agent { .. } => OwnerType::Agent,
            HookOwner::Session { .. } => OwnerType::Session,
        }
    }

    pub fn owner_id(&self) -> Option<&str> {
        match self {
            HookOwner::System => None,
            HookOwner::Agent { agent_id } => Some(agent_id),
            HookOwner::Session { session_id, .. } => Some(session_id),
        }
    }

    fn applies_to(&self, scope: HookScope<'_>) -> bool {
        match self {
            HookOwner::System => true,
            HookOwner::Agent { agent_id } => scope.agent_id == Some(agent_id.as_str()),
            HookOwner::Session { session_id, .. } => scope.session_id == Some(session_id.as_str()),
        }
    }
}

/// The agent and session an operation concerns, when there are any.
#[derive(Debug, Clone, Copy, Default)]
pub struct HookScope<'a> {
    pub agent_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

impl<'a> HookScope<'a> {
    pub fn session(agent_id: &'a str, session_id: &'a str) -> Self {
        Self {
            agent_id: Some(agent_id),
            session_id: Some(session_id),
        }
    }

    pub fn agent(agent_id: &'a str) -> Self {
        Self {
            agent_id: Some(agent_id),
            session_id: None,
        }
    }
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub hook: String,
    pub skill: String,
    /// Groups registrations for removal when the service goes away.
    pub service_id: String,
    pub owner: HookOwner,
    pub priority: i32,
    pub timeout: Duration,
    /// Waits for a person (allows timeouts up to an hour).
    pub interactive: bool,
    pub handler: Arc<dyn HookHandler>,
}

#[derive(Debug)]
struct Registration {
    hook: HookRef,
    skill: String,
    service_id: String,
    owner: HookOwner,
    priority: i32,
    timeout: Duration,
    handler: Arc<dyn HookHandler>,
    seq: u64,
}

impl Registration {
    fn sort_key(&self) -> (OwnerType, i32, u64) {
        (self.owner.owner_type(), self.priority, self.seq)
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("unknown hook `{0}`; `aos hooks` lists the catalogue")]
    Unknown(String),
    #[error("`{hook}` is an event: subscribe to it instead of registering a handler")]
    IsEvent { hook: String },
    #[error(
        "permission denied: a {owner}-owned service cannot register `{hook}` (allowed for: {allowed})"
    )]
    OwnerNotAllowed {
        hook: String,
        owner: &'static str,
        allowed: String,
    },
    #[error("timeout {requested_ms} ms for `{hook}` is above the limit of {limit_ms} ms")]
    TimeoutTooLong {
        hook: String,
        requested_ms: u64,
        limit_ms: u64,
    },
}

/// An admission chain said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{hook}` rejected by {skill}: {reason}")]
pub struct HookRejection {
    pub hook: &'static str,
    pub skill: String,
    pub reason: String,
}

/// Registered handlers, by hook name. Cheap to read concurrently.
pub struct HookEngine {
    // Each entry is an immutable, sorted list replaced wholesale on change, so a call
    // clones one `Arc` under the read lock and never holds the lock across an `.await`.
    table: RwLock<HashMap<&'static str, Arc<Vec<Arc<Registration>>>>>,
    next_seq: AtomicU64,
    events: Arc<EventBus>,
}

impl fmt::Debug for HookEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookEngine").finish_non_exhaustive()
    }
}

impl HookEngine {
    /// An engine that reports handler failures as `service.error` events on `events`.
    pub fn new(events: Arc<EventBus>) -> Self {
        Self {
            table: RwLock::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            events,
        }
    }

    /// Adds a registration after checking the hook exists, is not an event, may be
    /// registered by this owner level, and has an allowed timeout.
    pub fn register(&self, request: NewRegistration) -> Result<(), RegisterError> {
        let hook = HookRef::lookup(&request.hook)
            .ok_or_else(|| RegisterError::Unknown(request.hook.clone()))?;
        let spec = hook.spec();
        if spec.class == HookClass::Event {
            return Err(RegisterError::IsEvent {
                hook: request.hook.clone(),
            });
        }
        let owner_type = request.owner.owner_type();
        if !spec.owners.contains(&owner_type) {
            return Err(RegisterError::OwnerNotAllowed {
                hook: request.hook.clone(),
                owner: owner_type.as_str(),
                allowed: spec
                    .owners
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let limit = if request.interactive {
            INTERACTIVE_MAX_TIMEOUT
        } else {
            MAX_TIMEOUT
        };
        if request.timeout > limit {
            return Err(RegisterError::TimeoutTooLong {
                hook: request.hook.clone(),
                requested_ms: request.timeout.as_millis() as u64,
                limit_ms: limit.as_millis() as u64,
            });
        }
        let registration = Arc::new(Registration {
            hook,
            skill: request.skill,
            service_id: request.service_id,
            owner: request.owner,
            priority: request.priority,
            timeout: request.timeout,
            handler: request.handler,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        });
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = table
            .get(spec.name)
            .map(|l| l.as_ref().clone())
            .unwrap_or_default();
        list.push(registration);
        list.sort_by_key(|r| r.sort_key());
        table.insert(spec.name, Arc::new(list));
        Ok(())
    }

    /// Removes every registration of a service.
    pub fn unregister_service(&self, service_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.retain(|_, list| {
            if list.iter().any(|r| r.service_id == service_id) {
                *list = Arc::new(
                    list.iter()
                        .filter(|r| r.service_id != service_id)
                        .cloned()
                        .collect(),
                );
            }
            !list.is_empty()
        });
    }

    /// Registrations in call order, optionally of one hook.
    pub fn registrations(&self, hook: Option<&str>) -> Vec<HookRegistration> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = table
            .iter()
            .filter(|(name, _)| hook.is_none_or(|h| h == **name))
            .flat_map(|(_, list)| list.iter().cloned())
            .collect();
        out.sort_by(|a, b| {
            a.hook
                .spec()
                .name
                .cmp(b.hook.spec().name)
                .then(a.sort_key().cmp(&b.sort_key()))
        });
        out.iter()
            .map(|r| HookRegistration {
                hook: r.hook.spec().name.to_owned(),
                class: r.hook.spec().class.as_str().to_owned(),
                skill: r.skill.clone(),
                owner_type: r.owner.owner_type(),
                owner_id: r.owner.owner_id().map(str::to_owned),
                priority: r.priority,
                timeout_ms: r.timeout.as_millis() as u64,
            })
            .collect()
    }

    /// True when someone listens to `hook` for this scope.
    pub fn is_listened(&self, hook: &str, scope: HookScope<'_>) -> bool {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .get(hook)
            .is_some_and(|list| list.iter().any(|r| r.owner.applies_to(scope)))
    }

    fn listeners(&self, hook: &str, scope: HookScope<'_>) -> Option<Vec<Arc<Registration>>> {
        let list = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            table.get(hook)?.clone()
        };
        let applicable: Vec<_> = list
            .iter()
            .filter(|r| r.owner.applies_to(scope))
            .cloned()
            .collect();
        (!applicable.is_empty()).then_some(applicable)
    }

    /// Runs an admission chain. `build` makes `(input, output)` and is called only when
    /// someone listens. Returns `Ok(None)` when nobody listened, `Ok(Some(output))`
    /// with the (possibly rewritten) output otherwise.
    pub async fn admit<F>(
        &self,
        hook: Admission,
        scope: HookScope<'_>,
        build: F,
    ) -> Result<Option<Value>, HookRejection>
    where
        F: FnOnce() -> (Value, Value),
    {
        let name = hook.name();
        let Some(listeners) = self.listeners(name, scope) else {
            return Ok(None);
        };
        let (input, mut output) = build();
        for registration in listeners {
            let reply = match self.call(&registration, name, &input, &output, scope).await {
                Ok(reply) => reply,
                Err(failure) => {
                    return Err(HookRejection {
                        hook: name,
                        skill: registration.skill.clone(),
                        reason: format!("{failure} (admission fails closed)"),
                    });
                }
            };
            match parse_admission(&reply) {
                Ok(AdmissionReply::Allow(new_output)) => {
                    if let Some(new_output) = new_output {
                        output = new_output;
                    }
                }
                Ok(AdmissionReply::Reject(reason)) => {
                    return Err(HookRejection {
                        hook: name,
                        skill: registration.skill.clone(),
                        reason,
                    });
                }
                Err(problem) => {
                    self.report(&registration, name, &problem, scope);
                    return Err(HookRejection {
                        hook: name,
                        skill: registration.skill.clone(),
                        reason: format!("{problem} (admission fails closed)"),
                    });
                }
            }
        }
        Ok(Some(output))
    }

    /// Runs a transform chain. Returns `None` when nobody listened, otherwise the final
    /// output. A failing handler is skipped and its input passed on unchanged.
    pub async fn transform<F>(
        &self,
        hook: Transform,
        scope: HookScope<'_>,
        build: F,
    ) -> Option<Value>
    where
        F: FnOnce() -> (Value, Value),
    {
        let name = hook.name();
        let listeners = self.listeners(name, scope)?;
        let (input, mut output) = build();
        for registration in listeners {
            let Ok(reply) = self.call(&registration, name, &input, &output, scope).await else {
                continue;
            };
            match reply.get("output") {
                Some(Value::Null) | None => {}
                Some(new_output) => output = new_output.clone(),
            }
        }
        Some(output)
    }

    async fn call(
        &self,
        registration: &Registration,
        name: &str,
        input: &Value,
        output: &Value,
        scope: HookScope<'_>,
    ) -> Result<Value, String> {
        let result = tokio::time::timeout(
            registration.timeout,
            registration.handler.call(name, input, output),
        )
        .await;
        let failure = match result {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(error)) => format!("service {} failed: {error}", registration.skill),
            Err(_) => format!(
                "service {} did not answer within {} ms",
                registration.skill,
                registration.timeout.as_millis()
            ),
        };
        self.report(registration, name, &failure, scope);
        Err(failure)
    }

    fn report(&self, registration: &Registration, hook: &str, message: &str, scope: HookScope<'_>) {
        tracing::warn!(skill = %registration.skill, hook, %message, "hook handler failed");
        self.events.emit(
            "service.error",
            scope.agent_id,
            scope.session_id,
            json!({
                "serviceId": registration.service_id,
                "skill": registration.skill,
                "hook": hook,
                "message": message,
            }),
        );
    }
}

enum AdmissionReply {
    Allow(Option<Value>),
    Reject(String),
}

fn parse_admission(reply: &Value) -> Result<AdmissionReply, String> {
    match reply.get("action").and_then(Value::as_str) {
        Some("allow") => Ok(AdmissionReply::Allow(
            reply.get("output").filter(|v| !v.is_null()).cloned(),
        )),
        Some("reject") => Ok(AdmissionReply::Reject(
            reply
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned(),
        )),
        Some(other) => Err(format!(
            "admission reply has action `{other}`; expected `allow` or `reject`"
        )),
        None => Err("admission reply lacks `action` (`allow` or `reject`)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-process handler that records calls and replies with a fixed value, after
    /// an optional delay, or fails.
    #[derive(Debug)]
    struct Fixed {
        name: &'static str,
        reply: Result<Value, String>,
        delay: Duration,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    #[async_trait]
    impl HookHandler for Fixed {
        async fn call(&self, _hook: &str, _input: &Value, output: &Value) -> Result<Value, String> {
            self.log.lock().unwrap().push(self.name);
            tokio::time::sleep(self.delay).await;
            match &self.reply {
                Ok(Value::String(s)) if s == "append" => {
                    let mut list = output["messages"].as_array().cloned().unwrap_or_default();
                    list.push(json!(self.name));
                    Ok(json!({"output": {"messages": list}}))
                }
                other => other.clone(),
            }
        }
    }

    struct Setup {
        engine: HookEngine,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                engine: HookEngine::new(Arc::new(EventBus::new(16, 1 << 20))),
                log: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn add(
            &self,
            hook: &str,
            name: &'static str,
            owner: HookOwner,
            priority: i32,
            reply: Result<Value, String>,
            delay_ms: u64,
        ) {
            self.engine
                .register(NewRegistration {
                    hook: hook.into(),
                    skill: name.into(),
                    service_id: format!("svc_{name}"),
                    owner,
                    priority,
                    timeout: Duration::from_millis(100),
                    interactive: false,
                    handler: Arc::new(Fixed {
                        name,
                        reply,
                        delay: Duration::from_millis(delay_ms),
                        log: self.log.clone(),
                    }),
                })
                .unwrap();
        }
    }

    fn agent(id: &str) -> HookOwner {
        HookOwner::Agent {
            agent_id: id.into(),
        }
    }

    fn session(id: &str) -> HookOwner {
        HookOwner::Session {
            agent_id: "agt_1".into(),
            session_id: id.into(),
        }
    }

    fn allow() -> Result<Value, String> {
        Ok(json!({"action": "allow"}))
    }

    #[tokio::test]
    async fn nobody_listening_means_the_data_is_never_built() {
        let setup = Setup::new();
        let out = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                panic!("built hook data although nobody listens")
            })
            .await;
        assert_eq!(out, Ok(None));
        let out = setup
            .engine
            .transform(Transform::ToolAfter, HookScope::default(), || {
                panic!("built hook data although nobody listens")
            })
            .await;
        assert_eq!(out, None);
    }

    #[tokio::test]
    async fn chains_run_system_then_agent_then_session_then_priority() {
        let setup = Setup::new();
        let hook = "session.messages.transform";
        setup.add(
            hook,
            "session-low",
            session("ses_1"),
            0,
            Ok(json!("append")),
            0,
        );
        setup.add(hook, "agent", agent("agt_1"), 0, Ok(json!("append")), 0);
        setup.add(
            hook,
            "system-late",
            HookOwner::System,
            5,
            Ok(json!("append")),
            0,
        );
        setup.add(
            hook,
            "system-early",
            HookOwner::System,
            -5,
            Ok(json!("append")),
            0,
        );
        setup.add(
            hook,
            "other-session",
            session("ses_2"),
            0,
            Ok(json!("append")),
            0,
        );
        let out = setup
            .engine
            .transform(
                Transform::SessionMessagesTransform,
                HookScope::session("agt_1", "ses_1"),
                || (json!({}), json!({"messages": []})),
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"messages": ["system-early", "system-late", "agent", "session-low"]})
        );
        let listed: Vec<_> = setup
            .engine
            .registrations(Some(hook))
            .into_iter()
            .map(|r| r.skill)
            .collect();
        assert_eq!(
            listed,
            vec![
                "system-early",
                "system-late",
                "agent",
                "session-low",
                "other-session"
            ]
        );
    }

    #[tokio::test]
    async fn a_reject_stops_the_admission_chain() {
        let setup = Setup::new();
        setup.add(
            "tool.before",
            "guard",
            HookOwner::System,
            0,
            Ok(json!({"action": "reject", "reason": "rm -rf /"})),
            0,
        );
        setup.add("tool.before", "later", HookOwner::System, 1, allow(), 0);
        let err = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                (json!({}), json!({}))
            })
            .await
            .unwrap_err();
        assert_eq!(err.skill, "guard");
        assert_eq!(err.reason, "rm -rf /");
        assert_eq!(*setup.log.lock().unwrap(), vec!["guard"]);
    }

    #[tokio::test]
    async fn admission_output_rewrites_pass_down_the_chain() {
        let setup = Setup::new();
        setup.add(
            "tool.before",
            "rewriter",
            HookOwner::System,
            0,
            Ok(json!({"action": "allow", "output": {"args": {"command": "echo safe"}}})),
            0,
        );
        setup.add("tool.before", "checker", HookOwner::System, 1, allow(), 0);
        let out = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                (json!({}), json!({"args": {"command": "rm -rf /"}}))
            })
            .await
            .unwrap();
        assert_eq!(out, Some(json!({"args": {"command": "echo safe"}})));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_or_broken_admission_handler_fails_closed_after_its_timeout() {
        let setup = Setup::new();
        setup.add(
            "tool.before",
            "sleepy",
            HookOwner::System,
            0,
            allow(),
            10_000,
        );
        let started = tokio::time::Instant::now();
        let err = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                (json!({}), json!({}))
            })
            .await
            .unwrap_err();
        assert!(
            err.reason.contains("did not answer within 100 ms"),
            "{}",
            err.reason
        );
        assert!(started.elapsed() < Duration::from_millis(200));

        let setup = Setup::new();
        setup.add(
            "tool.before",
            "broken",
            HookOwner::System,
            0,
            Err("socket closed".into()),
            0,
        );
        let err = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                (json!({}), json!({}))
            })
            .await
            .unwrap_err();
        assert!(err.reason.contains("socket closed"), "{}", err.reason);

        let setup = Setup::new();
        setup.add(
            "tool.before",
            "confused",
            HookOwner::System,
            0,
            Ok(json!({"verdict": "yes"})),
            0,
        );
        let err = setup
            .engine
            .admit(Admission::ToolBefore, HookScope::default(), || {
                (json!({}), json!({}))
            })
            .await
            .unwrap_err();
        assert!(err.reason.contains("lacks `action`"), "{}", err.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_transform_handler_is_skipped_and_the_data_kept() {
        let setup = Setup::new();
        setup.add(
            "session.messages.transform",
            "first",
            HookOwner::System,
            0,
            Ok(json!("append")),
            0,
        );
        setup.add(
            "session.messages.transform",
            "hangs",
            HookOwner::System,
            1,
            Ok(json!("append")),
            10_000,
        );
        setup.add(
            "session.messages.transform",
            "errors",
            HookOwner::System,
            2,
            Err("boom".into()),
            0,
        );
        setup.add(
            "session.messages.transform",
            "last",
            HookOwner::System,
            3,
            Ok(json!("append")),
            0,
        );
        let mut events = setup.engine.events.subscribe(None);
        let out = setup
            .engine
            .transform(
                Transform::SessionMessagesTransform,
                HookScope::default(),
                || (json!({}), json!({"messages": []})),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"messages": ["first", "last"]}));
        let first_error = events.live.recv().await.unwrap();
        assert_eq!(first_error.name, "service.error");
        assert_eq!(first_error.payload["skill"], "hangs");
    }

    #[test]
    fn registration_checks_the_catalogue_owner_rights_and_timeouts() {
        let setup = Setup::new();
        let request = |hook: &str, owner: HookOwner, timeout_ms: u64| NewRegistration {
            hook: hook.into(),
            skill: "s".into(),
            service_id: "svc_s".into(),
            owner,
            priority: 0,
            timeout: Duration::from_millis(timeout_ms),
            interactive: false,
            handler: Arc::new(Fixed {
                name: "s",
                reply: allow(),
                delay: Duration::ZERO,
                log: setup.log.clone(),
            }),
        };
        assert_eq!(
            setup
                .engine
                .register(request("tool.maybe", HookOwner::System, 10)),
            Err(RegisterError::Unknown("tool.maybe".into()))
        );
        assert!(matches!(
            setup
                .engine
                .register(request("aos.started", session("ses_1"), 10)),
            Err(RegisterError::IsEvent { .. })
        ));
        let err = setup
            .engine
            .register(request("skill.index.refresh.before", session("ses_1"), 10))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: a session-owned service cannot register `skill.index.refresh.before` (allowed for: system)"
        );
        assert!(matches!(
            setup
                .engine
                .register(request("tool.before", HookOwner::System, 61_000)),
            Err(RegisterError::TimeoutTooLong { .. })
        ));
        setup
            .engine
            .register(request("tool.before", HookOwner::System, 10))
            .unwrap();
        assert!(
            setup
                .engine
                .is_listened("tool.before", HookScope::default())
        );
        setup.engine.unregister_service("svc_s");
        assert!(
            !setup
                .engine
                .is_listened("tool.before", HookScope::default())
        );
        assert!(setup.engine.registrations(None).is_empty());
    }
}
