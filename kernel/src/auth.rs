//! Who is calling, and what they may touch.
//!
//! Every request carries a bearer token. The admin token (generated into
//! `$AOS_HOME/admin.token`, or `AOS_API_TOKEN`) may do everything; tokens from
//! `token.issue` carry a scope (agent, session, service) and are stored only as
//! SHA-256 hashes. Lookups are cached for a few seconds so a busy client does not cost
//! a database read per request; revocation clears the cache entry at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aos_sdk::protocol::service::CallerInfo;
use aos_sdk::protocol::{ErrorCode, Origin, OwnerType, ServiceOwnerInfo, Timestamp, TokenScope};
use sha2::{Digest, Sha256};

use crate::store::Store;
use crate::syscall::SyscallError;

/// How long a token lookup is trusted before it is checked again.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

/// The authority a caller acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The kernel itself (bootstrap, recovery, configuration).
    Kernel,
    /// A person or program holding the admin token.
    Admin,
    /// One agent and its sessions.
    Agent { agent_id: String },
    /// One session; read access to its agent's other sessions and content.
    Session {
        agent_id: String,
        session_id: String,
    },
    /// A skill's service, with its owner's authority.
    Service { skill: String, owner: Owner },
}

/// The level a service runs for, and so where its hooks fire and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The whole kernel: hooks fire for every operation.
    System,
    /// One agent and its sessions.
    Agent { agent_id: String },
    /// One session.
    Session {
        agent_id: String,
        session_id: String,
    },
}

impl Owner {
    pub fn owner_type(&self) -> OwnerType {
        match self {
            Owner::System => OwnerType::System,
            Owner::Agent { .. } => OwnerType::Agent,
            Owner::Session { .. } => OwnerType::Session,
        }
    }

    /// The agent or session id; none for the system.
    pub fn owner_id(&self) -> Option<&str> {
        match self {
            Owner::System => None,
            Owner::Agent { agent_id } => Some(agent_id),
            Owner::Session { session_id, .. } => Some(session_id),
        }
    }

