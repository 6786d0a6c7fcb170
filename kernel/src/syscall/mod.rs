//! The syscall registry: the one door every state change goes through.
//!
//! Each operation is an [`OpSpec`]: name, command or query, who may call it, a typed
//! params struct (decoded strictly, so unknown or mistyped fields are named in the
//! error), and a handler. HTTP, the CLI, services and agents all arrive at
//! [`Registry::call`]. The same table generates `docs/syscalls.md`.

mod agent;
mod content;
mod context;
mod dispatch;
mod docs;
mod history;
mod misc;
mod session;
mod skill;
mod system;
mod token;
pub mod validate;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use aos_sdk::protocol::{Envelope, ErrorBody, ErrorCode, LogEntry, OpDescription, Timestamp};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::hooks::HookRejection;
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::store::StoreError;

pub use docs::markdown;
pub use session::{AppendRequest, append_message};

/// A failed syscall: a stable code, a message for people, optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

impl SyscallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// An `invalid.params` error about one field.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidParams, format!("`{field}`: {problem}"))
            .with_details(json!({"field": field}))
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} `{id}` does not exist"))
            .with_details(json!({"kind": kind, "id": id}))
    }

    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message,
            details: self.details,
        }
    }
}

impl std::fmt::Display for SyscallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for SyscallError {}

impl From<StoreError> for SyscallError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { kind, id } => SyscallError::not_found(kind, &id),
            StoreError::Conflict { kind, id, .. } => SyscallError::new(
                ErrorCode::RevisionConflict,
                format!("{kind} `{id}` was changed by another writer at the same time; retry"),
            ),
            StoreError::SessionArchived(id) => SyscallError::new(
                ErrorCode::SessionArchived,
                format!("session `{id}` is archived: it can be read but not changed"),
            ),
            StoreError::Unavailable { action, source } => {
                // sqlx prefixes the database's own words; rusqlite's are bare.
                let detail = match source.downcast_ref::<sqlx::Error>() {
                    Some(sqlx::Error::Database(db)) => db.message().to_owned(),
                    _ => source.to_string(),
                };
                tracing::error!(%action, error = %source, "storage unavailable");
                SyscallError::new(
                    ErrorCode::StorageUnavailable,
                    format!("the database cannot be written right now ({action}): {detail}"),
                )
            }
            other => {
                let reference = new_id("err_");
                tracing::error!(error = %other, %reference, "internal storage error");
                SyscallError::new(
                    ErrorCode::Internal,
                    format!("internal storage error (reference {reference} in the kernel log)"),
                )
            }
        }
    }
}

impl From<HookRejection> for SyscallError {
    fn from(rejection: HookRejection) -> Self {
        SyscallError::new(ErrorCode::HookRejected, rejection.to_string()).with_details(json!({
            "hook": rejection.hook,
            "skill": rejection.skill,
            "reason": rejection.reason,
        }))
    }
}

/// Commands change state, pass admission hooks and write the RuntimeLog; queries do
/// neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Command,
    Query,
}

impl OpKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            OpKind::Command => "command",
            OpKind::Query => "query",
        }
    }
}

/// Who may call an operation, checked before the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any authenticated caller.
    Anyone,
    /// Admin and system-owned services.
    System,
    /// The admin token only.
    Admin,
    /// Callers whose scope covers the agent named by this param.
    Agent { field: &'static str, write: bool },
    /// Callers whose scope covers the session named by this param.
    Session { field: &'static str, write: bool },
    /// Callers whose scope covers the agent owning the content named by this param.
    Content { field: &'static str },
    /// The handler checks, because the target is optional or derived.
    Scoped,
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::Anyone => "any token",
            Access::System => "admin, system services",
            Access::Admin => "admin",
            Access::Agent { write: false, .. } => "agent (read)",
            Access::Agent { write: true, .. } => "agent (write)",
            Access::Session { write: false, .. } => "session (read)",
            Access::Session { write: true, .. } => "session (write)",
            Access::Content { .. } => "content's agent (read)",
            Access::Scoped => "scoped (see description)",
        }
    }
}

