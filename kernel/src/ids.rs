//! Opaque ids (`agt_…`, `ses_…`) and token secrets.

use uuid::Uuid;

/// A new id with `prefix`: a time-ordered UUIDv7 in lowercase hex, so ids sort by
/// creation time.
pub fn new_id(prefix: &str) -> String {
    let uuid = Uuid::now_v7();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    id.push_str(&uuid.simple().to_string());
    id
}

/// A new bearer token secret: `aos_` and 256 random bits in hex.
pub fn new_token_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("aos_{}", hex::encode(bytes))
}

/// True when `id` has `prefix` followed by 1–128 characters of `[A-Za-z0-9_-]`.
/// Used to reject malformed ids early with a clear message.
pub fn looks_like(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 128
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("ses_");
        let b = new_id("ses_");
        assert!(looks_like(&a, "ses_"));
        assert!(a < b, "{a} should sort before {b}");
        assert!(!looks_like("ses_", "ses_"));
        assert!(!looks_like("agt_x", "ses_"));
        assert!(!looks_like("ses_../../etc", "ses_"));
    }

    #[test]
    fn token_secrets_are_long_and_distinct() {
        let a = new_token_secret();
        assert_eq!(a.len(), 4 + 64);
        assert_ne!(a, new_token_secret());
    }
}
