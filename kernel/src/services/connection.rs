//! The kernel's side of one service connection, whatever carries it: waiting for
//! `hello`, then serving `register`, `call` and `ping`, answering hooks through the
//! connection, and forwarding subscribed events.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aos_sdk::protocol::service::{
    HelloParams, HelloResult, HookCallRef, HookSubscription, OpKindWire, PROTOCOL_VERSION,
    RegisterParams, RegisterResult, RpcError, RpcId, ServiceRequest, rpc_code,
};
use aos_sdk::protocol::{Event, OwnerType, Timestamp};
use aos_sdk::rpc::{CallError, Incoming, NotifyError, Peer};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::ServiceEntry;
use super::ops::Route;
use crate::auth::Owner;
use crate::events::name_matches;
use crate::hooks::{
    DEFAULT_TIMEOUT, EventName, HookHandler, HookRef, NewRegistration, RegisterError,
};
use crate::kernel::Kernel;
use crate::syscall::OpKind;

/// Syscalls one service may have in flight; further `call`s wait.
const MAX_CALLS_IN_FLIGHT: usize = 256;
const MAX_HOOKS: usize = 64;
const MAX_EVENT_PATTERNS: usize = 64;
const MAX_OPS: usize = 128;
/// Default and largest deadline of a service-provided operation.
pub const OP_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const OP_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Waits for the service's `hello` until `deadline`, answering anything else with an
/// error. Returns the request id to answer and the hello params.
pub async fn await_hello(
    peer: &Peer,
    incoming: &mut mpsc::Receiver<Incoming>,
    deadline: tokio::time::Instant,
) -> Result<(RpcId, HelloParams), String> {
    loop {
        let message = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Err(_) => {
                return Err("it connected but sent no `hello` within the deadline".into());
            }
            Ok(None) => return Err("it closed the connection before `hello`".into()),
            Ok(Some(message)) => message,
        };
        let Incoming::Request { id, method, params } = message else {
            continue;
        };
        if method != "hello" {
            peer.respond(
                id,
                Err(RpcError::new(
                    rpc_code::HELLO_REQUIRED,
                    format!("`{method}` before `hello`: the first message must be `hello`"),
                )),
            )
            .await;
            continue;
        }
        let hello = match ServiceRequest::parse(&method, params) {
            Ok(ServiceRequest::Hello(hello)) => hello,
            Ok(_) => continue,
            Err(error) => {
                peer.respond(id, Err(error)).await;
                continue;
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            let message = format!(
                "this kernel speaks service protocol {PROTOCOL_VERSION}; the service asked for protocol {}",
                hello.protocol
            );
            peer.respond(
                id,
                Err(RpcError::new(
                    rpc_code::UNSUPPORTED_PROTOCOL,
                    message.clone(),
                )),
            )
            .await;
            return Err(message);
        }
        return Ok((id, hello));
    }
}

/// Answers `hello` for `entry`.
pub async fn reply_hello(peer: &Peer, id: RpcId, entry: &ServiceEntry) {
    let result = HelloResult {
        protocol: PROTOCOL_VERSION,
        kernel_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance_id: entry.id.clone(),
        owner: entry.owner.info(),
        features: Vec::new(),
    };
    peer.respond(id, Ok(serde_json::to_value(result).unwrap_or(Value::Null)))
        .await;
}

/// Refuses a `hello` (wrong skill, owner gone) with `message`.
pub async fn refuse_hello(peer: &Peer, id: RpcId, message: &str) {
    peer.respond(id, Err(RpcError::new(rpc_code::INVALID_REQUEST, message)))
        .await;
}