/// What a handler hands back: data, the new revision of a changed control block, and
/// the ids the RuntimeLog should record.
#[derive(Debug)]
pub struct Out<R> {
    pub data: R,
    pub revision: Option<u64>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub targets: Option<Value>,
}

impl<R> Out<R> {
    pub fn new(data: R) -> Self {
        Self {
            data,
            revision: None,
            agent_id: None,
            session_id: None,
            targets: None,
        }
    }

    pub fn revision(mut self, revision: u64) -> Self {
        self.revision = Some(revision);
        self
    }

    pub fn agent(mut self, agent_id: &str) -> Self {
        self.agent_id = Some(agent_id.to_owned());
        self
    }

    pub fn session(mut self, agent_id: &str, session_id: &str) -> Self {
        self.agent_id = Some(agent_id.to_owned());
        self.session_id = Some(session_id.to_owned());
        self
    }

    pub fn targets(mut self, targets: Value) -> Self {
        self.targets = Some(targets);
        self
    }
}

/// The context a handler runs in.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub kernel: Arc<Kernel>,
    pub caller: Caller,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Ctx, Value) -> BoxFuture<Result<Out<Value>, SyscallError>> + Send + Sync>;

/// One registered operation.
#[derive(Clone)]
pub struct OpSpec {
    pub name: &'static str,
    pub kind: OpKind,
    pub access: Access,
    pub description: &'static str,
    pub params_schema: fn() -> Value,
    /// Name of the result type, for the docs.
    pub result: String,
    handler: Handler,
}

impl std::fmt::Debug for OpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn schema_of<P: JsonSchema>() -> Value {
    schemars::SchemaGenerator::default()
        .into_root_schema_for::<P>()
        .to_value()
}

/// `aos_sdk::protocol::ops::Page<aos_sdk::protocol::records::SessionCb>` → `Page<SessionCb>`.
fn short_type_name<R>() -> String {
    let full = std::any::type_name::<R>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for ch in full.chars() {
        if ch.is_alphanumeric() || ch == '_' || ch == ':' {
            segment.push(ch);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(ch);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

/// Decodes params strictly, naming the offending field in the error.
pub fn decode<P: DeserializeOwned>(op: &str, params: Value) -> Result<P, SyscallError> {
    serde_path_to_error::deserialize::<_, P>(params).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let message = if path == "." || path.is_empty() {
            format!("invalid params for `{op}`: {inner}")
        } else {
            format!("invalid params for `{op}`: `{path}`: {inner}")
        };
        SyscallError::new(ErrorCode::InvalidParams, message).with_details(json!({"path": path}))
    })
}

/// Builds an available operation from a typed handler.
fn op<P, R, F, Fut>(
    name: &'static str,
    kind: OpKind,
    access: Access,
    description: &'static str,
    handler: F,
) -> OpSpec
where
    P: DeserializeOwned + JsonSchema + Send + 'static,
    R: Serialize + 'static,
    F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out<R>, SyscallError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    OpSpec {
        name,
        kind,
        access,
        description,
        params_schema: schema_of::<P>,
        result: short_type_name::<R>(),
        handler: Arc::new(move |ctx, params| {
            let handler = handler.clone();
            Box::pin(async move {
                let params = decode::<P>(name, params)?;
                let out = handler(ctx, params).await?;
                let data = serde_json::to_value(&out.data).map_err(|e| {
                    SyscallError::new(
                        ErrorCode::Internal,
                        format!("encoding the result of `{name}`: {e}"),
                    )
                })?;
                Ok(Out {
                    data,
                    revision: out.revision,
                    agent_id: out.agent_id,
                    session_id: out.session_id,
                    targets: out.targets,
                })
            })
        }),
    }
}

