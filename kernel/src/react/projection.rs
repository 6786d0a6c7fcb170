//! The kernel's neutral context: every history message projected as it is, in the
//! OpenAI chat format, with nothing folded or compacted. It is what `context.assemble`
//! receives as its `output`; a context engine skill (`aos-context`) replaces it with
//! its own projection (budgets, folding, compaction boundaries).
//!
//! | history | projected |
//! |---|---|
//! | text, user | `{role: user, content}` |
//! | text, assistant | `{role: assistant, content}` |
//! | bash call | `{role: assistant, tool_calls: [bash]}` then `{role: tool, content: result}` |
//! | skill-load | `{role: system, content: "[[AOS-SKILL <name>]]\n<text>"}` (until a skill-unload) |
//! | interrupt | `{role: system, content: "[[AOS-INTERRUPT <reason>]]"}` |
//! | error | `{role: system, content: "[[AOS-ERROR <source>]] <message>"}` |
//! | compaction summary | `{role: system, content: "[[AOS-SUMMARY]]\n<text>"}` |
//! | bootstrap, compaction marker | nothing |

use aos_sdk::protocol::{BashCall, BashState, Message, PartBody, Role};
use serde_json::{Value, json};

/// A projected conversation: messages with the history seq each came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection {
    entries: Vec<(u64, Option<String>, Value)>,
    chars: usize,
}

impl Projection {
    /// Projects `messages` (in seq order).
    pub fn of(messages: &[Message]) -> Self {
        let mut projection = Self::default();
        for message in messages {
            projection.push(message);
        }
        projection
    }

    /// Adds one history message.
    pub fn push(&mut self, message: &Message) {
        let seq = message.seq;
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        };
        let mut text = String::new();
        let mut calls: Vec<&BashCall> = Vec::new();
        for part in &message.parts {
            match &part.body {
                PartBody::Text { text: t } => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(t);
                }
                PartBody::Bash(call) => calls.push(call),
                PartBody::SkillLoad { name, text: body, .. } => self.add(
                    seq,
                    Some(name.clone()),
                    json!({"role": "system", "content": format!("[[AOS-SKILL {name}]]\n{body}")}),
                ),
                PartBody::SkillUnload { name } => self.entries.retain(|(_, skill, _)| skill.as_deref() != Some(name)),
                PartBody::Interrupt { reason, .. } => self.add(
                    seq,
                    None,
                    json!({"role": "system", "content": format!("[[AOS-INTERRUPT {reason}]]")}),
                ),
                PartBody::Error { source, message } => self.add(
                    seq,
                    None,
                    json!({"role": "system", "content": format!("[[AOS-ERROR {source}]] {message}")}),
                ),
                PartBody::CompactionSummary { text: summary, .. } => self.add(
                    seq,
                    None,
                    json!({"role": "system", "content": format!("[[AOS-SUMMARY]]\n{summary}")}),
                ),
                PartBody::Bootstrap { .. }
                | PartBody::CompactionMarker { .. }
                | PartBody::Meta(_) => {}
            }
        }
        if calls.is_empty() {
            if !text.is_empty() {
                self.add(seq, None, json!({"role": role, "content": text}));
            }
            return;
        }
        let tool_calls: Vec<Value> = calls.iter().map(|call| call.to_tool_call()).collect();
        let content = if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        };
        self.add(
            seq,
            None,
            json!({"role": "assistant", "content": content, "tool_calls": tool_calls}),
        );
        for call in calls {
            self.add(
                seq,
                None,
                json!({"role": "tool", "tool_call_id": call.tool_call_id, "content": tool_text(call)}),
            );
        }
    }

    fn add(&mut self, seq: u64, skill: Option<String>, message: Value) {
        self.chars += message["content"].as_str().map_or(0, str::len);
        self.entries.push((seq, skill, message));
    }

    /// The messages, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.entries.iter().map(|(_, _, m)| m.clone()).collect()
    }

    /// A rough token estimate (4 characters a token); context engines estimate better.
    pub fn estimated_tokens(&self) -> u64 {
        (self.chars / 4) as u64
    }
}

/// What the model sees of a bash call's result.
fn tool_text(call: &BashCall) -> String {
    let mut text = match &call.output {
        Some(output) => match (&output.visible_result, &output.content_id) {
            (Some(visible), _) => visible.clone(),
            (None, Some(content_id)) => format!(
                "{}\n[the full output ({} characters, {} lines) is stored as {content_id}: read it with `aos content read {content_id}`]",
                output.preview.as_deref().unwrap_or(""),
                output.size_chars.unwrap_or(0),
                output.line_count.unwrap_or(0),
            ),
            (None, None) => output.preview.clone().unwrap_or_default(),
        },
        None => String::new(),
    };
    if call.state == BashState::OutputError
        && let Some(error) = &call.error_text
    {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("[{error}]"));
    }
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aos_sdk::protocol::{BashOutput, Origin, Part, SkillLoadCause, Timestamp};

    fn message(seq: u64, role: Role, parts: Vec<PartBody>) -> Message {
        Message {
            id: format!("msg_{seq}"),
            session_id: "ses_1".into(),
            seq,
            role,
            origin: Origin::Aos,
            parts: parts
                .into_iter()
                .enumerate()
                .map(|(i, body)| Part {
                    id: format!("prt_{seq}_{i}"),
                    body,
                })
                .collect(),
            dispatch_id: None,
            created_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn history_projects_to_chat_messages() {
        let bash = BashCall {
            tool_call_id: "call_1".into(),
            state: BashState::OutputError,
            command: "false".into(),
            cwd: None,
            timeout_ms: None,
            output: Some(BashOutput {
                visible_result: Some(String::new()),
                exit_code: Some(1),
                content_id: None,
                size_chars: None,
                line_count: None,
                preview: None,
                truncated: false,
            }),
            error_text: Some("exit code 1".into()),
        };
        let history = vec![
            message(
                1,
                Role::User,
                vec![PartBody::Bootstrap {
                    phase: aos_sdk::protocol::BootstrapPhase::Begin,
                    planned_names: vec![],
                    loaded: vec![],
                    skipped: vec![],
                }],
            ),
            message(
                2,
                Role::User,
                vec![PartBody::SkillLoad {
                    name: "aos".into(),
                    cause: SkillLoadCause::Default,
                    text: "# manual".into(),
                }],
            ),
            message(
                3,
                Role::User,
                vec![PartBody::SkillLoad {
                    name: "notes".into(),
                    cause: SkillLoadCause::Explicit,
                    text: "n".into(),
                }],
            ),
            message(
                4,
                Role::User,
                vec![PartBody::Text {
                    text: "do it".into(),
                }],
            ),
            message(
                5,
                Role::Assistant,
                vec![
                    PartBody::Text {
                        text: "trying".into(),
                    },
                    PartBody::Bash(bash),
                ],
            ),
            message(
                6,
                Role::User,
                vec![PartBody::SkillUnload {
                    name: "notes".into(),
                }],
            ),
            message(
                7,
                Role::User,
                vec![PartBody::Interrupt {
                    reason: "stop".into(),
                    payload: None,
                }],
            ),
        ];
        let projected = Projection::of(&history).messages();
        assert_eq!(
            projected,
            vec![
                json!({"role": "system", "content": "[[AOS-SKILL aos]]\n# manual"}),
                json!({"role": "user", "content": "do it"}),
                json!({"role": "assistant", "content": "trying", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"false\"}"}}]}),
                json!({"role": "tool", "tool_call_id": "call_1", "content": "[exit code 1]"}),
                json!({"role": "system", "content": "[[AOS-INTERRUPT stop]]"}),
            ]
        );
    }
}
