//! `skill.*` and `service.*`: the skill index, loading skill text into sessions, the
//! catalog an owner sees, and default resolution.

use aos_sdk::protocol::{
    AgentStatus, CatalogItem, CatalogParams, DefaultResolveParams, DefaultResolveResult, ErrorCode,
    IndexRefreshResult, NoParams, Origin, OwnerType, PartBody, Role, ServiceIdParams, ServiceInfo,
    ServiceListParams, SkillDetail, SkillLoadCause, SkillLoadParams, SkillLoaded, SkillManifest,
    SkillNameParams, SkillStartParams,
};
use serde_json::{Value, json};

use super::session::{AppendRequest, append_message, require_ready};
use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::auth::Owner;
use crate::hooks::{Admission, EventName, HookScope, Transform};
use crate::services::{ServiceEntry, StartOrigin, may_control, visible_to};
use crate::sessions::defaults::resolve;
use crate::skills::reload::reload;
use crate::skills::{IndexedSkill, Snapshot};

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "skill.index.refresh",
            OpKind::Command,
            Access::System,
            "Rescan the skill root and rebuild the skill index.",
            index_refresh,
        ),
        op(
            "skill.list",
            OpKind::Query,
            Access::Anyone,
            "List every indexed skill, broken ones included with their error.",
            list,
        ),
        op(
            "skill.get",
            OpKind::Query,
            Access::Anyone,
            "Read one skill's manifest and text.",
            get,
        ),
        op(
            "skill.load",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Load a skill's text into a session (a `skill-load` fact in history).",
            load,
        ),
        op(
            "skill.unload",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Drop a loaded skill's text from the session's context from now on (a `skill-unload` fact).",
            unload,
        ),
        op(
            "skill.catalog.list",
            OpKind::Query,
            Access::Scoped,
            "The usable skills (name and description), optionally filtered by words; no hooks run.",
            catalog_list,
        ),
        op(
            "skill.catalog.refresh",
            OpKind::Command,
            Access::Scoped,
            "Compute the catalog through the discovery hooks (`skill.discovery.before`, `skill.discovery.resolve`).",
            catalog_refresh,
        ),
        op(
            "skill.catalog.preview",
            OpKind::Query,
            Access::Scoped,
            "What a catalog refresh would select for an agent or session, without refreshing: the selection transform `skill.discovery.resolve` runs, the admission hook `skill.discovery.before` does not, and nothing is announced.",
            catalog_preview,
        ),
        op(
            "skill.default.resolve",
            OpKind::Query,
            Access::Scoped,
            "The default skills a new session would load, and the services its owner would start.",
            default_resolve,
        ),
        op(
            "skill.start",
            OpKind::Command,
            Access::Scoped,
            "Start a skill's service for an owner (system, an agent, or a session; default: the caller's own level) and wait until it says hello. Returns the service; starting a running one returns it unchanged.",
            start,
        ),
        op(
            "skill.stop",
            OpKind::Command,
            Access::Scoped,
            "Stop a running service: `shutdown`, a 5 s grace period, then SIGKILL of its process group.",
            stop,
        ),
        op(
            "service.list",
            OpKind::Query,
            Access::Scoped,
            "List services with state, pid, restarts, last error and what each registered; scoped tokens see their own agent's or session's.",
            service_list,
        ),
        op(
            "service.get",
            OpKind::Query,
            Access::Scoped,
            "Read one service.",
            service_get,
        ),
    ]
}

fn usable<'a>(
    snapshot: &'a Snapshot,
    name: &str,
) -> Result<&'a std::sync::Arc<IndexedSkill>, SyscallError> {
    if let Some(skill) = snapshot.get(name) {
        return Ok(skill);
    }
    match snapshot
        .all
        .iter()
        .find(|s| s.manifest.name == name)
        .and_then(|s| s.manifest.error.clone())
    {
        Some(error) => Err(SyscallError::new(
            ErrorCode::NotFound,
            format!(
                "skill `{name}` is broken: {}{} ({})",
                error.message,
                error
                    .line
                    .map(|l| format!(" at line {l}"))
                    .unwrap_or_default(),
                error.file
            ),
        )
        .with_details(json!({"kind": "skill", "id": name, "error": error}))),
        None => Err(SyscallError::not_found("skill", name)),
    }
}