/// Every kernel operation, by name.
#[derive(Debug)]
pub struct Registry {
    ops: BTreeMap<&'static str, OpSpec>,
}

impl Registry {
    /// The kernel's own operations.
    pub fn standard() -> Self {
        let mut ops = BTreeMap::new();
        for spec in system::ops()
            .into_iter()
            .chain(agent::ops())
            .chain(session::ops())
            .chain(dispatch::ops())
            .chain(context::ops())
            .chain(history::ops())
            .chain(content::ops())
            .chain(skill::ops())
            .chain(token::ops())
            .chain(misc::ops())
        {
            let name = spec.name;
            if ops.insert(name, spec).is_some() {
                // A duplicate is a programming error caught by the registry test.
                tracing::error!(op = name, "operation registered twice");
            }
        }
        Self { ops }
    }

    pub fn get(&self, name: &str) -> Option<&OpSpec> {
        self.ops.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &OpSpec> {
        self.ops.values()
    }

    /// Names close to `name`, best first, for "did you mean" messages.
    pub fn suggestions(&self, name: &str) -> Vec<&'static str> {
        let mut scored: Vec<(f64, &'static str)> = self
            .ops
            .keys()
            .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
            .filter(|(score, _)| *score > 0.8)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(3).map(|(_, n)| n).collect()
    }

    /// Descriptions for `GET /aoscp` and `aos syscalls --json`.
    pub fn describe(&self) -> Vec<OpDescription> {
        self.ops
            .values()
            .map(|spec| OpDescription {
                name: spec.name.to_owned(),
                kind: spec.kind.as_str().to_owned(),
                description: spec.description.to_owned(),
                access: spec.access.describe().to_owned(),
                status: "available".to_owned(),
                provided_by: None,
                params: (spec.params_schema)(),
            })
            .collect()
    }

    /// Runs one syscall for `caller` and returns its envelope. Never panics on bad
    /// input; every command, successful or not, leaves a RuntimeLog row. Names the
    /// kernel does not know go to the services that registered them.
    pub async fn call(
        &self,
        kernel: &Arc<Kernel>,
        caller: Caller,
        op: &str,
        params: Value,
    ) -> Envelope {
        let started = Instant::now();
        let params = match params {
            Value::Null => Value::Object(Map::new()),
            other => other,
        };
        let raw_targets = (
            params
                .get("agentId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            params
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        );
        let ctx = Ctx {
            kernel: kernel.clone(),
            caller,
        };
        let (name, kind, result): (String, OpKind, Result<Out<Value>, SyscallError>) =
            if let Some(spec) = self.ops.get(op) {
                let result = match authorize(&ctx, spec, &params).await {
                    Ok(()) => (spec.handler)(ctx.clone(), params).await,
                    Err(denied) => Err(denied),
                };
                (spec.name.to_owned(), spec.kind, result)
            } else if let Some(routes) = kernel.services.ops.routes(op) {
                let kind = routes.first().map_or(OpKind::Command, |r| r.kind);
                let result = call_service(&ctx, op, &routes, &raw_targets, &params).await;
                (op.to_owned(), kind, result)
            } else {
                return Envelope::failure(op, self.unknown(kernel, op));
            };
        if kind == OpKind::Command {
            let (agent_id, session_id, targets, outcome, data) = match &result {
                Ok(out) => (
                    out.agent_id.clone().or(raw_targets.0),
                    out.session_id.clone().or(raw_targets.1),
                    out.targets.clone(),
                    "ok".to_owned(),
                    None,
                ),
                Err(error) => (
                    raw_targets.0,
                    raw_targets.1,
                    None,
                    error.code.as_str().to_owned(),
                    Some(json!({"message": error.message})),
                ),
            };
            kernel
                .log
                .record(LogEntry {
                    seq: 0,
                    id: new_id("log_"),
                    ts: Timestamp::now(),
                    caller: ctx.caller.identity(),
                    op: name.clone(),
                    agent_id,
                    session_id,
                    outcome,
                    duration_us: started.elapsed().as_micros() as u64,
                    targets,
                    data,
                })
                .await;
        }
        match result {
            Ok(out) => Envelope::success(name, out.data, out.revision),
            Err(error) => {
                if error.code == ErrorCode::Internal {
                    tracing::error!(op = %name, caller = %ctx.caller.identity(), message = %error.message, "syscall failed");
                }
                Envelope::failure(name, error.into_body())
            }
        }
    }

    /// The error for an operation nobody provides, with close names.
    fn unknown(&self, kernel: &Kernel, op: &str) -> ErrorBody {
        let mut suggestions: Vec<String> = self
            .suggestions(op)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if suggestions.is_empty() {
            let mut scored: Vec<(f64, String)> = kernel
                .services
                .ops
                .names()
                .into_iter()
                .map(|candidate| (strsim::jaro_winkler(op, &candidate), candidate))
                .filter(|(score, _)| *score > 0.8)
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            suggestions = scored.into_iter().take(3).map(|(_, n)| n).collect();
        }
        let hint = if suggestions.is_empty() {
            "`aos syscalls` lists every operation".to_owned()
        } else {
            format!(
                "did you mean {}?",
                suggestions
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        ErrorBody::new(
            ErrorCode::NotFound,
            format!("unknown operation `{op}`; {hint}"),
        )
        .with_details(json!({"suggestions": suggestions}))
    }
}

/// Calls a service-provided operation on the service nearest to the caller.
async fn call_service(
    ctx: &Ctx,
    op: &str,
    routes: &[crate::services::ops::Route],
    targets: &(Option<String>, Option<String>),
    params: &Value,
) -> Result<Out<Value>, SyscallError> {
    if !params.is_object() {
        return Err(SyscallError::new(
            ErrorCode::InvalidParams,
            format!("params for `{op}` must be a JSON object"),
        ));
    }
    let (agent_hint, session_hint) = (targets.0.as_deref(), targets.1.as_deref());
    let session_agent = match (agent_hint, session_hint) {
        (None, Some(session)) if ctx.caller.confined_agent().is_none() => {
            ctx.kernel.session_agent(session).await.ok()
        }
        _ => None,
    };
    let route = crate::services::ops::choose(
        routes,
        &ctx.caller,
        session_hint,
        agent_hint.or(session_agent.as_deref()),
    )
    .ok_or_else(|| {
        SyscallError::new(
            ErrorCode::NotFound,
            format!(
                "`{op}` is provided by skill `{}`, but by no service that serves {}",
                routes[0].skill,
                ctx.caller.identity()
            ),
        )
    })?;
    let data = crate::services::ops::call(route, op, params, &ctx.caller).await?;
    let mut out = Out::new(data);
    out.agent_id = route.owner.agent_id().map(str::to_owned);
    out.session_id = route.owner.session_id().map(str::to_owned);
    Ok(out.targets(json!({"serviceId": route.service_id})))
}

/// Checks the declared access of `spec` against the caller's scope.
async fn authorize(ctx: &Ctx, spec: &OpSpec, params: &Value) -> Result<(), SyscallError> {
    let caller = &ctx.caller;
    let target = |field: &str| params.get(field).and_then(Value::as_str);
    match spec.access {
        Access::Anyone | Access::Scoped => Ok(()),
        Access::System if caller.is_system() => Ok(()),
        Access::Admin if caller.is_admin() => Ok(()),
        Access::System | Access::Admin => Err(caller.deny(format_args!("call `{}`", spec.name))),
        // Unconfined callers, and params without the field (decoding will name it).
        Access::Agent { .. } | Access::Session { .. } | Access::Content { .. }
            if caller.confined_agent().is_none() =>
        {
            Ok(())
        }
        Access::Agent { field, write } => match target(field) {
            None => Ok(()),
            Some(agent_id) => {
                let allowed = if write {
                    caller.can_write_agent(agent_id)
                } else {
                    caller.can_read_agent(agent_id)
                };
                allowed.then_some(()).ok_or_else(|| {
                    caller.deny(format_args!("call `{}` on agent {agent_id}", spec.name))
                })
            }
        },
        Access::Session { field, write } => match target(field) {
            None => Ok(()),
            Some(session_id) => {
                let agent_id = ctx.kernel.session_agent(session_id).await?;
                let allowed = if write {
                    caller.can_write_session(&agent_id, session_id)
                } else {
                    caller.can_read_agent(&agent_id)
                };
                allowed.then_some(()).ok_or_else(|| {
                    caller.deny(format_args!("call `{}` on session {session_id}", spec.name))
                })
            }
        },
        Access::Content { field } => match target(field) {
            None => Ok(()),
            Some(content_id) => {
                let info = ctx
                    .kernel
                    .store
                    .get_content_info(content_id)
                    .await?
                    .ok_or_else(|| SyscallError::not_found("content", content_id))?;
                caller
                    .can_read_agent(&info.agent_id)
                    .then_some(())
                    .ok_or_else(|| caller.deny(format_args!("read content {content_id}")))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_the_designed_surface() {
        let registry = Registry::standard();
        let expected = [
            "system.get",
            "system.update",
            "system.nodes.list",
            "agent.create",
            "agent.get",
            "agent.list",
            "agent.update",
            "agent.archive",
            "session.create",
            "session.get",
            "session.list",
            "session.update",
            "session.append",
            "session.archive",
            "session.interrupt",
            "session.dispatch",
            "session.compact",
            "session.context.get",
            "session.context.fold",
            "session.context.unfold",
            "session.context.rebuild",
            "session.context.compact",
            "session.history.list",
            "session.history.get",
            "session.history.search",
            "content.put",
            "content.get",
            "content.read",
            "content.search",
            "skill.index.refresh",
            "skill.list",
            "skill.get",
            "skill.load",
            "skill.unload",
            "skill.catalog.list",
            "skill.catalog.refresh",
            "skill.catalog.preview",
            "skill.default.resolve",
            "skill.start",
            "skill.stop",
            "service.list",
            "service.get",
            "dispatch.get",
            "dispatch.list",
            "hook.list",
            "event.publish",
            "token.issue",
            "token.list",
            "token.revoke",
            "usage.get",
            "log.list",
        ];
        for name in expected {
            assert!(registry.get(name).is_some(), "`{name}` is missing");
        }
        assert_eq!(
            registry.iter().count(),
            expected.len(),
            "an operation was added: list it here and in the docs"
        );
    }

    #[test]
    fn no_operation_takes_a_param_named_op() {
        // `op` names the operation in the flattened HTTP body, so a param with that
        // name could never be sent.
        for spec in Registry::standard().iter() {
            let schema = (spec.params_schema)();
            assert!(
                schema.get("properties").and_then(|p| p.get("op")).is_none(),
                "`{}` has a param named `op`",
                spec.name
            );
            assert!(
                spec.description.ends_with('.'),
                "`{}`: describe it in a sentence",
                spec.name
            );
        }
    }

    #[test]
    fn queries_are_named_as_reads() {
        for spec in Registry::standard().iter() {
            let read_like = [
                ".get", ".list", ".search", ".read", ".resolve", ".rebuild", ".preview",
            ]
            .iter()
            .any(|suffix| spec.name.ends_with(suffix));
            assert_eq!(
                spec.kind == OpKind::Query,
                read_like,
                "`{}` is a {} but its name suggests otherwise",
                spec.name,
                spec.kind.as_str()
            );
        }
    }

    #[test]
    fn suggestions_find_close_names() {
        let registry = Registry::standard();
        assert_eq!(
            registry.suggestions("sesion.get").first(),
            Some(&"session.get")
        );
        assert!(registry.suggestions("zzz").is_empty());
    }
}
