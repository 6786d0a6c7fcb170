//! One history message → its context messages, by the projection rules of
//! `docs/skills.md` (seed §8.2): fold placeholders, skill loads, compaction pairs,
//! interrupt markers. Pure functions; the session cache decides what is folded.

use std::collections::{HashMap, HashSet};

use aos_sdk::protocol::{BashCall, BashState, Message, PartBody, Role};
use serde_json::{Value, json};

/// A folded or unfolded thing: a whole message, or one part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ref {
    pub message_id: String,
    pub part_id: Option<String>,
}

impl Ref {
    pub fn from_wire(value: &Value) -> Option<Self> {
        Some(Self {
            message_id: value.get("historyMessageId")?.as_str()?.to_owned(),
            part_id: value
                .get("historyPartId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// What the session has folded and unfolded by hand.
#[derive(Debug, Default)]
pub struct Folds {
    /// Folded by `session.context.fold`.
    pub manual: HashSet<Ref>,
    /// Auto-folded parts unfolded by `session.context.unfold`, with the full content
    /// read from the ContentStore.
    pub unfolded: HashMap<Ref, String>,
}

impl Folds {
    pub fn count_for(&self, message: &Message) -> usize {
        let whole = Ref {
            message_id: message.id.clone(),
            part_id: None,
        };
        if self.manual.contains(&whole) {
            return 1;
        }
        message
            .parts
            .iter()
            .filter(|part| {
                let r = Ref {
                    message_id: message.id.clone(),
                    part_id: Some(part.id.clone()),
                };
                match &part.body {
                    PartBody::Bash(call) => {
                        self.manual.contains(&r)
                            || (content_id(call).is_some() && !self.unfolded.contains_key(&r))
                    }
                    _ => self.manual.contains(&r),
                }
            })
            .count()
    }
}

/// One context message with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub wire: Value,
    pub kind: &'static str,
    pub message_id: String,
    pub part_id: Option<String>,
    pub seq: u64,
    /// Set on `skill-load` entries: the skill whose text this is.
    pub skill: Option<String>,
    pub tokens: u32,
}

impl Entry {
    /// The wire form of `session.context.get` and `context.assemble`: `{wire, aos}`.
    pub fn to_context_message(&self) -> Value {
        json!({
            "wire": self.wire,
            "aos": {
                "sourceMessageId": self.message_id,
                "sourcePartId": self.part_id,
                "kind": self.kind,
                "seq": self.seq,
            },
        })
    }
}

/// A message's projection plus the facts that change earlier entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projected {
    pub entries: Vec<Entry>,
    /// Skills this message unloads (their earlier loads leave the context).
    pub unloads: Vec<String>,
}

/// The question that stands for a compacted range.
pub const MARKER_TEXT: &str = "What did we do so far?";

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
    }
}

fn content_id(call: &BashCall) -> Option<&str> {
    call.output.as_ref()?.content_id.as_deref()
}

/// Projects `message` of session `session_id` under `folds`.
pub fn project(message: &Message, session_id: &str, folds: &Folds) -> Projected {
    let mut out = Projected::default();
    let entry =
        |wire: Value, kind: &'static str, part_id: Option<&str>, skill: Option<&str>| Entry {
            wire,
            kind,
            message_id: message.id.clone(),
            part_id: part_id.map(str::to_owned),
            seq: message.seq,
            skill: skill.map(str::to_owned),
            tokens: 0,
        };
    let whole = Ref {
        message_id: message.id.clone(),
        part_id: None,
    };
    if folds.manual.contains(&whole) {
        let text = format!(
            "[[AOS-FOLDED]]\ntype: message\nseq: {}\nrole: {}\norigin: {}\nunfold: aos call session.context.unfold --payload '{{\"sessionId\":\"{session_id}\",\"ref\":{{\"historyMessageId\":\"{}\"}}}}'\n[[/AOS-FOLDED]]",
            message.seq,
            role_name(message.role),
            message.origin,
            message.id,
        );
        out.entries.push(entry(
            json!({"role": role_name(message.role), "content": text}),
            "message-folded",
            None,
            None,
        ));
        return out;
    }
    let mut text = String::new();
    let mut text_part: Option<&str> = None;
    let mut calls: Vec<(&str, &BashCall)> = Vec::new();
    for part in &message.parts {
        match &part.body {
            PartBody::Text { text: t } => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
                text_part.get_or_insert(&part.id);
            }
            PartBody::Bash(call) => {
                if call.state != BashState::InputAvailable {
                    calls.push((&part.id, call));
                }
            }
            PartBody::SkillLoad {
                name, text: body, ..
            } => out.entries.push(entry(
                json!({"role": "system", "content": format!("[[AOS-SKILL {name}]]\n{body}")}),
                "skill-load",
                Some(&part.id),
                Some(name),
            )),
            PartBody::SkillUnload { name } => out.unloads.push(name.clone()),
            PartBody::CompactionMarker { .. } => out.entries.push(entry(
                json!({"role": "user", "content": MARKER_TEXT}),
                "compaction-marker",
                Some(&part.id),
                None,
            )),
            PartBody::CompactionSummary { text: summary, .. } => out.entries.push(entry(
                json!({"role": "assistant", "content": summary}),
                "compaction-summary",
                Some(&part.id),
                None,
            )),
            PartBody::Interrupt { reason, .. } => out.entries.push(entry(
                json!({"role": "system", "content": format!("[[AOS-INTERRUPT {reason}]]")}),
                "interrupt",
                Some(&part.id),
                None,
            )),
            PartBody::Error { source, message: m } => out.entries.push(entry(
                json!({"role": "system", "content": format!("[[AOS-ERROR {source}]] {m}")}),
                "error",
                Some(&part.id),
                None,
            )),
            // Facts for skills and people, not for the model.
            PartBody::Bootstrap { .. } | PartBody::Meta(_) => {}
        }
    }
    if calls.is_empty() {
        if !text.is_empty() {
            let kind = match message.role {
                Role::User => "user-input",
                Role::Assistant => "assistant-output",
                Role::System => "system-note",
            };
            out.entries.push(entry(
                json!({"role": role_name(message.role), "content": text}),
                kind,
                text_part,
                None,
            ));
        }
        return out;
    }
    let tool_calls: Vec<Value> = calls.iter().map(|(_, call)| call.to_tool_call()).collect();
    let content = if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    out.entries.push(entry(
        json!({"role": "assistant", "content": content, "tool_calls": tool_calls}),
        "tool-bash-call",
        Some(calls[0].0),
        None,
    ));
    for (part_id, call) in calls {
        let r = Ref {
            message_id: message.id.clone(),
            part_id: Some(part_id.to_owned()),
        };
        let unfolded = folds.unfolded.get(&r);
        let folded =
            folds.manual.contains(&r) || (content_id(call).is_some() && unfolded.is_none());
        let (content, kind) = if folded {
            (
                folded_result(call, session_id, &message.id, part_id),
                "tool-bash-folded",
            )
        } else {
            (
                result_text(call, unfolded.map(String::as_str)),
                "tool-bash-result",
            )
        };
        out.entries.push(entry(
            json!({"role": "tool", "tool_call_id": call.tool_call_id, "content": content}),
            kind,
            Some(part_id),
            None,
        ));
    }
    out
}