/// Serves a connection after `hello` until it closes. Returns why it ended. Everything
/// the service registered is removed again when this returns or is dropped.
pub async fn serve(
    kernel: Arc<Kernel>,
    entry: Arc<ServiceEntry>,
    peer: Peer,
    mut incoming: mpsc::Receiver<Incoming>,
) -> String {
    let _cleanup = Registrations {
        kernel: kernel.clone(),
        entry: entry.clone(),
    };
    let caller = entry.caller();
    let calls = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let mut forwarder: Option<AbortOnDrop> = None;
    while let Some(message) = incoming.recv().await {
        let (id, method, params) = match message {
            Incoming::Request { id, method, params } => (id, method, params),
            Incoming::Notification { method, .. } => {
                tracing::debug!(service = %entry.id, %method, "ignored a notification from a service");
                continue;
            }
        };
        match ServiceRequest::parse(&method, params) {
            Err(error) => peer.respond(id, Err(error)).await,
            Ok(ServiceRequest::Hello(_)) => {
                peer.respond(
                    id,
                    Err(RpcError::new(
                        rpc_code::INVALID_REQUEST,
                        "`hello` was already answered on this connection",
                    )),
                )
                .await;
            }
            Ok(ServiceRequest::Ping) => {
                peer.respond(id, Ok(json!({"pong": true, "ts": Timestamp::now()})))
                    .await;
            }
            Ok(ServiceRequest::Register(params)) => {
                match register(&kernel, &entry, &peer, params) {
                    Ok((result, patterns)) => {
                        forwarder = (!patterns.is_empty()).then(|| {
                            AbortOnDrop(tokio::spawn(forward_events(
                                kernel.clone(),
                                entry.clone(),
                                peer.clone(),
                                patterns,
                            )))
                        });
                        peer.respond(id, Ok(serde_json::to_value(&result).unwrap_or_default()))
                            .await;
                    }
                    Err(error) => peer.respond(id, Err(error)).await,
                }
            }
            Ok(ServiceRequest::Call(call)) => {
                let Ok(permit) = calls.clone().acquire_owned().await else {
                    break;
                };
                let (kernel, peer, caller) = (kernel.clone(), peer.clone(), caller.clone());
                tokio::spawn(async move {
                    let envelope = kernel.call(caller, &call.op, call.params).await;
                    peer.respond(id, Ok(serde_json::to_value(&envelope).unwrap_or_default()))
                        .await;
                    drop(permit);
                });
            }
        }
    }
    drop(forwarder);
    "it closed its connection".to_owned()
}

/// Removes a service's hooks, operations and listing data when its connection ends.
struct Registrations {
    kernel: Arc<Kernel>,
    entry: Arc<ServiceEntry>,
}

