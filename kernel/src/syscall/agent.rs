//! `agent.*`: create, read, update, archive agents.

use aos_sdk::protocol::{
    AgentCb, AgentCreateParams, AgentIdParams, AgentListParams, AgentStatus, AgentUpdateParams,
    ErrorCode, Page, SessionStatus, Timestamp, Usage,
};
use serde_json::json;

use super::session::archive_session;
use super::validate::{self, Layer};
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::auth::Owner;
use crate::hooks::EventName;
use crate::ids::new_id;
use crate::services::reconcile;
use crate::store::ListQuery;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "agent.create",
            OpKind::Command,
            Access::System,
            "Create an agent: an identity with its own workspace, default skills, priority and model.",
            create,
        ),
        op(
            "agent.get",
            OpKind::Query,
            Access::Agent {
                field: "agentId",
                write: false,
            },
            "Read an agent control block.",
            get,
        ),
        op(
            "agent.list",
            OpKind::Query,
            Access::Scoped,
            "List agents in creation order; scoped tokens see only their own agent.",
            list,
        ),
        op(
            "agent.update",
            OpKind::Command,
            Access::Agent {
                field: "agentId",
                write: true,
            },
            "Change an agent's settings; only the fields given change (null clears an override).",
            update,
        ),
        op(
            "agent.archive",
            OpKind::Command,
            Access::System,
            "Archive an agent and all its sessions. Reads keep working; changes are refused. Refused while one of its sessions runs a dispatch.",
            archive,
        ),
    ]
}

fn validate_common(
    display_name: Option<&str>,
    description: Option<&str>,
    priority: Option<i32>,
    model: Option<&str>,
    auto_fold: Option<u64>,
) -> Result<(), SyscallError> {
    if let Some(name) = display_name {
        validate::text("displayName", name, 1, 200)?;
    }
    if let Some(description) = description {
        validate::text("description", description, 0, 4000)?;
    }
    if let Some(p) = priority {
        validate::priority("priority", p)?;
    }
    if let Some(model) = model {
        validate::model("model", model)?;
    }
    if let Some(t) = auto_fold {
        validate::auto_fold_threshold("autoFoldThreshold", t)?;
    }
    Ok(())
}

fn archived(agent_id: &str) -> SyscallError {
    SyscallError::new(
        ErrorCode::AgentArchived,
        format!("agent `{agent_id}` is archived: it can be read but not changed"),
    )
}

async fn create(ctx: Ctx, params: AgentCreateParams) -> Result<Out<AgentCb>, SyscallError> {
    validate_common(
        params.display_name.as_deref(),
        params.description.as_deref(),
        params.priority,
        params.model.as_deref(),
        params.auto_fold_threshold,
    )?;
    if let Some(rules) = &params.default_skills {
        validate::default_skills("defaultSkills", rules, Layer::Agent)?;
    }
    if let Some(budgets) = &params.budgets {
        validate::object("budgets", budgets)?;
    }
    if let Some(m) = &params.metadata {
        validate::metadata("metadata", m)?;
    }
    let now = Timestamp::now();
    let agent_id = new_id("agt_");
    let agent = AgentCb {
        display_name: params.display_name.unwrap_or_else(|| agent_id.clone()),
        agent_id,
        description: params.description,
        status: AgentStatus::Active,
        default_skills: params.default_skills.unwrap_or_default(),
        priority: params.priority.unwrap_or(0),
        model: params.model,
        auto_fold_threshold: params.auto_fold_threshold,
        budgets: params.budgets,
        metadata: params.metadata.unwrap_or_default(),
        usage: Usage::default(),
        created_by: ctx.caller.identity(),
        revision: 1,
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    ctx.kernel.store.insert_agent(&agent).await?;
    ctx.kernel.emit(
        EventName::AgentStarted,
        Some(&agent.agent_id),
        None,
        json!({"agentId": agent.agent_id, "cause": "create"}),
    );
    if agent.default_skills.iter().any(|r| r.start.is_some()) {
        reconcile::agent(&ctx.kernel, &agent.agent_id).await?;
    }
    Ok(Out::new(agent.clone()).revision(1).agent(&agent.agent_id))
}

async fn get(ctx: Ctx, params: AgentIdParams) -> Result<Out<AgentCb>, SyscallError> {
    Ok(Out::new(ctx.kernel.get_agent(&params.agent_id).await?))
}

async fn list(ctx: Ctx, params: AgentListParams) -> Result<Out<Page<AgentCb>>, SyscallError> {
    let limit = validate::page_limit(params.limit, 100)?;
    if let Some(own) = ctx.caller.confined_agent() {
        let agent = ctx.kernel.get_agent(own).await?;
        let shown = params.status.is_none_or(|s| s == agent.status)
            && params.cursor.as_deref().is_none_or(|c| c < own);
        return Ok(Out::new(Page {
            items: if shown { vec![agent] } else { vec![] },
            next_cursor: None,
        }));
    }
    let items = ctx
        .kernel
        .store
        .list_agents(
            params.status,
            &ListQuery {
                after: params.cursor,
                limit,
            },
        )
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|a| a.agent_id.clone()))
        .flatten();
    Ok(Out::new(Page { items, next_cursor }))
}