    pub fn agent_id(&self) -> Option<&str> {
        match self {
            Owner::System => None,
            Owner::Agent { agent_id } | Owner::Session { agent_id, .. } => Some(agent_id),
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        match self {
            Owner::Session { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    /// True when an operation on this agent/session falls under this owner.
    pub fn covers(&self, agent_id: Option<&str>, session_id: Option<&str>) -> bool {
        match self {
            Owner::System => true,
            Owner::Agent { agent_id: own } => agent_id == Some(own.as_str()),
            Owner::Session {
                session_id: own, ..
            } => session_id == Some(own.as_str()),
        }
    }

    /// The wire description.
    pub fn info(&self) -> ServiceOwnerInfo {
        ServiceOwnerInfo {
            owner_type: self.owner_type(),
            owner_id: self.owner_id().map(str::to_owned),
            agent_id: self.agent_id().map(str::to_owned),
            session_id: self.session_id().map(str::to_owned),
        }
    }

    /// `system`, `agent agt_…`, `session ses_…`, for messages.
    pub fn describe(&self) -> String {
        match self.owner_id() {
            None => "system".to_owned(),
            Some(id) => format!("{} {id}", self.owner_type().as_str()),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub scope: Scope,
    /// The token used, when it was an issued one.
    pub token_id: Option<String>,
}

impl Caller {
    pub fn kernel() -> Self {
        Self {
            scope: Scope::Kernel,
            token_id: None,
        }
    }

    pub fn admin() -> Self {
        Self {
            scope: Scope::Admin,
            token_id: None,
        }
    }

    /// The caller as written in the RuntimeLog and `createdBy` fields.
    pub fn identity(&self) -> String {
        match &self.scope {
            Scope::Kernel => "aos".to_owned(),
            Scope::Admin => "admin".to_owned(),
            Scope::Agent { agent_id } => format!("agent:{agent_id}"),
            Scope::Session { session_id, .. } => format!("session:{session_id}"),
            Scope::Service { skill, .. } => format!("service:{skill}"),
        }
    }

    /// The history origin of messages this caller appends.
    pub fn origin(&self) -> Origin {
        match &self.scope {
            Scope::Kernel => Origin::Aos,
            Scope::Admin => Origin::Human,
            Scope::Agent { .. } | Scope::Session { .. } => Origin::Agent,
            Scope::Service { skill, .. } => Origin::Skill(skill.clone()),
        }
    }

    /// True for callers with system-wide authority: the kernel, admin, and services
    /// owned by the system.
    pub fn is_system(&self) -> bool {
        matches!(
            &self.scope,
            Scope::Kernel
                | Scope::Admin
                | Scope::Service {
                    owner: Owner::System,
                    ..
                }
        )
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.scope, Scope::Kernel | Scope::Admin)
    }

    /// The agent this caller is confined to, if any.
    pub fn confined_agent(&self) -> Option<&str> {
        match &self.scope {
            Scope::Agent { agent_id }
            | Scope::Session { agent_id, .. }
            | Scope::Service {
                owner: Owner::Agent { agent_id } | Owner::Session { agent_id, .. },
                ..
            } => Some(agent_id),
            _ => None,
        }
    }

    /// The session this caller may write to exclusively, if confined to one.
    pub fn confined_session(&self) -> Option<&str> {
        match &self.scope {
            Scope::Session { session_id, .. }
            | Scope::Service {
                owner: Owner::Session { session_id, .. },
                ..
            } => Some(session_id),
            _ => None,
        }
    }

    /// May this caller read objects of `agent_id`?
    pub fn can_read_agent(&self, agent_id: &str) -> bool {
        self.confined_agent().is_none_or(|own| own == agent_id)
    }

    /// May this caller change the agent's own settings?
    pub fn can_write_agent(&self, agent_id: &str) -> bool {
        self.confined_session().is_none() && self.can_read_agent(agent_id)
    }

    /// May this caller change session `session_id` of `agent_id`?
    pub fn can_write_session(&self, agent_id: &str, session_id: &str) -> bool {
        self.can_read_agent(agent_id) && self.confined_session().is_none_or(|own| own == session_id)
    }

    /// Who this caller is, as a service receives it with an operation call.
    pub fn info(&self) -> CallerInfo {
        let (kind, skill) = match &self.scope {
            Scope::Kernel => ("kernel", None),
            Scope::Admin => ("admin", None),
            Scope::Agent { .. } => ("agent", None),
            Scope::Session { .. } => ("session", None),
            Scope::Service { skill, .. } => ("service", Some(skill.clone())),
        };
        CallerInfo {
            identity: self.identity(),
            kind: kind.to_owned(),
            agent_id: self.confined_agent().map(str::to_owned),
            session_id: self.confined_session().map(str::to_owned),
            skill,
            token_id: self.token_id.clone(),
        }
    }

    /// The caller acting for a service of `skill` owned by `owner`.
    pub fn service(skill: &str, owner: &Owner) -> Self {
        Self {
            scope: Scope::Service {
                skill: skill.to_owned(),
                owner: owner.clone(),
            },
            token_id: None,
        }
    }

    pub fn deny(&self, what: impl std::fmt::Display) -> SyscallError {
        SyscallError::new(
            ErrorCode::PermissionDenied,
            format!("{} may not {what}", self.describe()),
        )
    }

    fn describe(&self) -> String {
        match &self.scope {
            Scope::Kernel => "the kernel".to_owned(),
            Scope::Admin => "the admin token".to_owned(),
            Scope::Agent { agent_id } => format!("a token scoped to agent {agent_id}"),
            Scope::Session { session_id, .. } => format!("a token scoped to session {session_id}"),
            Scope::Service { skill, owner } => match owner {
                Owner::System => format!("system service {skill}"),
                Owner::Agent { agent_id } => {
                    format!("service {skill} (owned by agent {agent_id})")
                }
                Owner::Session { session_id, .. } => {
                    format!("service {skill} (owned by session {session_id})")
                }
            },
        }
    }
}

/// Converts a stored token scope into the caller's scope.
pub fn scope_from_token(scope: &TokenScope) -> Option<Scope> {
    Some(match scope {
        TokenScope::Admin => Scope::Admin,
        TokenScope::Agent { agent_id } => Scope::Agent {
            agent_id: agent_id.clone(),
        },
        TokenScope::Session {
            session_id,
            agent_id,
        } => Scope::Session {
            agent_id: agent_id.clone()?,
            session_id: session_id.clone(),
        },
        TokenScope::Service {
            skill,
            owner_type,
            owner_id,
            agent_id,
        } => Scope::Service {
            skill: skill.clone(),
            owner: match owner_type {
                OwnerType::System => Owner::System,
                OwnerType::Agent => Owner::Agent {
                    agent_id: owner_id.clone()?,
                },
                OwnerType::Session => Owner::Session {
                    agent_id: agent_id.clone()?,
                    session_id: owner_id.clone()?,
                },
            },
        },
    })
}

/// SHA-256 of a token secret, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[derive(Debug, Clone)]
struct Cached {
    caller: Caller,
    expires_at: Option<Timestamp>,
    checked: Instant,
}

/// Token verification.
#[derive(Debug)]
pub struct Auth {
    admin_hash: [u8; 32],
    // Locked only around map operations, never across an `.await`.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    // Tokens that live only as long as this process: the `AOS_SERVICE_TOKEN` of each
    // spawned service. Never stored, so a restarted kernel does not honour them.
    ephemeral: Mutex<HashMap<[u8; 32], Caller>>,
}

impl Auth {
    pub fn new(admin_secret: &str) -> Self {
        Self {
            admin_hash: hash_secret(admin_secret),
            cache: Mutex::new(HashMap::new()),
            ephemeral: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a token for `caller` that is valid until [`Auth::revoke_ephemeral`] or
    /// the end of this process.
    pub fn issue_ephemeral(&self, caller: Caller) -> String {
        let secret = crate::ids::new_token_secret();
        self.ephemeral
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash_secret(&secret), caller);
        secret
    }

    pub fn revoke_ephemeral(&self, secret: &str) {
        self.ephemeral
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash_secret(secret));
    }

    /// Resolves the bearer token of a request.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        bearer: Option<&str>,
    ) -> Result<Caller, SyscallError> {
        let Some(secret) = bearer.map(str::trim).filter(|s| !s.is_empty()) else {
            return Err(SyscallError::new(
                ErrorCode::Unauthenticated,
                "this request needs `Authorization: Bearer <token>`; the admin token is in $AOS_HOME/admin.token",
            ));
        };
        let hash = hash_secret(secret);
        // Comparing digests rather than secrets keeps the comparison independent of
        // how much of the secret matches.
        if hash == self.admin_hash {
            return Ok(Caller::admin());
        }
        if let Some(caller) = self
            .ephemeral
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return Ok(caller.clone());
        }
        let now = Timestamp::now();
        if let Some(hit) = self.cached(&hash) {
            return check_expiry(hit.caller, hit.expires_at, now);
        }
        let record = store
            .find_token(&hex::encode(hash))
            .await
            .map_err(SyscallError::from)?;
        let Some(record) = record else {
            return Err(SyscallError::new(
                ErrorCode::Unauthenticated,
                "the bearer token is not known to this kernel",
            ));
        };
        if let Some(at) = record.info.revoked_at {
            return Err(SyscallError::new(
                ErrorCode::Unauthenticated,
                format!("token {} was revoked at {at}", record.info.token_id),
            ));
        }
        let Some(scope) = scope_from_token(&record.info.scope) else {
            return Err(SyscallError::new(
                ErrorCode::Unauthenticated,
                format!("token {} has an incomplete scope", record.info.token_id),
            ));
        };
        let caller = Caller {
            scope,
            token_id: Some(record.info.token_id.clone()),
        };
        self.remember(
            hash,
            Cached {
                caller: caller.clone(),
                expires_at: record.info.expires_at,
                checked: Instant::now(),
            },
        );
        check_expiry(caller, record.info.expires_at, now)
    }

    /// Drops cached lookups of a token (after revocation).
    pub fn forget_token(&self, token_id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, c| c.caller.token_id.as_deref() != Some(token_id));
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|c| c.checked.elapsed() < CACHE_TTL)
            .cloned()
    }

    fn remember(&self, hash: [u8; 32], entry: Cached) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, entry);
    }
}

