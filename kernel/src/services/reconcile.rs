//! Start reconcile: making the services that run for an owner match its defaults.
//!
//! Each owner level reconciles only the services it owns ([`started_at`]): the system
//! at start-up and when `system.update` changes its defaults, an agent when it is
//! created or its defaults change (and at start-up), a session at bootstrap and when
//! its defaults change (and at start-up). Reconcile starts what the defaults ask for
//! and is missing, and stops what it started earlier and the defaults no longer ask
//! for; services started by `skill.start` are left alone. Every start and stop it makes
//! asks `skill.start.before` / `skill.stop.before` like `skill.start` and `skill.stop`.

use std::sync::Arc;

use aos_sdk::protocol::{AgentStatus, SessionStatus};
use futures::future::join_all;

use super::StartOrigin;
use crate::auth::Owner;
use crate::kernel::Kernel;
use crate::sessions::defaults::started_at;
use crate::store::ListQuery;
use crate::syscall::SyscallError;

/// Reconciles the system's services.
pub async fn system(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    let system = kernel.system().await?;
    let wanted = started_at(&[&system.default_skills], 0);
    apply(kernel, Owner::System, wanted).await;
    Ok(())
}

/// Reconciles one agent's services.
pub async fn agent(kernel: &Arc<Kernel>, agent_id: &str) -> Result<(), SyscallError> {
    let system = kernel.system().await?;
    let agent = kernel.get_agent(agent_id).await?;
    let wanted = if agent.status == AgentStatus::Active {
        started_at(&[&system.default_skills, &agent.default_skills], 1)
    } else {
        Vec::new()
    };
    let owner = Owner::Agent {
        agent_id: agent.agent_id,
    };
    apply(kernel, owner, wanted).await;
    Ok(())
}

/// Reconciles one session's services.
pub async fn session(kernel: &Arc<Kernel>, session_id: &str) -> Result<(), SyscallError> {
    let session = kernel.get_session(session_id).await?;
    let wanted = if session.status == SessionStatus::Archived || session.default_skills.is_empty() {
        Vec::new()
    } else {
        let system = kernel.system().await?;
        let agent = kernel.get_agent(&session.agent_id).await?;
        started_at(
            &[
                &system.default_skills,
                &agent.default_skills,
                &session.default_skills,
            ],
            2,
        )
    };
    let owner = Owner::Session {
        agent_id: session.agent_id,
        session_id: session.session_id,
    };
    apply(kernel, owner, wanted).await;
    Ok(())
}

/// Reconciles every owner: the system, active agents, ready sessions. Used at start-up
/// and when a skill appears in the index.
pub async fn everything(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    system(kernel).await?;
    let mut cursor = None;
    loop {
        let page = kernel
            .store
            .list_agents(
                Some(AgentStatus::Active),
                &ListQuery {
                    after: cursor.clone(),
                    limit: 500,
                },
            )
            .await?;
        for agent in page.iter().filter(|a| has_start_rules(&a.default_skills)) {
            agent_or_log(kernel, &agent.agent_id).await;
        }
        if page.len() < 500 {
            break;
        }
        cursor = page.last().map(|a| a.agent_id.clone());
    }
    let mut cursor = None;
    loop {
        let page = kernel
            .store
            .list_sessions(
                None,
                Some(SessionStatus::Ready),
                &ListQuery {
                    after: cursor.clone(),
                    limit: 500,
                },
            )
            .await?;
        for found in page.iter().filter(|s| has_start_rules(&s.default_skills)) {
            if let Err(error) = session(kernel, &found.session_id).await {
                tracing::warn!(session_id = %found.session_id, %error, "service reconcile failed");
            }
        }
        if page.len() < 500 {
            break;
        }
        cursor = page.last().map(|s| s.session_id.clone());
    }
    Ok(())
}

async fn agent_or_log(kernel: &Arc<Kernel>, agent_id: &str) {
    if let Err(error) = agent(kernel, agent_id).await {
        tracing::warn!(agent_id, %error, "service reconcile failed");
    }
}

fn has_start_rules(rules: &[aos_sdk::protocol::SkillDefaultRule]) -> bool {
    rules.iter().any(|r| r.start.is_some())
}

async fn apply(kernel: &Arc<Kernel>, owner: Owner, wanted: Vec<String>) {
    let services = &kernel.services;
    if !services.is_accepting() {
        // Start-up reconciles everything once the kernel serves.
        return;
    }
    let snapshot = kernel.skills.snapshot();
    let startable: Vec<String> = wanted
        .into_iter()
        .filter(|name| match snapshot.get(name) {
            Some(skill) if skill.manifest.service.is_some() => true,
            Some(_) => {
                tracing::debug!(skill = %name, "default asks to start a skill without a service; ignored");
                false
            }
            None => {
                tracing::warn!(skill = %name, owner = %owner.describe(), "default asks to start a skill that is not in the index");
                false
            }
        })
        .collect();
    let extra: Vec<_> = services
        .default_started(&owner)
        .into_iter()
        .filter(|e| !startable.contains(&e.skill))
        .collect();
    let stops = join_all(
        extra
            .iter()
            .map(|e| services.stop(kernel, e, "no longer in the owner's default skills")),
    )
    .await;
    for (entry, result) in extra.iter().zip(stops) {
        if let Err(error) = result {
            tracing::warn!(service = %entry.id, skill = %entry.skill, owner = %owner.describe(), %error, "default service keeps running");
        }
    }
    let results = join_all(startable.iter().map(|name| {
        services.start(
            kernel,
            name,
            owner.clone(),
            StartOrigin::Defaults,
            "default skills",
        )
    }))
    .await;
    for (name, result) in startable.iter().zip(results) {
        if let Err(error) = result {
            tracing::warn!(skill = %name, owner = %owner.describe(), %error, "default service did not start");
        }
    }
}
