//! The engine's per-session state: the history from the latest compaction boundary on,
//! each message projected once (and again only when its fold state changes), the fold
//! sets, and the context revision.

use std::collections::HashSet;

use aos_sdk::protocol::{Message, PartBody};
use serde_json::Value;

use crate::project::{Entry, Folds, Projected, Ref, project};
use crate::tokens::{Encoding, Tokenizer};

struct Cached {
    message: Message,
    projected: Projected,
}

/// One session's context.
pub struct SessionContext {
    pub session_id: String,
    /// From the latest complete compaction marker on (or the first message).
    messages: Vec<Cached>,
    /// The newest seq seen.
    pub last_seq: u64,
    pub revision: u64,
    pub folds: Folds,
    encoding: Encoding,
    /// Messages whose seq is below this were compacted away.
    pub boundary_seq: u64,
}

/// The assembled context.
pub struct Assembled {
    pub messages: Vec<Value>,
    pub tokens: u64,
    /// Conversation entries after the boundary (not skills, not the summary pair):
    /// compaction needs some to summarise.
    pub compactable: usize,
}

impl SessionContext {
    pub fn new(session_id: &str, encoding: Encoding) -> Self {
        Self {
            session_id: session_id.to_owned(),
            messages: Vec::new(),
            last_seq: 0,
            revision: 0,
            folds: Folds::default(),
            encoding,
            boundary_seq: 1,
        }
    }

    /// Re-counts everything when the model's encoding changes.
    pub fn set_encoding(&mut self, encoding: Encoding, tokenizer: &Tokenizer) {
        if self.encoding != encoding {
            self.encoding = encoding;
            for i in 0..self.messages.len() {
                self.reproject(i, tokenizer);
            }
        }
    }

    /// Starts over from `history` (in seq order, the boundary search included).
    pub fn reset(&mut self, history: Vec<Message>, tokenizer: &Tokenizer) {
        self.messages.clear();
        self.last_seq = 0;
        self.boundary_seq = 1;
        for message in history {
            self.ingest(message, tokenizer);
        }
        self.revision += 1;
    }

    /// Adds the next message; a completed compaction pair moves the boundary.
    pub fn ingest(&mut self, message: Message, tokenizer: &Tokenizer) {
        if message.seq <= self.last_seq {
            return;
        }
        self.last_seq = message.seq;
        let marker = message.parts.iter().find_map(|p| match &p.body {
            PartBody::CompactionSummary {
                marker_id: Some(marker),
                ..
            } => Some(marker.clone()),
            _ => None,
        });
        // A completed pair moves the boundary: the context starts at the marker and its
        // summary, followed by whatever the compaction kept (messages after its range).
        let mut kept = Vec::new();
        if let Some(marker) = marker
            && let Some(at) = self.messages.iter().position(|c| c.message.id == marker)
        {
            let marker = self.messages.remove(at);
            let to_seq = marker
                .message
                .parts
                .iter()
                .find_map(|p| match &p.body {
                    PartBody::CompactionMarker { to_seq, .. } => Some(*to_seq),
                    _ => None,
                })
                .unwrap_or(marker.message.seq);
            self.boundary_seq = marker.message.seq;
            kept = self
                .messages
                .drain(..)
                .filter(|c| c.message.seq > to_seq)
                .collect();
            self.messages.push(marker);
        }
        let mut cached = Cached {
            projected: Projected::default(),
            message,
        };
        self.count(&mut cached, tokenizer);
        self.messages.push(cached);
        self.messages.extend(kept);
        self.revision += 1;
    }

    fn count(&self, cached: &mut Cached, tokenizer: &Tokenizer) {
        cached.projected = project(&cached.message, &self.session_id, &self.folds);
        for entry in &mut cached.projected.entries {
            entry.tokens = tokenizer.message(self.encoding, &entry.wire);
        }
    }

    fn reproject(&mut self, index: usize, tokenizer: &Tokenizer) {
        let mut cached = Cached {
            message: self.messages[index].message.clone(),
            projected: Projected::default(),
        };
        self.count(&mut cached, tokenizer);
        self.messages[index] = cached;
    }

    /// The cached message a ref points at, if it is in the context.
    pub fn find(&self, r: &Ref) -> Option<&Message> {
        let message = &self
            .messages
            .iter()
            .find(|c| c.message.id == r.message_id)?
            .message;
        match &r.part_id {
            None => Some(message),
            Some(part) => message
                .parts
                .iter()
                .any(|p| &p.id == part)
                .then_some(message),
        }
    }

    /// Folds `r`; false when it is not in the context.
    pub fn fold(&mut self, r: Ref, tokenizer: &Tokenizer) -> bool {
        let Some(index) = self
            .messages
            .iter()
            .position(|c| c.message.id == r.message_id)
        else {
            return false;
        };
        if self.find(&r).is_none() {
            return false;
        }
        self.folds.unfolded.remove(&r);
        self.folds.manual.insert(r);
        self.reproject(index, tokenizer);
        self.revision += 1;
        true
    }