fn check_expiry(
    caller: Caller,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<Caller, SyscallError> {
    match expires_at {
        Some(at) if at <= now => Err(SyscallError::new(
            ErrorCode::Unauthenticated,
            format!("the token expired at {at}"),
        )),
        _ => Ok(caller),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Caller {
        Caller {
            scope: Scope::Session {
                agent_id: "agt_a".into(),
                session_id: "ses_a".into(),
            },
            token_id: None,
        }
    }

    #[test]
    fn session_callers_are_confined_to_their_agent_and_write_only_their_session() {
        let caller = session();
        assert!(caller.can_read_agent("agt_a"));
        assert!(!caller.can_read_agent("agt_b"));
        assert!(!caller.can_write_agent("agt_a"));
        assert!(caller.can_write_session("agt_a", "ses_a"));
        assert!(!caller.can_write_session("agt_a", "ses_other"));
        assert!(!caller.can_write_session("agt_b", "ses_a"));
        assert!(!caller.is_system());
        assert_eq!(caller.identity(), "session:ses_a");
        assert_eq!(caller.origin(), Origin::Agent);
    }

    #[test]
    fn system_services_have_system_authority_but_are_not_admin() {
        let caller = Caller {
            scope: Scope::Service {
                skill: "aos-context".into(),
                owner: Owner::System,
            },
            token_id: None,
        };
        assert!(caller.is_system());
        assert!(!caller.is_admin());
        assert!(caller.can_write_session("agt_x", "ses_y"));
        assert_eq!(caller.origin(), Origin::Skill("aos-context".into()));
    }

    #[test]
    fn incomplete_session_scopes_are_refused() {
        assert_eq!(
            scope_from_token(&TokenScope::Session {
                session_id: "ses_a".into(),
                agent_id: None
            }),
            None
        );
    }
}