async fn update(ctx: Ctx, params: AgentUpdateParams) -> Result<Out<AgentCb>, SyscallError> {
    validate_common(
        params.display_name.as_deref(),
        params.description.as_ref().and_then(|d| d.as_deref()),
        params.priority,
        params.model.as_ref().and_then(|m| m.as_deref()),
        params.auto_fold_threshold.flatten(),
    )?;
    if let Some(rules) = &params.default_skills {
        validate::default_skills("defaultSkills", rules, Layer::Agent)?;
    }
    if let Some(Some(budgets)) = &params.budgets {
        validate::object("budgets", budgets)?;
    }
    if let Some(m) = &params.metadata {
        validate::metadata("metadata", m)?;
    }
    let mut changed: Vec<&str> = Vec::new();
    let agent = ctx
        .kernel
        .update_agent(&params.agent_id, |a| {
            if a.status == AgentStatus::Archived {
                return Err(archived(&a.agent_id));
            }
            changed.clear();
            if let Some(v) = &params.display_name {
                a.display_name = v.clone();
                changed.push("displayName");
            }
            if let Some(v) = &params.description {
                a.description = v.clone();
                changed.push("description");
            }
            if let Some(v) = &params.default_skills {
                a.default_skills = v.clone();
                changed.push("defaultSkills");
            }
            if let Some(v) = params.priority {
                a.priority = v;
                changed.push("priority");
            }
            if let Some(v) = &params.model {
                a.model = v.clone();
                changed.push("model");
            }
            if let Some(v) = params.auto_fold_threshold {
                a.auto_fold_threshold = v;
                changed.push("autoFoldThreshold");
            }
            if let Some(v) = &params.budgets {
                a.budgets = v.clone();
                changed.push("budgets");
            }
            if let Some(v) = &params.metadata {
                a.metadata = v.clone();
                changed.push("metadata");
            }
            Ok(())
        })
        .await?;
    ctx.kernel.emit(
        EventName::AgentUpdated,
        Some(&agent.agent_id),
        None,
        json!({"agentId": agent.agent_id, "revision": agent.revision, "changed": changed}),
    );
    if changed.contains(&"defaultSkills") {
        reconcile::agent(&ctx.kernel, &agent.agent_id).await?;
    }
    Ok(Out::new(agent.clone())
        .revision(agent.revision)
        .agent(&agent.agent_id))
}

async fn archive(ctx: Ctx, params: AgentIdParams) -> Result<Out<AgentCb>, SyscallError> {
    let agent = ctx.kernel.get_agent(&params.agent_id).await?;
    if agent.status == AgentStatus::Archived {
        return Err(archived(&agent.agent_id));
    }
    // The agent's own services must be allowed to stop (`skill.stop.before`) before
    // anything is archived; each session's are asked as it is archived.
    let owner = Owner::Agent {
        agent_id: agent.agent_id.clone(),
    };
    ctx.kernel
        .services
        .admit_owner_stops(&ctx.kernel, &owner)
        .await?;
    // Archive the sessions first: if one is busy, the agent stays active and the
    // caller can interrupt and retry.
    let mut archived_sessions = archive_sessions_of(&ctx.kernel, &agent.agent_id).await?;
    let now = Timestamp::now();
    let agent = ctx
        .kernel
        .update_agent(&params.agent_id, |a| {
            if a.status == AgentStatus::Archived {
                return Err(archived(&a.agent_id));
            }
            a.status = AgentStatus::Archived;
            a.archived_at = Some(now);
            Ok(())
        })
        .await?;
    // A session created while the first sweep ran is caught here: creation checks the
    // agent's status, so none can appear after this point.
    archived_sessions.extend(archive_sessions_of(&ctx.kernel, &agent.agent_id).await?);
    ctx.kernel
        .services
        .stop_owned_by(&agent.agent_id, None)
        .await;
    ctx.kernel.emit(
        EventName::AgentArchived,
        Some(&agent.agent_id),
        None,
        json!({"agentId": agent.agent_id, "sessions": archived_sessions.len()}),
    );
    Ok(Out::new(agent.clone())
        .revision(agent.revision)
        .agent(&agent.agent_id)
        .targets(json!({"archivedSessions": archived_sessions})))
}

async fn archive_sessions_of(
    kernel: &crate::kernel::Kernel,
    agent_id: &str,
) -> Result<Vec<String>, SyscallError> {
    let mut archived = Vec::new();
    let mut cursor = None;
    loop {
        let page = kernel
            .store
            .list_sessions(
                Some(agent_id),
                None,
                &ListQuery {
                    after: cursor.clone(),
                    limit: 500,
                },
            )
            .await?;
        for session in &page {
            if session.status != SessionStatus::Archived {
                archive_session(kernel, &session.session_id).await?;
                archived.push(session.session_id.clone());
            }
        }
        if page.len() < 500 {
            return Ok(archived);
        }
        cursor = page.last().map(|s| s.session_id.clone());
    }
}
