//! Builders of plain control blocks and messages, for store tests and benchmarks.

use aos_sdk::protocol::{
    AgentCb, AgentStatus, Origin, Part, PartBody, Role, SessionCb, SessionPhase, SessionStatus,
    Timestamp, Usage,
};

use super::NewMessage;
use crate::ids::new_id;

pub fn agent(id: &str) -> AgentCb {
    let now = Timestamp::now();
    AgentCb {
        agent_id: id.to_owned(),
        display_name: format!("agent {id}"),
        description: None,
        status: AgentStatus::Active,
        default_skills: vec![],
        priority: 0,
        model: None,
        auto_fold_threshold: None,
        budgets: None,
        metadata: Default::default(),
        usage: Usage::default(),
        created_by: "human".into(),
        revision: 1,
        created_at: now,
        updated_at: now,
        archived_at: None,
    }
}

pub fn session(id: &str, agent_id: &str) -> SessionCb {
    let now = Timestamp::now();
    SessionCb {
        session_id: id.to_owned(),
        agent_id: agent_id.to_owned(),
        title: Some("t".into()),
        status: SessionStatus::Ready,
        phase: SessionPhase::Idle,
        lease: None,
        default_skills: vec![],
        priority: None,
        model: None,
        auto_fold_threshold: None,
        metadata: Default::default(),
        last_seq: 0,
        usage: Usage::default(),
        created_by: "human".into(),
        revision: 1,
        created_at: now,
        updated_at: now,
        archived_at: None,
    }
}

pub fn text_message(session_id: &str, text: &str) -> NewMessage {
    NewMessage {
        id: new_id("msg_"),
        session_id: session_id.to_owned(),
        role: Role::User,
        origin: Origin::Human,
        parts: vec![Part {
            id: new_id("prt_"),
            body: PartBody::Text {
                text: text.to_owned(),
            },
        }],
        dispatch_id: None,
        created_at: Timestamp::now(),
    }
}
