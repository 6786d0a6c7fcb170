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

use super::catalog::{Admission, EventName, HookClass, HookRef, Transform};
use crate::auth::Owner;
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
    pub owner: Owner,
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
    owner: Owner,
    priority: i32,
    timeout: Duration,
    interactive: bool,
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
    #[error("timeout {requested_ms} ms for `{hook}` must be between 1 and {limit_ms} ms")]
    BadTimeout {
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

/// An allow verdict that said why (`{action: "allow", reason}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub skill: String,
    pub reason: String,
}

/// Registered handlers, by hook name. Cheap to read concurrently.
pub struct HookEngine {
    // Each entry is an immutable, sorted list replaced wholesale on change, so a call
    // clones one `Arc` under the read lock and never holds the lock across an `.await`.
    table: RwLock<Table>,
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
        let registration = self.check(request)?;
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        insert(&mut table, registration);
        Ok(())
    }

    /// Replaces every registration of `service_id` with `requests`, all or nothing: if
    /// one request is refused, nothing changes and its index is returned with why.
    pub fn replace_service(
        &self,
        service_id: &str,
        requests: Vec<NewRegistration>,
    ) -> Result<(), (usize, RegisterError)> {
        let checked = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.check(r).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        remove_service(&mut table, service_id);
        for registration in checked {
            insert(&mut table, registration);
        }
        Ok(())
    }

    fn check(&self, request: NewRegistration) -> Result<Arc<Registration>, RegisterError> {
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
        if request.timeout > limit || request.timeout.is_zero() {
            return Err(RegisterError::BadTimeout {
                hook: request.hook.clone(),
                requested_ms: request.timeout.as_millis() as u64,
                limit_ms: limit.as_millis() as u64,
            });
        }
        Ok(Arc::new(Registration {
            hook,
            skill: request.skill,
            service_id: request.service_id,
            owner: request.owner,
            priority: request.priority,
            timeout: request.timeout,
            interactive: request.interactive,
            handler: request.handler,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }))
    }

    /// Removes every registration of a service.
    pub fn unregister_service(&self, service_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        remove_service(&mut table, service_id);
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
                service_id: Some(r.service_id.clone()),
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
        table.get(hook).is_some_and(|list| {
            list.iter()
                .any(|r| r.owner.covers(scope.agent_id, scope.session_id))
        })
    }

    fn listeners(&self, hook: &str, scope: HookScope<'_>) -> Option<Vec<Arc<Registration>>> {
        let list = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            table.get(hook)?.clone()
        };
        let applicable: Vec<_> = list
            .iter()
            .filter(|r| r.owner.covers(scope.agent_id, scope.session_id))
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
        self.admit_audited(hook, scope, build)
            .await
            .map(|(output, _)| output)
    }

    /// Like [`HookEngine::admit`], also returning the reasons allowing handlers gave.
    pub async fn admit_audited<F>(
        &self,
        hook: Admission,
        scope: HookScope<'_>,
        build: F,
    ) -> Result<(Option<Value>, Vec<Explained>), HookRejection>
    where
        F: FnOnce() -> (Value, Value),
    {
        let name = hook.name();
        let Some(listeners) = self.listeners(name, scope) else {
            return Ok((None, Vec::new()));
        };
        let (input, mut output) = build();
        let mut reasons = Vec::new();
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
                Ok(AdmissionReply::Allow(new_output, reason)) => {
                    if let Some(new_output) = new_output {
                        output = new_output;
                    }
                    if let Some(reason) = reason {
                        reasons.push(Explained {
                            skill: registration.skill.clone(),
                            reason,
                        });
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
        Ok((Some(output), reasons))
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
        if registration.interactive {
            // A person is being asked: UIs show the wait.
            self.events.emit(
                EventName::HookWaiting.name(),
                scope.agent_id,
                scope.session_id,
                json!({
                    "hook": name,
                    "skill": registration.skill,
                    "serviceId": registration.service_id,
                    "timeoutMs": registration.timeout.as_millis() as u64,
                }),
            );
        }
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
            EventName::ServiceError.name(),
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

type Table = HashMap<&'static str, Arc<Vec<Arc<Registration>>>>;

fn insert(table: &mut Table, registration: Arc<Registration>) {
    let name = registration.hook.spec().name;
    let mut list: Vec<_> = table
        .get(name)
        .map(|l| l.as_ref().clone())
        .unwrap_or_default();
    list.push(registration);
    list.sort_by_key(|r| r.sort_key());
    table.insert(name, Arc::new(list));
}

fn remove_service(table: &mut Table, service_id: &str) {
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

enum AdmissionReply {
    Allow(Option<Value>, Option<String>),
    Reject(String),
}

fn parse_admission(reply: &Value) -> Result<AdmissionReply, String> {
    match reply.get("action").and_then(Value::as_str) {
        Some("allow") => Ok(AdmissionReply::Allow(
            reply.get("output").filter(|v| !v.is_null()).cloned(),
            reply
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
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
            owner: Owner,
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

    fn agent(id: &str) -> Owner {
        Owner::Agent {
            agent_id: id.into(),
        }
    }

    fn session(id: &str) -> Owner {
        Owner::Session {
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
            Owner::System,
            5,
            Ok(json!("append")),
            0,
        );
        setup.add(
            hook,
            "system-early",
            Owner::System,
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
            Owner::System,
            0,
            Ok(json!({"action": "reject", "reason": "rm -rf /"})),
            0,
        );
        setup.add("tool.before", "later", Owner::System, 1, allow(), 0);
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
            Owner::System,
            0,
            Ok(json!({"action": "allow", "output": {"args": {"command": "echo safe"}}})),
            0,
        );
        setup.add("tool.before", "checker", Owner::System, 1, allow(), 0);
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
        setup.add("tool.before", "sleepy", Owner::System, 0, allow(), 10_000);
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
            Owner::System,
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
            Owner::System,
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
            Owner::System,
            0,
            Ok(json!("append")),
            0,
        );
        setup.add(
            "session.messages.transform",
            "hangs",
            Owner::System,
            1,
            Ok(json!("append")),
            10_000,
        );
        setup.add(
            "session.messages.transform",
            "errors",
            Owner::System,
            2,
            Err("boom".into()),
            0,
        );
        setup.add(
            "session.messages.transform",
            "last",
            Owner::System,
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

    #[tokio::test]
    async fn calling_an_interactive_registration_announces_the_wait() {
        let setup = Setup::new();
        setup
            .engine
            .register(NewRegistration {
                hook: "tool.before".into(),
                skill: "approver".into(),
                service_id: "svc_approver".into(),
                owner: Owner::System,
                priority: 0,
                timeout: Duration::from_secs(600),
                interactive: true,
                handler: Arc::new(Fixed {
                    name: "approver",
                    reply: allow(),
                    delay: Duration::ZERO,
                    log: setup.log.clone(),
                }),
            })
            .unwrap();
        let mut events = setup.engine.events.subscribe(None);
        setup
            .engine
            .admit(
                Admission::ToolBefore,
                HookScope::session("agt_1", "ses_1"),
                || (json!({}), json!({})),
            )
            .await
            .unwrap();
        let waiting = events.live.recv().await.unwrap();
        assert_eq!(waiting.name, "hook.waiting");
        assert_eq!(waiting.session_id.as_deref(), Some("ses_1"));
        assert_eq!(waiting.payload["skill"], "approver");
        assert_eq!(waiting.payload["timeoutMs"], 600_000);
    }

    #[test]
    fn registration_checks_the_catalogue_owner_rights_and_timeouts() {
        let setup = Setup::new();
        let request = |hook: &str, owner: Owner, timeout_ms: u64| NewRegistration {
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
                .register(request("tool.maybe", Owner::System, 10)),
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
                .register(request("tool.before", Owner::System, 61_000)),
            Err(RegisterError::BadTimeout { .. })
        ));
        setup
            .engine
            .register(request("tool.before", Owner::System, 10))
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