    /// Unfolds `r`, with the stored content for an auto-folded part.
    pub fn unfold(&mut self, r: Ref, stored: Option<String>, tokenizer: &Tokenizer) -> bool {
        let Some(index) = self
            .messages
            .iter()
            .position(|c| c.message.id == r.message_id)
        else {
            return false;
        };
        self.folds.manual.remove(&r);
        if let Some(body) = stored {
            self.folds.unfolded.insert(r, body);
        }
        self.reproject(index, tokenizer);
        self.revision += 1;
        true
    }

    pub fn folded_count(&self) -> usize {
        self.messages
            .iter()
            .map(|c| self.folds.count_for(&c.message))
            .sum()
    }

    /// The context: every entry from the boundary on, minus skill texts a later
    /// `skill-unload` removed.
    pub fn assemble(&self) -> Assembled {
        let mut unloaded: HashSet<&str> = HashSet::new();
        let mut kept: Vec<&Entry> = Vec::new();
        for cached in self.messages.iter().rev() {
            for name in &cached.projected.unloads {
                unloaded.insert(name);
            }
            for entry in cached.projected.entries.iter().rev() {
                if let Some(skill) = &entry.skill
                    && unloaded.contains(skill.as_str())
                {
                    continue;
                }
                kept.push(entry);
            }
        }
        kept.reverse();
        let compactable = kept
            .iter()
            .filter(|e| {
                !matches!(
                    e.kind,
                    "skill-load" | "compaction-marker" | "compaction-summary"
                )
            })
            .count();
        Assembled {
            tokens: kept.iter().map(|e| u64::from(e.tokens)).sum(),
            messages: kept.iter().map(|e| e.to_context_message()).collect(),
            compactable,
        }
    }

    /// Skills whose text is in the context now, in load order (reinjected after a
    /// compaction).
    pub fn active_skills(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for cached in &self.messages {
            for entry in &cached.projected.entries {
                if let Some(skill) = &entry.skill
                    && !names.contains(skill)
                {
                    names.push(skill.clone());
                }
            }
            names.retain(|n| !cached.projected.unloads.contains(n));
        }
        names
    }

    /// Where a compaction of everything up to now should stop so the current task
    /// stays verbatim: just before the newest human message, when what follows it
    /// fits in `keep_tokens`; otherwise the newest seq.
    pub fn compaction_end(&self, keep_tokens: u64) -> u64 {
        let newest_human = self.messages.iter().rposition(|c| {
            c.message.role == aos_sdk::protocol::Role::User
                && c.message.origin == aos_sdk::protocol::Origin::Human
        });
        if let Some(at) = newest_human {
            let after: u64 = self.messages[at..]
                .iter()
                .flat_map(|c| &c.projected.entries)
                .map(|e| u64::from(e.tokens))
                .sum();
            let before = self.messages[..at]
                .iter()
                .flat_map(|c| &c.projected.entries)
                .filter(|e| {
                    !matches!(
                        e.kind,
                        "skill-load" | "compaction-marker" | "compaction-summary"
                    )
                })
                .count();
            if after <= keep_tokens && before >= 2 {
                return self.messages[at].message.seq - 1;
            }
        }
        self.last_seq
    }

    /// The cached messages in `[from, to]`.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = &Message> {
        self.messages
            .iter()
            .map(|c| &c.message)
            .filter(move |m| m.seq >= from && m.seq <= to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aos_sdk::protocol::{Origin, Part, Role, SkillLoadCause, Timestamp};

    fn message(seq: u64, parts: Vec<PartBody>) -> Message {
        Message {
            id: format!("msg_{seq}"),
            session_id: "ses_1".into(),
            seq,
            role: Role::User,
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

    fn text(seq: u64, t: &str) -> Message {
        message(seq, vec![PartBody::Text { text: t.into() }])
    }

    #[test]
    fn a_completed_pair_moves_the_boundary_and_unloads_drop_skill_texts() {
        let t = Tokenizer::default();
        let mut ctx = SessionContext::new("ses_1", Encoding::O200k);
        ctx.ingest(
            message(
                1,
                vec![PartBody::SkillLoad {
                    name: "notes".into(),
                    cause: SkillLoadCause::Explicit,
                    text: "n".into(),
                }],
            ),
            &t,
        );
        ctx.ingest(text(2, "first"), &t);
        ctx.ingest(
            message(
                3,
                vec![PartBody::SkillUnload {
                    name: "notes".into(),
                }],
            ),
            &t,
        );
        assert_eq!(ctx.assemble().messages.len(), 1);
        assert!(ctx.active_skills().is_empty());
        ctx.ingest(
            message(
                4,
                vec![PartBody::CompactionMarker {
                    auto: false,
                    from_seq: 1,
                    to_seq: 3,
                }],
            ),
            &t,
        );
        // An unpaired marker moves nothing.
        assert_eq!(ctx.boundary_seq, 1);
        ctx.ingest(
            message(
                5,
                vec![PartBody::CompactionSummary {
                    text: "did the first thing".into(),
                    marker_id: Some("msg_4".into()),
                }],
            ),
            &t,
        );
        assert_eq!(ctx.boundary_seq, 4);
        let kinds: Vec<String> = ctx
            .assemble()
            .messages
            .iter()
            .map(|m| m["aos"]["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["compaction-marker", "compaction-summary"]);
        assert_eq!(ctx.assemble().compactable, 0);
    }
}
