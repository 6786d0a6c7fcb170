//! `system.*`: the system control block.

use aos_sdk::protocol::{NoParams, SystemCb, SystemUpdateParams};
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
    ]
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