impl Drop for Registrations {
    fn drop(&mut self) {
        self.kernel.hooks.unregister_service(&self.entry.id);
        self.kernel.services.ops.remove_service(&self.entry.id);
        self.entry.clear_registered();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers hook calls by asking the service.
#[derive(Debug)]
struct ServiceHook {
    peer: Peer,
}

#[async_trait]
impl HookHandler for ServiceHook {
    async fn call(&self, hook: &str, input: &Value, output: &Value) -> Result<Value, String> {
        // The engine applies the registration's deadline; this one only bounds a call
        // the engine never gives up on.
        self.peer
            .request_with(
                "hook",
                &HookCallRef {
                    name: hook,
                    class: Some(
                        HookRef::lookup(hook).map_or("transform", |h| h.spec().class.as_str()),
                    ),
                    input,
                    output,
                },
                crate::hooks::INTERACTIVE_MAX_TIMEOUT,
            )
            .await
            .map_err(|e| match e {
                CallError::Remote(error) => format!("it answered with an error: {}", error.message),
                other => other.to_string(),
            })
    }
}

fn refused(index: usize, what: &str, problem: impl std::fmt::Display) -> RpcError {
    RpcError::new(
        rpc_code::INVALID_PARAMS,
        format!("{what}[{index}]: {problem}"),
    )
    .with_data(json!({"field": format!("{what}[{index}]")}))
}

/// Applies a `register`: all of it or nothing. Returns what is registered and the
/// event patterns to forward.
fn register(
    kernel: &Arc<Kernel>,
    entry: &Arc<ServiceEntry>,
    peer: &Peer,
    params: RegisterParams,
) -> Result<(RegisterResult, Vec<String>), RpcError> {
    if params.hooks.len() > MAX_HOOKS
        || params.events.len() > MAX_EVENT_PATTERNS
        || params.ops.len() > MAX_OPS
    {
        return Err(RpcError::new(
            rpc_code::INVALID_PARAMS,
            format!(
                "too much to register: at most {MAX_HOOKS} hooks, {MAX_EVENT_PATTERNS} event patterns and {MAX_OPS} operations"
            ),
        ));
    }
    let owner_type = entry.owner.owner_type();
    let mut patterns: Vec<String> = Vec::new();
    let mut hooks: Vec<(usize, HookSubscription)> = Vec::new();
    for (i, hook) in params.hooks.into_iter().enumerate() {
        // The seed protocol listed events among hooks; the kernel classifies by name.
        if let Some(HookRef::Event(_)) = HookRef::lookup(&hook.name) {
            check_pattern(&hook.name, owner_type).map_err(|e| e.at(i, "hooks"))?;
            patterns.push(hook.name);
        } else {
            hooks.push((i, hook));
        }
    }
    for (i, pattern) in params.events.iter().enumerate() {
        check_pattern(pattern, owner_type).map_err(|e| e.at(i, "events"))?;
        if !patterns.contains(pattern) {
            patterns.push(pattern.clone());
        }
    }
    let mut routes: Vec<(String, Route)> = Vec::new();
    for (i, op) in params.ops.iter().enumerate() {
        let name_ok = !op.name.is_empty()
            && op.name.len() <= 64
            && op.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
            && !op.name.starts_with('.')
            && !op.name.ends_with('.');
        if !name_ok {
            return Err(refused(
                i,
                "ops",
                format!(
                    "name `{}` must be 1–64 of `a-z0-9-_.`, not starting or ending with `.`",
                    op.name
                ),
            ));
        }
        let full = format!("{}.{}", entry.skill, op.name);
        if kernel.registry.get(&full).is_some() {
            return Err(refused(
                i,
                "ops",
                format!("`{full}` is a kernel operation and cannot be provided by a service"),
            ));
        }
        if routes.iter().any(|(n, _)| *n == full) {
            return Err(refused(i, "ops", format!("`{full}` is listed twice")));
        }
        let description = op.description.trim();
        if description.is_empty() || description.chars().count() > 500 {
            return Err(refused(
                i,
                "ops",
                "`description` must be 1–500 characters saying what the operation does",
            ));
        }
        let timeout = match op.timeout_ms {
            None => OP_DEFAULT_TIMEOUT,
            Some(ms) if ms >= 1 && ms <= OP_MAX_TIMEOUT.as_millis() as u64 => {
                Duration::from_millis(ms)
            }
            Some(ms) => {
                return Err(refused(
                    i,
                    "ops",
                    format!(
                        "`timeoutMs` {ms} must be between 1 and {}",
                        OP_MAX_TIMEOUT.as_millis()
                    ),
                ));
            }
        };
        routes.push((
            full,
            Route {
                service_id: entry.id.clone(),
                skill: entry.skill.clone(),
                owner: entry.owner.clone(),
                kind: match op.kind {
                    OpKindWire::Command => OpKind::Command,
                    OpKindWire::Query => OpKind::Query,
                },
                description: description.to_owned(),
                params_schema: op.params_schema.clone(),
                timeout,
                peer: peer.clone(),
            },
        ));
    }
    let handler: Arc<dyn HookHandler> = Arc::new(ServiceHook { peer: peer.clone() });
    let requests: Vec<NewRegistration> = hooks
        .iter()
        .map(|(_, hook)| NewRegistration {
            hook: hook.name.clone(),
            skill: entry.skill.clone(),
            service_id: entry.id.clone(),
            owner: entry.owner.clone(),
            priority: hook.priority.unwrap_or(0),
            timeout: hook
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_TIMEOUT),
            interactive: hook.interactive,
            handler: handler.clone(),
        })
        .collect();
    kernel
        .hooks
        .replace_service(&entry.id, requests)
        .map_err(|(i, error)| {
            let code = match error {
                RegisterError::OwnerNotAllowed { .. } => rpc_code::INVALID_REQUEST,
                _ => rpc_code::INVALID_PARAMS,
            };
            let index = hooks[i].0;
            RpcError::new(code, format!("hooks[{index}]: {error}"))
                .with_data(json!({"field": format!("hooks[{index}]"), "hook": hooks[i].1.name}))
        })?;
    let result = RegisterResult {
        hooks: hooks.into_iter().map(|(_, h)| h.name).collect(),
        events: patterns.clone(),
        ops: routes.iter().map(|(n, _)| n.clone()).collect(),
    };
    kernel.services.ops.replace(&entry.id, routes);
    entry.set_registered(result.clone());
    entry.announce(
        kernel,
        EventName::ServiceRegistered,
        json!({
            "serviceId": entry.id,
            "skill": entry.skill,
            "hooks": result.hooks,
            "events": result.events,
            "ops": result.ops,
        }),
    );
    Ok((result, patterns))
}

/// A refused event pattern, placed later.
struct PatternError {
    code: i64,
    message: String,
}

impl PatternError {
    fn at(self, index: usize, list: &str) -> RpcError {
        RpcError::new(self.code, format!("{list}[{index}]: {}", self.message))
            .with_data(json!({"field": format!("{list}[{index}]")}))
    }
}

/// Checks an event pattern: `*`, `prefix.*`, a catalogued event this owner level may
/// receive, or a custom `skill.<name>.<event>`.
fn check_pattern(pattern: &str, owner_type: OwnerType) -> Result<(), PatternError> {
    let invalid = |message: String| PatternError {
        code: rpc_code::INVALID_PARAMS,
        message,
    };
    if pattern.is_empty()
        || pattern.len() > 128
        || !pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
        || pattern.trim_end_matches('*').contains('*')
    {
        return Err(invalid(format!(
            "event pattern `{pattern}` must be an event name, `prefix.*` or `*`"
        )));
    }
    if pattern.ends_with('*') {
        return Ok(());
    }
    match HookRef::lookup(pattern) {
        Some(HookRef::Event(event)) => {
            let spec = event.spec();
            if spec.owners.contains(&owner_type) {
                Ok(())
            } else {
                Err(PatternError {
                    code: rpc_code::INVALID_REQUEST,
                    message: format!(
                        "permission denied: a {}-owned service cannot register `{pattern}` (allowed for: {})",
                        owner_type.as_str(),
                        spec.owners
                            .iter()
                            .map(|o| o.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
        }
        Some(_) => Err(invalid(format!(
            "`{pattern}` is a hook, not an event: list it under `hooks`"
        ))),
        None if pattern.starts_with("skill.") => Ok(()),
        None => Err(invalid(format!(
            "unknown event `{pattern}`; `aos hooks` lists the catalogue, and custom events are named `skill.<skill>.<event>`"
        ))),
    }
}

/// Whether a service owned by `owner` may see `event`: system services see all;
/// agent- and session-owned services see their agent's or session's events, of the
/// kinds their level may receive.
pub fn visible(owner: &Owner, event: &Event) -> bool {
    let allowed = match HookRef::lookup(&event.name) {
        Some(hook) => hook.spec().owners.contains(&owner.owner_type()),
        None => true,
    };
    allowed
        && owner.covers(event.agent_id.as_deref(), event.session_id.as_deref())
        && (matches!(owner, Owner::System)
            || event.agent_id.is_some()
            || event.session_id.is_some())
}

async fn forward_events(
    kernel: Arc<Kernel>,
    entry: Arc<ServiceEntry>,
    peer: Peer,
    patterns: Vec<String>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut subscription = kernel.events.subscribe(None);
    loop {
        let event = match subscription.live.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                entry.dropped_events.fetch_add(missed, Ordering::Relaxed);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if !patterns.iter().any(|p| name_matches(p, &event.name)) || !visible(&entry.owner, &event)
        {
            continue;
        }
        match peer.notify_frame(event.service_frame().to_owned()) {
            Ok(()) => {}
            Err(NotifyError::Closed) => return,
            Err(NotifyError::Full | NotifyError::TooLarge) => {
                entry.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_patterns_respect_owner_levels() {
        assert!(check_pattern("*", OwnerType::Session).is_ok());
        assert!(check_pattern("session.*", OwnerType::Session).is_ok());
        assert!(check_pattern("skill.my-skill.done", OwnerType::Agent).is_ok());
        let denied = check_pattern("aos.started", OwnerType::Session).unwrap_err();
        assert_eq!(denied.code, rpc_code::INVALID_REQUEST);
        assert!(
            denied.message.contains(
                "permission denied: a session-owned service cannot register `aos.started`"
            ),
            "{}",
            denied.message
        );
        assert!(check_pattern("aos.started", OwnerType::System).is_ok());
        assert!(check_pattern("tool.before", OwnerType::System).is_err());
        assert!(check_pattern("sesion.started", OwnerType::System).is_err());
        assert!(check_pattern("a*b", OwnerType::System).is_err());
    }

    #[test]
    fn services_see_only_their_owners_events() {
        let event = |name: &str, agent: Option<&str>, session: Option<&str>| Event {
            id: 1,
            name: name.into(),
            ts: Timestamp::now(),
            agent_id: agent.map(Into::into),
            session_id: session.map(Into::into),
            payload: json!({}),
            node: None,
        };
        let agent = Owner::Agent {
            agent_id: "agt_1".into(),
        };
        let session = Owner::Session {
            agent_id: "agt_1".into(),
            session_id: "ses_1".into(),
        };
        let started = event("session.started", Some("agt_1"), Some("ses_1"));
        assert!(visible(&Owner::System, &started));
        assert!(visible(&agent, &started));
        assert!(visible(&session, &started));
        let other = event("session.started", Some("agt_2"), Some("ses_2"));
        assert!(!visible(&agent, &other));
        assert!(!visible(&session, &other));
        let boot = event("aos.started", None, None);
        assert!(visible(&Owner::System, &boot));
        assert!(!visible(&agent, &boot));
        let custom = event("skill.x.y", None, None);
        assert!(
            !visible(&session, &custom),
            "unscoped custom events are system-only"
        );
    }
}
