//! Operations provided by services (`<skill>.<op>`): the routing table and the call.
//!
//! Several services of one skill may provide the same operation for different owners
//! (one per agent, say). A call goes to the nearest owner of the caller: the service
//! of the caller's session, else of its agent, else the system's. Unconfined callers
//! (admin, system services) are routed by the `sessionId` / `agentId` in the params,
//! else to the system's service, else to the only one there is.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use aos_sdk::protocol::service::{OpCallRef, rpc_code};
use aos_sdk::protocol::{ErrorCode, OpDescription};
use aos_sdk::rpc::{CallError, Peer};
use serde_json::{Value, json};

use crate::auth::{Caller, Owner};
use crate::syscall::{OpKind, SyscallError};

/// Where one service-provided operation is answered.
#[derive(Debug, Clone)]
pub struct Route {
    pub service_id: String,
    pub skill: String,
    pub owner: Owner,
    pub kind: OpKind,
    pub description: String,
    pub params_schema: Option<Value>,
    pub timeout: Duration,
    pub peer: Peer,
}

/// Service-provided operations by full name.
#[derive(Debug, Default)]
pub struct ServiceOps {
    // Locked only around map operations.
    table: RwLock<BTreeMap<String, Vec<Route>>>,
}

impl ServiceOps {
    /// Replaces the operations of `service_id` with `routes`.
    pub fn replace(&self, service_id: &str, routes: Vec<(String, Route)>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        remove(&mut table, service_id);
        for (name, route) in routes {
            table.entry(name).or_default().push(route);
        }
    }

    pub fn remove_service(&self, service_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        remove(&mut table, service_id);
    }