/// A bash result as the model sees it unfolded: the visible output (or the stored
/// content, when unfolded), then the failure in brackets.
fn result_text(call: &BashCall, stored: Option<&str>) -> String {
    let mut text = match (stored, &call.output) {
        (Some(body), _) => body.to_owned(),
        (None, Some(output)) => output
            .visible_result
            .clone()
            .or_else(|| output.preview.clone())
            .unwrap_or_default(),
        (None, None) => String::new(),
    };
    if call.state == BashState::OutputError
        && let Some(error) = &call.error_text
    {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push('[');
        text.push_str(error);
        text.push(']');
    }
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text
    }
}

/// The `tool-bash-folded` placeholder: size, preview, and the commands that read,
/// search and unfold it.
fn folded_result(call: &BashCall, session_id: &str, message_id: &str, part_id: &str) -> String {
    let output = call.output.as_ref();
    let content_id = output.and_then(|o| o.content_id.as_deref());
    let (size, lines, preview) = match output {
        Some(o) if o.content_id.is_some() => (
            o.size_chars.unwrap_or(0),
            o.line_count.unwrap_or(0),
            o.preview.clone().unwrap_or_default(),
        ),
        Some(o) => {
            let visible = o.visible_result.clone().unwrap_or_default();
            (
                visible.chars().count() as u64,
                visible.lines().count() as u64,
                preview_of(&visible),
            )
        }
        None => (0, 0, String::new()),
    };
    let id = call.tool_call_id.as_str();
    let mut text = format!(
        "[[AOS-FOLDED]]\ntype: tool-bash-result\ntool_call_id: {id}\nsize: {size} chars, {lines} lines\npreview:\n{preview}\n"
    );
    if let Some(content_id) = content_id {
        text.push_str(&format!(
            "read: aos call content.read --payload '{{\"contentId\":\"{content_id}\"}}'\nhead: aos call content.read --payload '{{\"contentId\":\"{content_id}\",\"limit\":20}}'\ngrep: aos call content.search --payload '{{\"contentId\":\"{content_id}\",\"pattern\":\"<pattern>\"}}'\n"
        ));
    }
    text.push_str(&format!(
        "unfold: aos call session.context.unfold --payload '{{\"sessionId\":\"{session_id}\",\"ref\":{{\"historyMessageId\":\"{message_id}\",\"historyPartId\":\"{part_id}\"}}}}'\n[[/AOS-FOLDED]]"
    ));
    text
}

