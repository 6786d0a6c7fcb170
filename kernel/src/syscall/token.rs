//! `token.*`: scoped bearer tokens for UIs, programs and remote services.

use aos_sdk::protocol::{
    AgentStatus, ErrorCode, IssuedToken, NoParams, OwnerType, SessionStatus, Timestamp,
    TokenIdParams, TokenInfo, TokenIssueParams, TokenScope,
};
use serde_json::json;

use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::auth::hash_secret;
use crate::hooks::EventName;
use crate::ids::{new_id, new_token_secret};
use crate::skills::manifest::check_name;
use crate::store::TokenRecord;

/// Lifetime of session tokens when none is asked for.
const DEFAULT_SESSION_TTL_SECONDS: u64 = 86_400;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "token.issue",
            OpKind::Command,
            Access::Scoped,
            "Issue a bearer token whose scope (admin, agent, session, service) is never broader than the caller's own. The secret is returned once.",
            issue,
        ),
        op(
            "token.list",
            OpKind::Query,
            Access::System,
            "List issued tokens (never their secrets).",
            list,
        ),
        op(
            "token.revoke",
            OpKind::Command,
            Access::System,
            "Revoke a token; it stops working at once on this node and within 5 s on others.",
            revoke,
        ),
    ]
}

async fn issue(ctx: Ctx, params: TokenIssueParams) -> Result<Out<IssuedToken>, SyscallError> {
    if let Some(label) = &params.label {
        validate::text("label", label, 1, 200)?;
    }
    if let Some(ttl) = params.ttl_seconds {
        validate::range("ttlSeconds", ttl, 1, 31_536_000)?;
    }
    let caller = &ctx.caller;
    let kernel = &ctx.kernel;
    let (scope, default_ttl) = match params.scope {
        TokenScope::Admin => {
            if !caller.is_admin() {
                return Err(caller.deny("issue admin tokens"));
            }
            (TokenScope::Admin, None)
        }
        TokenScope::Agent { agent_id } => {
            let agent = kernel.get_agent(&agent_id).await?;
            if agent.status == AgentStatus::Archived {
                return Err(SyscallError::new(
                    ErrorCode::AgentArchived,
                    format!("agent `{agent_id}` is archived"),
                ));
            }
            if !caller.can_write_agent(&agent_id) {
                return Err(caller.deny(format_args!("issue tokens for agent {agent_id}")));
            }
            (TokenScope::Agent { agent_id }, None)
        }
        TokenScope::Session { session_id, .. } => {
            let session = kernel.get_session(&session_id).await?;
            if session.status == SessionStatus::Archived {
                return Err(SyscallError::new(
                    ErrorCode::SessionArchived,
                    format!("session `{session_id}` is archived"),
                ));
            }
            if !caller.can_write_session(&session.agent_id, &session_id) {
                return Err(caller.deny(format_args!("issue tokens for session {session_id}")));
            }
            (
                TokenScope::Session {
                    session_id,
                    agent_id: Some(session.agent_id),
                },
                Some(DEFAULT_SESSION_TTL_SECONDS),
            )
        }
        TokenScope::Service {
            skill,
            owner_type,
            owner_id,
            ..
        } => {
            check_name(&skill).map_err(|m| SyscallError::invalid("scope.skill", m))?;
            let agent_id = match (owner_type, owner_id.as_deref()) {
                (OwnerType::System, None) => {
                    if !caller.is_system() {
                        return Err(caller.deny("issue system service tokens"));
                    }
                    None
                }
                (OwnerType::Agent, Some(agent_id)) => {
                    kernel.get_agent(agent_id).await?;
                    if !caller.can_write_agent(agent_id) {
                        return Err(
                            caller.deny(format_args!("issue service tokens for agent {agent_id}"))
                        );
                    }
                    None
                }
                (OwnerType::Session, Some(session_id)) => {
                    let session = kernel.get_session(session_id).await?;
                    if !caller.can_write_session(&session.agent_id, session_id) {
                        return Err(caller.deny(format_args!(
                            "issue service tokens for session {session_id}"
                        )));
                    }
                    Some(session.agent_id)
                }
                (OwnerType::System, Some(_)) => {
                    return Err(SyscallError::invalid(
                        "scope.ownerId",
                        "must be absent for system-owned services",
                    ));
                }
                (_, None) => {
                    return Err(SyscallError::invalid(
                        "scope.ownerId",
                        "is required for agent- and session-owned services",
                    ));
                }
            };
            (
                TokenScope::Service {
                    skill,
                    owner_type,
                    owner_id,
                    agent_id,
                },
                None,
            )
        }
    };
    let now = Timestamp::now();
    let expires_at = params
        .ttl_seconds
        .or(default_ttl)
        .map(|ttl| now.plus_millis((ttl * 1000) as i64));
    let secret = new_token_secret();
    let info = TokenInfo {
        token_id: new_id("tok_"),
        scope: scope.clone(),
        label: params.label,
        created_by: caller.identity(),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    kernel
        .store
        .insert_token(&TokenRecord {
            info: info.clone(),
            secret_hash: hex::encode(hash_secret(&secret)),
        })
        .await?;
    kernel.emit(
        EventName::TokenIssued,
        None,
        None,
        json!({"tokenId": info.token_id, "scope": scope, "label": info.label, "by": info.created_by}),
    );
    Ok(Out::new(IssuedToken {
        token_id: info.token_id.clone(),
        token: secret,
        scope,
        expires_at,
    })
    .targets(json!({"tokenId": info.token_id})))
}

async fn list(ctx: Ctx, _: NoParams) -> Result<Out<Vec<TokenInfo>>, SyscallError> {
    Ok(Out::new(ctx.kernel.store.list_tokens().await?))
}

async fn revoke(ctx: Ctx, params: TokenIdParams) -> Result<Out<TokenIdParams>, SyscallError> {
    let revoked = ctx
        .kernel
        .store
        .revoke_token(&params.token_id, Timestamp::now())
        .await?;
    if !revoked {
        return Err(SyscallError::new(
            ErrorCode::NotFound,
            format!("token `{}` is unknown or already revoked", params.token_id),
        ));
    }
    ctx.kernel.auth.forget_token(&params.token_id);
    ctx.kernel.emit(
        EventName::TokenRevoked,
        None,
        None,
        json!({"tokenId": params.token_id}),
    );
    Ok(Out::new(params.clone()).targets(json!({"tokenId": params.token_id})))
}