    /// The routes of `name`, if any service provides it.
    pub fn routes(&self, name: &str) -> Option<Vec<Route>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// One description per operation, for `GET /aoscp` and `aos syscalls`.
    pub fn describe(&self) -> Vec<OpDescription> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .filter_map(|(name, routes)| {
                let first = routes.first()?;
                Some(OpDescription {
                    name: name.clone(),
                    kind: first.kind.as_str().to_owned(),
                    description: first.description.clone(),
                    access: "any token (the service decides)".to_owned(),
                    status: format!(
                        "available (service of `{}`, {} instance{})",
                        first.skill,
                        routes.len(),
                        if routes.len() == 1 { "" } else { "s" }
                    ),
                    provided_by: Some(first.skill.clone()),
                    params: first
                        .params_schema
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect()
    }
}

fn remove(table: &mut BTreeMap<String, Vec<Route>>, service_id: &str) {
    table.retain(|_, routes| {
        routes.retain(|r| r.service_id != service_id);
        !routes.is_empty()
    });
}

/// Picks the route for a caller (see the module docs).
pub fn choose<'a>(
    routes: &'a [Route],
    caller: &Caller,
    session_hint: Option<&str>,
    agent_hint: Option<&str>,
) -> Option<&'a Route> {
    let (session, agent) = match caller.confined_agent() {
        Some(agent) => (caller.confined_session(), Some(agent)),
        None => (session_hint, agent_hint),
    };
    let find = |want: &dyn Fn(&Owner) -> bool| routes.iter().find(|r| want(&r.owner));
    session
        .and_then(|s| find(&|o| o.session_id() == Some(s) && matches!(o, Owner::Session { .. })))
        .or_else(|| {
            agent.and_then(|a| find(&|o| matches!(o, Owner::Agent { agent_id } if agent_id == a)))
        })
        .or_else(|| find(&|o| matches!(o, Owner::System)))
        .or_else(|| (caller.confined_agent().is_none() && routes.len() == 1).then(|| &routes[0]))
}

/// Calls a service-provided operation through `route` and maps the answer to a
/// syscall result.
pub async fn call(
    route: &Route,
    name: &str,
    params: &Value,
    caller: &Caller,
) -> Result<Value, SyscallError> {
    let info = caller.info();
    let answer = route
        .peer
        .request_with(
            "op",
            &OpCallRef {
                name,
                params,
                caller: &info,
            },
            route.timeout,
        )
        .await;
    match answer {
        Ok(data) => Ok(data),
        Err(CallError::Timeout(ms)) => Err(SyscallError::new(
            ErrorCode::Timeout,
            format!(
                "the service of `{}` ({}) did not answer `{name}` within {ms} ms",
                route.skill, route.service_id
            ),
        )),
        Err(CallError::Closed) => Err(SyscallError::new(
            ErrorCode::ServiceFailed,
            format!(
                "the service of `{}` ({}) went away while answering `{name}`",
                route.skill, route.service_id
            ),
        )),
        Err(CallError::TooLarge { size, limit }) => Err(SyscallError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the call of `{name}` is {size} bytes, over the service frame limit of {limit}"
            ),
        )),
        Err(CallError::Remote(error)) => {
            let code = error
                .data
                .as_ref()
                .and_then(|d| d.get("code"))
                .and_then(Value::as_str)
                .and_then(ErrorCode::from_wire)
                .unwrap_or(if error.code == rpc_code::INVALID_PARAMS {
                    ErrorCode::InvalidParams
                } else {
                    ErrorCode::ServiceFailed
                });
            Err(SyscallError::new(code, error.message).with_details(json!({
                "skill": route.skill,
                "serviceId": route.service_id,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn route(owner: Owner, peer: &Peer) -> Route {
        Route {
            service_id: format!("svc_{}", owner.describe()),
            skill: "mem".into(),
            owner,
            kind: OpKind::Query,
            description: "d".into(),
            params_schema: None,
            timeout: Duration::from_secs(1),
            peer: peer.clone(),
        }
    }

    #[tokio::test]
    async fn calls_go_to_the_nearest_owner_of_the_caller() {
        let (a, b) = tokio::io::duplex(64);
        let (r, w) = tokio::io::split(a);
        let (stream, sink) = aos_sdk::rpc::line_transport(r, w, 1024);
        let (peer, _incoming) = aos_sdk::rpc::spawn(stream, sink, Default::default());
        drop(b);
        let session = Owner::Session {
            agent_id: "agt_1".into(),
            session_id: "ses_1".into(),
        };
        let agent = Owner::Agent {
            agent_id: "agt_1".into(),
        };
        let other_agent = Owner::Agent {
            agent_id: "agt_2".into(),
        };
        let routes = vec![
            route(Owner::System, &peer),
            route(agent.clone(), &peer),
            route(session.clone(), &peer),
        ];
        let session_caller = Caller {
            scope: Scope::Session {
                agent_id: "agt_1".into(),
                session_id: "ses_1".into(),
            },
            token_id: None,
        };
        let pick = |caller: &Caller, s: Option<&str>, a: Option<&str>| {
            choose(&routes, caller, s, a).map(|r| r.owner.clone())
        };
        assert_eq!(pick(&session_caller, None, None), Some(session.clone()));
        // A confined caller's hints cannot point elsewhere.
        assert_eq!(
            pick(&session_caller, Some("ses_9"), Some("agt_9")),
            Some(session.clone())
        );
        let other_session = Caller {
            scope: Scope::Session {
                agent_id: "agt_1".into(),
                session_id: "ses_2".into(),
            },
            token_id: None,
        };
        assert_eq!(pick(&other_session, None, None), Some(agent.clone()));
        assert_eq!(pick(&Caller::admin(), None, None), Some(Owner::System));
        assert_eq!(pick(&Caller::admin(), Some("ses_1"), None), Some(session));
        let only_other = vec![route(other_agent.clone(), &peer)];
        assert!(choose(&only_other, &session_caller, None, None).is_none());
        assert_eq!(
            choose(&only_other, &Caller::admin(), None, None).map(|r| r.owner.clone()),
            Some(other_agent)
        );
    }
}