async fn index_refresh(ctx: Ctx, _: NoParams) -> Result<Out<IndexRefreshResult>, SyscallError> {
    let (snapshot, changes) = reload(&ctx.kernel, "skill.index.refresh", true).await?;
    Ok(Out::new(IndexRefreshResult {
        indexed_count: snapshot.usable_count() as u64,
        error_count: snapshot.error_count() as u64,
        added: changes.added,
        changed: changes.changed,
        removed: changes.removed,
    }))
}

/// The owner a `skill.start` asks for, checked against what exists and the caller.
async fn start_owner(ctx: &Ctx, params: &SkillStartParams) -> Result<Owner, SyscallError> {
    let caller = &ctx.caller;
    let owner_type =
        params
            .owner_type
            .unwrap_or(match (caller.confined_agent(), caller.confined_session()) {
                (None, _) => OwnerType::System,
                (Some(_), None) => OwnerType::Agent,
                (Some(_), Some(_)) => OwnerType::Session,
            });
    let owner_id = params.owner_id.clone().or_else(|| match owner_type {
        OwnerType::System => None,
        OwnerType::Agent => caller.confined_agent().map(str::to_owned),
        OwnerType::Session => caller.confined_session().map(str::to_owned),
    });
    let owner = match (owner_type, owner_id) {
        (OwnerType::System, None) => Owner::System,
        (OwnerType::System, Some(_)) => {
            return Err(SyscallError::invalid(
                "ownerId",
                "must be absent for system-owned services",
            ));
        }
        (OwnerType::Agent, Some(agent_id)) => {
            let agent = ctx.kernel.get_agent(&agent_id).await?;
            if agent.status == AgentStatus::Archived {
                return Err(SyscallError::new(
                    ErrorCode::AgentArchived,
                    format!("agent `{agent_id}` is archived: no services can start for it"),
                ));
            }
            Owner::Agent { agent_id }
        }
        (OwnerType::Session, Some(session_id)) => {
            let session = ctx.kernel.get_session(&session_id).await?;
            require_ready(&session)?;
            Owner::Session {
                agent_id: session.agent_id,
                session_id,
            }
        }
        (_, None) => {
            return Err(SyscallError::invalid(
                "ownerId",
                "is required for agent- and session-owned services (an agent or session id)",
            ));
        }
    };
    if !may_control(caller, &owner) {
        return Err(caller.deny(format_args!("start services for {}", owner.describe())));
    }
    Ok(owner)
}

async fn start(ctx: Ctx, params: SkillStartParams) -> Result<Out<ServiceInfo>, SyscallError> {
    let snapshot = ctx.kernel.skills.snapshot();
    let skill = usable(&snapshot, &params.name)?;
    if skill.manifest.service.is_none() {
        return Err(SyscallError::invalid(
            "name",
            format!(
                "skill `{}` has no service to start (its SKILL.md declares no `service`)",
                params.name
            ),
        ));
    }
    let owner = start_owner(&ctx, &params).await?;
    let entry = ctx
        .kernel
        .services
        .start(
            &ctx.kernel,
            &params.name,
            owner.clone(),
            StartOrigin::Explicit,
            "skill.start",
        )
        .await?;
    let mut out = Out::new(entry.info()).targets(json!({"serviceId": entry.id}));
    out.agent_id = owner.agent_id().map(str::to_owned);
    out.session_id = owner.session_id().map(str::to_owned);
    Ok(out)
}

fn visible_service(
    ctx: &Ctx,
    service_id: &str,
) -> Result<std::sync::Arc<ServiceEntry>, SyscallError> {
    let entry = ctx
        .kernel
        .services
        .get(service_id)
        .ok_or_else(|| SyscallError::not_found("service", service_id))?;
    if !visible_to(&ctx.caller, &entry.owner) {
        return Err(ctx.caller.deny(format_args!("see service {service_id}")));
    }
    Ok(entry)
}

