//! Token estimates with a real BPE tokenizer (tiktoken's `o200k_base` and
//! `cl100k_base`, through `tiktoken-rs`), and the per-model budgets of `config.json`.
//!
//! Method: each context message counts its content (and, for tool calls, the
//! serialized arguments) encoded with the model's encoding, plus 4 tokens of chat
//! framing per message — OpenAI's published accounting for chat models. OpenAI models
//! get their own encoding (`o200k_base` for gpt-4o, gpt-4.1, gpt-5 and o-series,
//! `cl100k_base` for older ones); other families (Qwen, Llama, Mistral…) have their own
//! vocabularies, for which `o200k_base` is used as an estimate — on English prose and
//! code it lands within about 15% of those tokenizers, which the reserve in
//! `config.json` covers.

use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Chat framing per message (role, separators).
const PER_MESSAGE: u32 = 4;

/// The two encodings, loaded on first use.
#[derive(Default)]
pub struct Tokenizer {
    o200k: OnceLock<Option<Arc<CoreBPE>>>,
    cl100k: OnceLock<Option<Arc<CoreBPE>>>,
}

/// Which encoding counts for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    pub fn for_model(model: &str) -> Self {
        let name = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_ascii_lowercase();
        let cl100k = ["gpt-4-", "gpt-4", "gpt-3.5", "text-embedding"];
        if name.starts_with("gpt-4o") || name.starts_with("gpt-4.1") {
            Encoding::O200k
        } else if cl100k.iter().any(|p| name.starts_with(p)) {
            Encoding::Cl100k
        } else {
            Encoding::O200k
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }
}

impl Tokenizer {
    fn bpe(&self, encoding: Encoding) -> Option<Arc<CoreBPE>> {
        let (cell, load): (_, fn() -> anyhow::Result<CoreBPE>) = match encoding {
            Encoding::O200k => (&self.o200k, tiktoken_rs::o200k_base),
            Encoding::Cl100k => (&self.cl100k, tiktoken_rs::cl100k_base),
        };
        cell.get_or_init(|| match load() {
            Ok(bpe) => Some(Arc::new(bpe)),
            Err(error) => {
                tracing::error!(%error, encoding = encoding.name(), "cannot load the tokenizer; estimating 4 characters a token");
                None
            }
        })
        .clone()
    }

    /// Tokens of `text`.
    pub fn count(&self, encoding: Encoding, text: &str) -> u32 {
        match self.bpe(encoding) {
            Some(bpe) => bpe.encode_ordinary(text).len() as u32,
            None => text.len().div_ceil(4) as u32,
        }
    }

    /// Tokens of one wire chat message.
    pub fn message(&self, encoding: Encoding, wire: &Value) -> u32 {
        let mut tokens = PER_MESSAGE;
        if let Some(content) = wire.get("content").and_then(Value::as_str) {
            tokens += self.count(encoding, content);
        }
        if let Some(calls) = wire.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                if let Some(arguments) = call["function"]["arguments"].as_str() {
                    tokens += self.count(encoding, arguments) + PER_MESSAGE;
                }
            }
        }
        tokens
    }
}

/// `config.json` of the skill: context windows per model, the reserve kept free for
/// the answer, compaction's input bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// First match wins; `match` is a model name pattern with `*` wildcards, compared
    /// with the name after the provider prefix.
    #[serde(default)]
    pub models: Vec<ModelWindow>,
    #[serde(default = "default_window")]
    pub default_context_window: u32,
    /// Tokens kept free for the system prompt and the model's answer.
    #[serde(default = "default_reserve")]
    pub reserve_tokens: u32,
    /// The compaction prompt quotes at most this many characters of history.
    #[serde(default = "default_summary_input")]
    pub summary_input_chars: usize,
    /// Used when the kernel sends no `autoFoldThreshold`.
    #[serde(default = "default_fold")]
    pub auto_fold_threshold: u64,
    /// Sessions kept in memory; the least recently used beyond it are dropped and
    /// rebuilt from history when next needed.
    #[serde(default = "default_cached_sessions")]
    pub cached_sessions: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelWindow {
    #[serde(rename = "match")]
    pub pattern: String,
    pub context_window: u32,
}

fn default_window() -> u32 {
    128_000
}
fn default_reserve() -> u32 {
    8_192
}
fn default_summary_input() -> usize {
    60_000
}
fn default_fold() -> u64 {
    16_384
}
fn default_cached_sessions() -> usize {
    1_000
}

impl Default for Config {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            default_context_window: default_window(),
            reserve_tokens: default_reserve(),
            summary_input_chars: default_summary_input(),
            auto_fold_threshold: default_fold(),
            cached_sessions: default_cached_sessions(),
        }
    }
}

impl Config {
    /// The token count past which the context is compacted: the kernel's
    /// `compactionThreshold`, lowered to fit the model's window minus the reserve.
    pub fn budget(&self, model: Option<&str>, threshold: Option<u64>) -> u64 {
        let window = model
            .map(|m| m.rsplit('/').next().unwrap_or(m))
            .and_then(|name| {
                self.models
                    .iter()
                    .find(|w| wildcard(&w.pattern.to_ascii_lowercase(), &name.to_ascii_lowercase()))
            })
            .map_or(self.default_context_window, |w| w.context_window);
        let fits = u64::from(window.saturating_sub(self.reserve_tokens)).max(1024);
        threshold.map_or(fits, |t| t.min(fits))
    }
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    for (i, piece) in pieces.iter().enumerate() {
        if i == pieces.len() - 1 {
            return rest.ends_with(piece);
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_first_matching_model() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "models": [{"match": "qwen2.5*", "contextWindow": 32768}, {"match": "*", "contextWindow": 200000}],
            "reserveTokens": 4096,
        }))
        .unwrap();
        assert_eq!(
            config.budget(Some("local/qwen2.5-coder"), Some(100_000)),
            28_672
        );
        assert_eq!(config.budget(Some("openai/gpt-4o"), Some(100_000)), 100_000);
        assert_eq!(config.budget(None, None), 128_000 - 4096);
        assert!(wildcard("gpt-*-mini", "gpt-4o-mini"));
        assert!(!wildcard("gpt-*-mini", "gpt-4o"));
    }

    #[test]
    fn the_tokenizer_counts_real_tokens() {
        let t = Tokenizer::default();
        let n = t.count(
            Encoding::O200k,
            "Hello, world! This is a test of the tokenizer.",
        );
        assert!((8..=16).contains(&n), "{n}");
        assert_eq!(Encoding::for_model("openai/gpt-4-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("local/qwen2.5"), Encoding::O200k);
    }
}