/// Lines shown of a folded result.
pub const PREVIEW_LINES: usize = 10;
/// Characters shown of a folded result at most.
pub const PREVIEW_CHARS: usize = 2000;

/// The first lines of `text`, bounded.
pub fn preview_of(text: &str) -> String {
    let mut preview = String::new();
    for line in text.lines().take(PREVIEW_LINES) {
        if !preview.is_empty() {
            preview.push('\n');
        }
        preview.push_str(line);
        if preview.chars().count() >= PREVIEW_CHARS {
            return preview.chars().take(PREVIEW_CHARS).collect();
        }
    }
    preview
}

#[cfg(test)]
mod tests {
    use super::*;
    use aos_sdk::protocol::{BashOutput, Origin, Part, SkillLoadCause, Timestamp};

    fn message(seq: u64, role: Role, origin: Origin, parts: Vec<PartBody>) -> Message {
        Message {
            id: format!("msg_{seq}"),
            session_id: "ses_1".into(),
            seq,
            role,
            origin,
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

    fn bash(id: &str, visible: Option<&str>, content: Option<&str>) -> PartBody {
        PartBody::Bash(BashCall {
            tool_call_id: id.into(),
            state: BashState::OutputAvailable,
            command: "cat big.log".into(),
            cwd: None,
            timeout_ms: None,
            output: Some(BashOutput {
                visible_result: visible.map(str::to_owned),
                exit_code: Some(0),
                content_id: content.map(str::to_owned),
                size_chars: content.map(|_| 200_000),
                line_count: content.map(|_| 4000),
                preview: content.map(|_| "line 1\nline 2".to_owned()),
                truncated: false,
            }),
            error_text: None,
        })
    }

    #[test]
    fn an_auto_folded_result_becomes_the_exact_placeholder() {
        let m = message(
            5,
            Role::Assistant,
            Origin::Agent,
            vec![bash("call_1", None, Some("cnt_9"))],
        );
        let p = project(&m, "ses_1", &Folds::default());
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].kind, "tool-bash-call");
        assert_eq!(p.entries[1].kind, "tool-bash-folded");
        assert_eq!(
            p.entries[1].wire["content"].as_str().unwrap(),
            "[[AOS-FOLDED]]\ntype: tool-bash-result\ntool_call_id: call_1\nsize: 200000 chars, 4000 lines\npreview:\nline 1\nline 2\n\
             read: aos call content.read --payload '{\"contentId\":\"cnt_9\"}'\n\
             head: aos call content.read --payload '{\"contentId\":\"cnt_9\",\"limit\":20}'\n\
             grep: aos call content.search --payload '{\"contentId\":\"cnt_9\",\"pattern\":\"<pattern>\"}'\n\
             unfold: aos call session.context.unfold --payload '{\"sessionId\":\"ses_1\",\"ref\":{\"historyMessageId\":\"msg_5\",\"historyPartId\":\"prt_5_0\"}}'\n[[/AOS-FOLDED]]"
        );
        // Unfolded, the stored content comes back in full.
        let mut folds = Folds::default();
        folds.unfolded.insert(
            Ref {
                message_id: "msg_5".into(),
                part_id: Some("prt_5_0".into()),
            },
            "everything".into(),
        );
        let p = project(&m, "ses_1", &folds);
        assert_eq!(p.entries[1].kind, "tool-bash-result");
        assert_eq!(p.entries[1].wire["content"], "everything");
    }

