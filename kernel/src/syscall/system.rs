//! `system.*`: the system control block.

use aos_sdk::protocol::{NoParams, NodeInfo, SystemCb, SystemNodes, SystemUpdateParams};
use serde_json::json;

use super::validate::{self, Layer};
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::hooks::EventName;
use crate::services::reconcile;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "system.get",
            OpKind::Query,
            Access::System,
            "Read the system control block: default skills, thresholds, providers, default model.",
            get,
        ),
        op(
            "system.update",
            OpKind::Command,
            Access::System,
            "Change system-wide settings. Fields set in aoscb.json are re-applied at every start.",
            update,
        ),
        op(
            "system.nodes.list",
            OpKind::Query,
            Access::System,
            "List the kernel nodes sharing this database, with their advertised URL, heartbeat and whether they are alive.",
            nodes,
        ),
    ]
}

async fn nodes(ctx: Ctx, _: NoParams) -> Result<Out<SystemNodes>, SyscallError> {
    let kernel = &ctx.kernel;
    let nodes = match &kernel.cluster {
        Some(cluster) => cluster.nodes(kernel.config.lease_ttl).await.map_err(|e| {
            SyscallError::new(
                aos_sdk::protocol::ErrorCode::StorageUnavailable,
                format!("reading the node list: {e}"),
            )
        })?,
        None => {
            let now = aos_sdk::protocol::Timestamp::now();
            let started = now.plus_millis(-(kernel.started.elapsed().as_millis() as i64));
            vec![NodeInfo {
                node_id: kernel.node_id.clone(),
                url: kernel.services.api_url(),
                started_at: started,
                heartbeat_at: now,
                alive: true,
            }]
        }
    };
    Ok(Out::new(SystemNodes {
        backend: kernel.store.backend().to_owned(),
        node_id: kernel.node_id.clone(),
        nodes,
    }))
}

async fn get(ctx: Ctx, _: NoParams) -> Result<Out<SystemCb>, SyscallError> {
    Ok(Out::new(ctx.kernel.system().await?))
}

async fn update(ctx: Ctx, params: SystemUpdateParams) -> Result<Out<SystemCb>, SyscallError> {
    if let Some(rules) = &params.default_skills {
        validate::default_skills("defaultSkills", rules, Layer::System)?;
    }
    if let Some(t) = params.auto_fold_threshold {
        validate::auto_fold_threshold("autoFoldThreshold", t)?;
    }
    if let Some(t) = params.compaction_threshold {
        validate::range("compactionThreshold", t, 1024, 100_000_000)?;
    }
    if let Some(t) = params.max_turns {
        validate::range("maxTurns", t, 1, 10_000)?;
    }
    if let Some(Some(model)) = &params.default_model {
        validate::model("defaultModel", model)?;
    }
    if let Some(providers) = &params.providers {
        validate::providers("providers", providers)?;
    }
    let mut changed: Vec<&str> = Vec::new();
    let system = ctx
        .kernel
        .update_system(|s| {
            changed.clear();
            if let Some(rules) = &params.default_skills {
                s.default_skills = rules.clone();
                changed.push("defaultSkills");
            }
            if let Some(t) = params.auto_fold_threshold {
                s.auto_fold_threshold = t;
                changed.push("autoFoldThreshold");
            }
            if let Some(t) = params.compaction_threshold {
                s.compaction_threshold = t;
                changed.push("compactionThreshold");
            }
            if let Some(t) = params.max_turns {
                s.max_turns = t;
                changed.push("maxTurns");
            }
            if let Some(model) = &params.default_model {
                s.default_model = model.clone();
                changed.push("defaultModel");
            }
            if let Some(providers) = &params.providers {
                s.providers = providers.clone();
                changed.push("providers");
            }
            Ok(())
        })
        .await?;
    ctx.kernel.emit(
        EventName::SystemUpdated,
        None,
        None,
        json!({"revision": system.revision, "changed": changed}),
    );
    if changed.contains(&"defaultSkills") {
        // A changed `start` takes effect within this request.
        reconcile::system(&ctx.kernel).await?;
    }
    Ok(Out::new(system.clone()).revision(system.revision))
}
