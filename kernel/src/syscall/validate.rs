//! Checks on params beyond their types, with messages that name the field, say what is
//! wrong and what is accepted.

use std::collections::{BTreeMap, HashSet};

use aos_sdk::protocol::{ProviderConfig, SkillDefaultRule, Toggle};
use serde_json::Value;

use super::SyscallError;
use crate::skills::manifest::check_name;

/// Pages hold at most this many items.
pub const MAX_PAGE: u32 = 1000;

/// A text field of `min..=max` characters (after trimming for the minimum).
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<(), SyscallError> {
    let chars = value.chars().count();
    if value.trim().chars().count() < min || chars > max {
        return Err(SyscallError::invalid(
            field,
            format!("must be {min}–{max} characters, got {chars}"),
        ));
    }
    if value.chars().any(|c| c == '\0') {
        return Err(SyscallError::invalid(
            field,
            "must not contain NUL characters",
        ));
    }
    Ok(())
}

/// An integer within `min..=max`.
pub fn range<T>(field: &str, value: T, min: T, max: T) -> Result<(), SyscallError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        return Err(SyscallError::invalid(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// A page size: default when absent, 1..=1000 otherwise.
pub fn page_limit(value: Option<u32>, default: u32) -> Result<u32, SyscallError> {
    let limit = value.unwrap_or(default);
    range("limit", limit, 1, MAX_PAGE)?;
    Ok(limit)
}

/// A compute priority.
pub fn priority(field: &str, value: i32) -> Result<(), SyscallError> {
    range(field, value, -1000, 1000)
}

/// `autoFoldThreshold` in characters.
pub fn auto_fold_threshold(field: &str, value: u64) -> Result<(), SyscallError> {
    range(field, value, 256, 1_000_000_000)
}

/// A model reference: `provider/model` or a bare model name for the default provider.
pub fn model(field: &str, value: &str) -> Result<(), SyscallError> {
    text(field, value, 1, 200)?;
    if value.chars().any(char::is_whitespace) {
        return Err(SyscallError::invalid(
            field,
            format!("`{value}` must not contain spaces; use `provider/model`"),
        ));
    }
    Ok(())
}

/// Free-form metadata: at most 64 keys and 64 KiB of JSON.
pub fn metadata(field: &str, value: &BTreeMap<String, Value>) -> Result<(), SyscallError> {
    if value.len() > 64 {
        return Err(SyscallError::invalid(
            field,
            format!("may have at most 64 keys, got {}", value.len()),
        ));
    }
    json_size(field, value, 64 * 1024)
}

/// An opaque JSON object of bounded size (budgets and similar).
pub fn object(field: &str, value: &Value) -> Result<(), SyscallError> {
    if !value.is_object() {
        return Err(SyscallError::invalid(field, "must be a JSON object"));
    }
    json_size(field, value, 64 * 1024)
}

fn json_size<T: serde::Serialize>(field: &str, value: &T, max: usize) -> Result<(), SyscallError> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max {
        return Err(SyscallError::invalid(
            field,
            format!("is {size} bytes as JSON; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Which layer a list of default-skill rules belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    System,
    Agent,
    Session,
}

/// Default-skill rules: valid names, no duplicates, `load` or `start` set, and
/// `pinned` only on the system layer with `load: enable`.
pub fn default_skills(
    field: &str,
    rules: &[SkillDefaultRule],
    layer: Layer,
) -> Result<(), SyscallError> {
    if rules.len() > 256 {
        return Err(SyscallError::invalid(field, "may hold at most 256 rules"));
    }
    let mut seen = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{field}[{i}]");
        check_name(&rule.name).map_err(|m| SyscallError::invalid(&format!("{at}.name"), m))?;
        if !seen.insert(rule.name.as_str()) {
            return Err(SyscallError::invalid(
                &at,
                format!(
                    "names `{}` a second time; one rule per skill per layer",
                    rule.name
                ),
            ));
        }
        if rule.load.is_none() && rule.start.is_none() {
            return Err(SyscallError::invalid(
                &at,
                format!(
                    "for `{}` must set `load` or `start` (`enable` or `disable`)",
                    rule.name
                ),
            ));
        }
        if rule.pinned {
            if layer != Layer::System {
                return Err(SyscallError::invalid(
                    &format!("{at}.pinned"),
                    "is allowed only in the system layer (`system.update` or aoscb.json)",
                ));
            }
            if rule.load != Some(Toggle::Enable) {
                return Err(SyscallError::invalid(
                    &format!("{at}.pinned"),
                    "requires `load: enable`",
                ));
            }
        }
    }
    Ok(())
}

/// Provider configurations: unique names, http(s) URLs, sane limits.
pub fn providers(field: &str, providers: &[ProviderConfig]) -> Result<(), SyscallError> {
    let mut seen = HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !name_ok {
            return Err(SyscallError::invalid(
                &format!("{at}.name"),
                format!("`{}` must be 1–64 of `a-z0-9-_.`", p.name),
            ));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(SyscallError::invalid(
                &format!("{at}.name"),
                format!("`{}` is used by two providers", p.name),
            ));
        }
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            return Err(SyscallError::invalid(
                &format!("{at}.baseUrl"),
                format!("`{}` must start with http:// or https://", p.base_url),
            ));
        }
        if let Some(n) = p.max_concurrent {
            range(&format!("{at}.maxConcurrent"), n, 1, 100_000)?;
        }
        if let Some(env) = &p.api_key_env
            && (env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(SyscallError::invalid(
                &format!("{at}.apiKeyEnv"),
                format!("`{env}` must be an environment variable name"),
            ));
        }
    }
    Ok(())
}