async fn stop(ctx: Ctx, params: ServiceIdParams) -> Result<Out<ServiceInfo>, SyscallError> {
    let entry = visible_service(&ctx, &params.service_id)?;
    if !may_control(&ctx.caller, &entry.owner) {
        return Err(ctx
            .caller
            .deny(format_args!("stop services of {}", entry.owner.describe())));
    }
    ctx.kernel
        .services
        .stop(&ctx.kernel, &entry, "skill.stop")
        .await?;
    let mut out = Out::new(entry.info()).targets(json!({"serviceId": entry.id}));
    out.agent_id = entry.owner.agent_id().map(str::to_owned);
    out.session_id = entry.owner.session_id().map(str::to_owned);
    Ok(out)
}

async fn service_list(
    ctx: Ctx,
    params: ServiceListParams,
) -> Result<Out<Vec<ServiceInfo>>, SyscallError> {
    if let Some(skill) = &params.skill {
        validate::text("skill", skill, 1, 64)?;
    }
    Ok(Out::new(ctx.kernel.services.list(&ctx.caller, &params)))
}

async fn service_get(ctx: Ctx, params: ServiceIdParams) -> Result<Out<ServiceInfo>, SyscallError> {
    Ok(Out::new(visible_service(&ctx, &params.service_id)?.info()))
}

async fn list(ctx: Ctx, _: NoParams) -> Result<Out<Vec<SkillManifest>>, SyscallError> {
    let snapshot = ctx.kernel.skills.snapshot();
    Ok(Out::new(
        snapshot.all.iter().map(|s| s.manifest.clone()).collect(),
    ))
}

async fn get(ctx: Ctx, params: SkillNameParams) -> Result<Out<SkillDetail>, SyscallError> {
    let snapshot = ctx.kernel.skills.snapshot();
    if let Some(skill) = snapshot.get(&params.name) {
        return Ok(Out::new(SkillDetail {
            manifest: skill.manifest.clone(),
            text: skill.text.as_deref().unwrap_or_default().to_owned(),
        }));
    }
    // Broken skills are shown with their error rather than hidden.
    match snapshot.all.iter().find(|s| s.manifest.name == params.name) {
        Some(broken) => Ok(Out::new(SkillDetail {
            manifest: broken.manifest.clone(),
            text: String::new(),
        })),
        None => Err(SyscallError::not_found("skill", &params.name)),
    }
}

async fn load(ctx: Ctx, params: SkillLoadParams) -> Result<Out<SkillLoaded>, SyscallError> {
    let session = ctx.kernel.get_session(&params.session_id).await?;
    require_ready(&session)?;
    let snapshot = ctx.kernel.skills.snapshot();
    let skill = usable(&snapshot, &params.name)?;
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    ctx.kernel
        .hooks
        .admit(Admission::SkillLoadBefore, HookScope::session(agent_id, session_id), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "name": params.name, "cause": "explicit"}),
                json!({}),
            )
        })
        .await?;
    let text = skill.text.as_deref().unwrap_or_default().to_owned();
    let (message, revision) = append_message(
        &ctx.kernel,
        AppendRequest {
            agent_id,
            session_id,
            role: Role::User,
            origin: Origin::Aos,
            parts: vec![PartBody::SkillLoad {
                name: params.name.clone(),
                cause: SkillLoadCause::Explicit,
                text: text.clone(),
            }],
            dispatch_id: None,
            kernel_parts: true,
        },
    )
    .await?;
    ctx.kernel.emit(
        EventName::SkillLoadAfter,
        Some(agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "name": params.name, "cause": "explicit", "seq": message.seq}),
    );
    Ok(Out::new(SkillLoaded {
        name: params.name.clone(),
        session_id: session_id.to_owned(),
        message_id: message.id.clone(),
        seq: message.seq,
        text,
    })
    .revision(revision)
    .session(agent_id, session_id)
    .targets(json!({"skill": params.name, "seq": message.seq})))
}

