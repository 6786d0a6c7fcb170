//! `session.history.*`: reading and searching a session's append-only history.

use aos_sdk::protocol::{
    ErrorCode, HistoryGetParams, HistoryHit, HistoryListParams, HistorySearchParams,
    HistorySearchResult, Message, Page, PartBody,
};

use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::store::HistoryQuery;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "session.history.list",
            OpKind::Query,
            Access::Session {
                field: "sessionId",
                write: false,
            },
            "Read history messages in seq order (or newest first), by seq range or page cursor.",
            list,
        ),
        op(
            "session.history.get",
            OpKind::Query,
            Access::Session {
                field: "sessionId",
                write: false,
            },
            "Read one history message by id or seq.",
            get,
        ),
        op(
            "session.history.search",
            OpKind::Query,
            Access::Session {
                field: "sessionId",
                write: false,
            },
            "Find messages whose text contains every word of the query (case-insensitive), newest first.",
            search,
        ),
    ]
}

async fn list(ctx: Ctx, params: HistoryListParams) -> Result<Out<Page<Message>>, SyscallError> {
    let limit = validate::page_limit(params.limit, 100)?;
    let session = ctx.kernel.get_session(&params.session_id).await?;
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                SyscallError::invalid(
                    "cursor",
                    format!("`{c}` is not a cursor from a previous page"),
                )
            })
        })
        .transpose()?;
    if let (Some(from), Some(to)) = (params.from_seq, params.to_seq)
        && from > to
    {
        return Err(SyscallError::invalid(
            "fromSeq",
            format!("({from}) must not be after `toSeq` ({to})"),
        ));
    }
    // The cursor is the last seq already returned; it narrows the range further.
    let (mut from_seq, mut to_seq) = (params.from_seq, params.to_seq);
    if let Some(cursor) = cursor {
        if params.descending {
            to_seq = Some(to_seq.map_or(cursor.saturating_sub(1), |t| {
                t.min(cursor.saturating_sub(1))
            }));
            if cursor <= 1 {
                return Ok(Out::new(Page {
                    items: vec![],
                    next_cursor: None,
                }));
            }
        } else {
            from_seq = Some(from_seq.map_or(cursor + 1, |f| f.max(cursor + 1)));
        }
    }
    let mut items = ctx
        .kernel
        .store
        .list_messages(
            &session.session_id,
            &HistoryQuery {
                from_seq,
                to_seq,
                limit: limit + 1,
                descending: params.descending,
            },
        )
        .await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|m| m.seq.to_string()))
        .flatten();
    Ok(Out::new(Page { items, next_cursor }))
}

async fn get(ctx: Ctx, params: HistoryGetParams) -> Result<Out<Message>, SyscallError> {
    let message = match (&params.message_id, params.seq) {
        (Some(id), None) => ctx.kernel.store.get_message(&params.session_id, id).await?,
        (None, Some(seq)) => {
            ctx.kernel
                .store
                .get_message_by_seq(&params.session_id, seq)
                .await?
        }
        _ => {
            return Err(SyscallError::new(
                ErrorCode::InvalidParams,
                "give exactly one of `messageId` and `seq`",
            ));
        }
    };
    match message {
        Some(message) => Ok(Out::new(message)),
        None => {
            ctx.kernel.get_session(&params.session_id).await?;
            let what = params
                .message_id
                .clone()
                .unwrap_or_else(|| format!("seq {}", params.seq.unwrap_or_default()));
            Err(SyscallError::not_found("message", &what))
        }
    }
}

/// Messages examined per search at most, so one query cannot scan forever.
const SEARCH_SCAN_LIMIT: usize = 50_000;
const SNIPPET_CHARS: usize = 160;

async fn search(
    ctx: Ctx,
    params: HistorySearchParams,
) -> Result<Out<HistorySearchResult>, SyscallError> {
    validate::text("query", &params.query, 1, 500)?;
    let limit = params.limit.unwrap_or(20);
    validate::range("limit", limit, 1, 200)?;
    let words: Vec<String> = params
        .query
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    if words.len() > 16 {
        return Err(SyscallError::invalid("query", "may hold at most 16 words"));
    }
    ctx.kernel.get_session(&params.session_id).await?;
    // The store can prefilter on one plain-ASCII word (stored parts are JSON, so
    // quotes, backslashes and non-ASCII case folding are matched here instead).
    let needle = words
        .iter()
        .filter(|w| w.is_ascii() && !w.contains(['"', '\\']))
        .max_by_key(|w| w.len())
        .cloned()
        .unwrap_or_default();
    let mut hits = Vec::new();
    let mut scanned = 0;
    let mut before = None;
    let mut truncated = false;
    'scan: loop {
        let batch = ctx
            .kernel
            .store
            .find_messages_containing(&params.session_id, &needle, before, 200)
            .await?;
        let Some(last) = batch.last() else { break };
        before = Some(last.seq);
        for message in &batch {
            scanned += 1;
            for part in &message.parts {
                let text = searchable_text(&part.body);
                let lower = text.to_lowercase();
                if words.iter().all(|w| lower.contains(w.as_str())) {
                    if hits.len() == limit as usize {
                        truncated = true;
                        break 'scan;
                    }
                    hits.push(HistoryHit {
                        message_id: message.id.clone(),
                        seq: message.seq,
                        role: message.role,
                        part_id: part.id.clone(),
                        snippet: snippet(&text, &lower, &words[0]),
                    });
                    break;
                }
            }
        }
        if batch.len() < 200 || scanned >= SEARCH_SCAN_LIMIT {
            truncated |= scanned >= SEARCH_SCAN_LIMIT;
            break;
        }
    }
    Ok(Out::new(HistorySearchResult { hits, truncated }))
}

/// The text of a part that search looks at.
fn searchable_text(body: &PartBody) -> String {
    match body {
        PartBody::Text { text } | PartBody::CompactionSummary { text, .. } => text.clone(),
        PartBody::Bash(call) => {
            let mut text = call.command.clone();
            if let Some(output) = &call.output {
                for piece in [&output.visible_result, &output.preview]
                    .into_iter()
                    .flatten()
                {
                    text.push('\n');
                    text.push_str(piece);
                }
            }
            if let Some(error) = &call.error_text {
                text.push('\n');
                text.push_str(error);
            }
            text
        }
        PartBody::SkillLoad { name, text, .. } => format!("{name}\n{text}"),
        PartBody::SkillUnload { name } => name.clone(),
        PartBody::Interrupt { reason, .. } => reason.clone(),
        PartBody::Error { source, message } => format!("{source}: {message}"),
        PartBody::CompactionMarker { .. } | PartBody::Bootstrap { .. } | PartBody::Meta(_) => {
            String::new()
        }
    }
}

/// About `SNIPPET_CHARS` characters of `text` around the first match of `word`.
fn snippet(text: &str, lower: &str, word: &str) -> String {
    // Lowercasing can change byte lengths; map the match back by character count.
    let at_chars = lower
        .find(word)
        .map(|byte| lower[..byte].chars().count())
        .unwrap_or(0);
    let start = at_chars.saturating_sub(SNIPPET_CHARS / 3);
    let piece: String = text.chars().skip(start).take(SNIPPET_CHARS).collect();
    let piece = piece.replace('\n', " ");
    let prefix = if start > 0 { "…" } else { "" };
    let suffix = if text.chars().count() > start + SNIPPET_CHARS {
        "…"
    } else {
        ""
    };
    format!("{prefix}{piece}{suffix}")
}