    #[test]
    fn a_folded_message_is_one_placeholder_with_its_unfold_command() {
        let m = message(
            3,
            Role::User,
            Origin::Human,
            vec![PartBody::Text {
                text: "long".into(),
            }],
        );
        let mut folds = Folds::default();
        folds.manual.insert(Ref {
            message_id: "msg_3".into(),
            part_id: None,
        });
        let p = project(&m, "ses_1", &folds);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].kind, "message-folded");
        assert_eq!(
            p.entries[0].wire,
            json!({"role": "user", "content": "[[AOS-FOLDED]]\ntype: message\nseq: 3\nrole: user\norigin: human\nunfold: aos call session.context.unfold --payload '{\"sessionId\":\"ses_1\",\"ref\":{\"historyMessageId\":\"msg_3\"}}'\n[[/AOS-FOLDED]]"})
        );
    }

    #[test]
    fn markers_skills_and_interrupts_project_by_the_rules() {
        let cases = vec![
            (
                message(
                    1,
                    Role::User,
                    Origin::Aos,
                    vec![PartBody::SkillLoad {
                        name: "aos".into(),
                        cause: SkillLoadCause::Default,
                        text: "# AOS".into(),
                    }],
                ),
                json!({"role": "system", "content": "[[AOS-SKILL aos]]\n# AOS"}),
                "skill-load",
            ),
            (
                message(
                    2,
                    Role::User,
                    Origin::Aos,
                    vec![PartBody::CompactionMarker {
                        auto: true,
                        from_seq: 1,
                        to_seq: 9,
                    }],
                ),
                json!({"role": "user", "content": "What did we do so far?"}),
                "compaction-marker",
            ),
            (
                message(
                    3,
                    Role::Assistant,
                    Origin::Aos,
                    vec![PartBody::CompactionSummary {
                        text: "we built it".into(),
                        marker_id: Some("msg_2".into()),
                    }],
                ),
                json!({"role": "assistant", "content": "we built it"}),
                "compaction-summary",
            ),
            (
                message(
                    4,
                    Role::User,
                    Origin::Aos,
                    vec![PartBody::Interrupt {
                        reason: "stop".into(),
                        payload: None,
                    }],
                ),
                json!({"role": "system", "content": "[[AOS-INTERRUPT stop]]"}),
                "interrupt",
            ),
        ];
        for (m, wire, kind) in cases {
            let p = project(&m, "ses_1", &Folds::default());
            assert_eq!(p.entries.len(), 1, "{m:?}");
            assert_eq!(p.entries[0].wire, wire);
            assert_eq!(p.entries[0].kind, kind);
        }
    }

    #[test]
    fn preview_is_ten_lines_at_most() {
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(preview_of(&text).lines().count(), 10);
        assert!(preview_of(&"x".repeat(10_000)).chars().count() <= PREVIEW_CHARS);
    }
}