async fn unload(ctx: Ctx, params: SkillLoadParams) -> Result<Out<SkillLoaded>, SyscallError> {
    let session = ctx.kernel.get_session(&params.session_id).await?;
    require_ready(&session)?;
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    if !is_loaded(&ctx, session_id, &params.name).await? {
        return Err(SyscallError::new(
            ErrorCode::NotFound,
            format!(
                "skill `{}` is not loaded in session `{session_id}`",
                params.name
            ),
        ));
    }
    let (message, revision) = append_message(
        &ctx.kernel,
        AppendRequest {
            agent_id,
            session_id,
            role: Role::User,
            origin: Origin::Aos,
            parts: vec![PartBody::SkillUnload {
                name: params.name.clone(),
            }],
            dispatch_id: None,
            kernel_parts: true,
        },
    )
    .await?;
    ctx.kernel.emit(
        EventName::SkillUnloadAfter,
        Some(agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "name": params.name, "seq": message.seq}),
    );
    Ok(Out::new(SkillLoaded {
        name: params.name.clone(),
        session_id: session_id.to_owned(),
        message_id: message.id,
        seq: message.seq,
        text: String::new(),
    })
    .revision(revision)
    .session(agent_id, session_id))
}

/// Whether the newest load/unload fact for `name` in the session is a load.
async fn is_loaded(ctx: &Ctx, session_id: &str, name: &str) -> Result<bool, SyscallError> {
    let needle = format!("\"name\":{}", Value::String(name.to_owned()));
    let mut before = None;
    loop {
        let batch = ctx
            .kernel
            .store
            .find_messages_containing(session_id, &needle, before, 200)
            .await?;
        for message in &batch {
            for part in message.parts.iter().rev() {
                match &part.body {
                    PartBody::SkillLoad { name: n, .. } if n == name => return Ok(true),
                    PartBody::SkillUnload { name: n } if n == name => return Ok(false),
                    _ => {}
                }
            }
        }
        match batch.last() {
            Some(last) if batch.len() == 200 => before = Some(last.seq),
            _ => return Ok(false),
        }
    }
}

/// The agent and session a catalog or resolution request concerns, after checking the
/// caller may see them.
async fn owner_of(
    ctx: &Ctx,
    agent_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<(Option<String>, Option<String>), SyscallError> {
    match (agent_id, session_id) {
        (_, Some(session_id)) => {
            let session = ctx.kernel.get_session(session_id).await?;
            if agent_id.is_some_and(|a| a != session.agent_id) {
                return Err(SyscallError::invalid(
                    "agentId",
                    format!("does not own session `{session_id}`"),
                ));
            }
            if !ctx.caller.can_read_agent(&session.agent_id) {
                return Err(ctx.caller.deny(format_args!("read session {session_id}")));
            }
            Ok((Some(session.agent_id), Some(session.session_id)))
        }
        (Some(agent_id), None) => {
            let agent = ctx.kernel.get_agent(agent_id).await?;
            if !ctx.caller.can_read_agent(&agent.agent_id) {
                return Err(ctx.caller.deny(format_args!("read agent {agent_id}")));
            }
            Ok((Some(agent.agent_id), None))
        }
        (None, None) => Ok((None, None)),
    }
}

fn matching(snapshot: &Snapshot, query: Option<&str>, limit: Option<u32>) -> Vec<CatalogItem> {
    let words: Vec<String> = query
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    snapshot
        .by_name
        .values()
        .filter(|s| {
            let haystack = format!("{} {}", s.manifest.name, s.manifest.description).to_lowercase();
            words.iter().all(|w| haystack.contains(w.as_str()))
        })
        .take(limit.unwrap_or(u32::MAX) as usize)
        .map(|s| CatalogItem {
            name: s.manifest.name.clone(),
            description: s.manifest.description.clone(),
        })
        .collect()
}

fn check_catalog_params(params: &CatalogParams) -> Result<(), SyscallError> {
    if let Some(query) = &params.query {
        validate::text("query", query, 0, 500)?;
    }
    if let Some(limit) = params.limit {
        validate::range("limit", limit, 1, 1000)?;
    }
    Ok(())
}

async fn catalog_list(
    ctx: Ctx,
    params: CatalogParams,
) -> Result<Out<Vec<CatalogItem>>, SyscallError> {
    check_catalog_params(&params)?;
    owner_of(
        &ctx,
        params.agent_id.as_deref(),
        params.session_id.as_deref(),
    )
    .await?;
    let snapshot = ctx.kernel.skills.snapshot();
    Ok(Out::new(matching(
        &snapshot,
        params.query.as_deref(),
        params.limit,
    )))
}

async fn catalog_refresh(
    ctx: Ctx,
    params: CatalogParams,
) -> Result<Out<Vec<CatalogItem>>, SyscallError> {
    discover(&ctx, &params, true).await.map(Out::new)
}

async fn catalog_preview(
    ctx: Ctx,
    params: CatalogParams,
) -> Result<Out<Vec<CatalogItem>>, SyscallError> {
    discover(&ctx, &params, false).await.map(Out::new)
}

/// The catalog for the owner `params` name: matching skills, then the selection of
/// `skill.discovery.resolve`. A refresh (`refresh`) first passes `skill.discovery.before`
/// (which may rewrite the query) and announces the result; a preview does neither.
async fn discover(
    ctx: &Ctx,
    params: &CatalogParams,
    refresh: bool,
) -> Result<Vec<CatalogItem>, SyscallError> {
    check_catalog_params(params)?;
    let (agent_id, session_id) = owner_of(
        ctx,
        params.agent_id.as_deref(),
        params.session_id.as_deref(),
    )
    .await?;
    let scope = HookScope {
        agent_id: agent_id.as_deref(),
        session_id: session_id.as_deref(),
    };
    let mut query = params.query.clone().unwrap_or_default();
    if refresh
        && let Some(output) = ctx
            .kernel
            .hooks
            .admit(Admission::SkillDiscoveryBefore, scope, || {
                (
                    json!({"agentId": agent_id, "sessionId": session_id, "query": query}),
                    json!({"query": query}),
                )
            })
            .await?
        && let Some(rewritten) = output.get("query").and_then(Value::as_str)
    {
        query = rewritten.to_owned();
    }
    let snapshot = ctx.kernel.skills.snapshot();
    let mut catalog = matching(&snapshot, Some(&query), params.limit);
    if let Some(output) = ctx
        .kernel
        .hooks
        .transform(Transform::SkillDiscoveryResolve, scope, || {
            let names: Vec<&str> = catalog.iter().map(|c| c.name.as_str()).collect();
            (
                json!({"agentId": agent_id, "sessionId": session_id, "query": query, "candidates": catalog}),
                json!({"selected": names}),
            )
        })
        .await
        && let Some(selected) = output.get("selected").and_then(Value::as_array)
    {
        let chosen: Vec<&str> = selected.iter().filter_map(Value::as_str).collect();
        catalog = chosen
            .iter()
            .filter_map(|name| catalog.iter().find(|c| c.name == *name).cloned())
            .collect();
    }
    if refresh {
        ctx.kernel.emit(
            EventName::SkillDiscoveryAfter,
            agent_id.as_deref(),
            session_id.as_deref(),
            json!({"agentId": agent_id, "sessionId": session_id, "catalog": catalog}),
        );
    }
    Ok(catalog)
}

async fn default_resolve(
    ctx: Ctx,
    params: DefaultResolveParams,
) -> Result<Out<DefaultResolveResult>, SyscallError> {
    let (agent_id, session_id) = owner_of(
        &ctx,
        params.agent_id.as_deref(),
        params.session_id.as_deref(),
    )
    .await?;
    if agent_id.is_none() && !ctx.caller.is_system() {
        return Err(ctx
            .caller
            .deny("resolve the system layer alone (pass agentId or sessionId)"));
    }
    let system = ctx.kernel.system().await?;
    let agent_rules = match &agent_id {
        Some(id) => ctx.kernel.get_agent(id).await?.default_skills,
        None => Vec::new(),
    };
    let session_rules = match &session_id {
        Some(id) => ctx.kernel.get_session(id).await?.default_skills,
        None => Vec::new(),
    };
    let owner = if session_id.is_some() {
        OwnerType::Session
    } else if agent_id.is_some() {
        OwnerType::Agent
    } else {
        OwnerType::System
    };
    let resolved = resolve(&[&system.default_skills, &agent_rules, &session_rules]);
    tracing::debug!(owner = owner.as_str(), "resolved default skills");
    Ok(Out::new(DefaultResolveResult {
        load: resolved.load,
        start: resolved.start,
    }))
}
