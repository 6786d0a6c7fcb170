//! `content.*`: immutable blobs for large results, read by line range or regex.

use aos_sdk::protocol::{
    ContentIdParams, ContentInfo, ContentMatch, ContentPutParams, ContentReadParams,
    ContentReadResult, ContentSearchParams, ContentSearchResult, ErrorCode, SessionStatus,
    Timestamp,
};
use serde_json::json;

use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::ids::new_id;
use crate::store::ContentRecord;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "content.put",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Store an immutable blob for a session; returns its id, size and line count.",
            put,
        ),
        op(
            "content.get",
            OpKind::Query,
            Access::Content { field: "contentId" },
            "Read a blob's metadata (size, lines, owner) without its body.",
            get,
        ),
        op(
            "content.read",
            OpKind::Query,
            Access::Content { field: "contentId" },
            "Read lines of a blob: `offset` (0-based) and `limit` lines.",
            read,
        ),
        op(
            "content.search",
            OpKind::Query,
            Access::Content { field: "contentId" },
            "Find lines of a blob matching a regular expression; line numbers are 1-based.",
            search,
        ),
    ]
}

/// Lines of `text`: a final newline does not start another line; empty text has none.
pub fn line_count(text: &str) -> u64 {
    let newlines = text.bytes().filter(|b| *b == b'\n').count() as u64;
    if text.is_empty() || text.ends_with('\n') {
        newlines
    } else {
        newlines + 1
    }
}

async fn put(ctx: Ctx, params: ContentPutParams) -> Result<Out<ContentInfo>, SyscallError> {
    let session = ctx.kernel.get_session(&params.session_id).await?;
    if session.status == SessionStatus::Archived {
        return Err(SyscallError::new(
            ErrorCode::SessionArchived,
            format!(
                "session `{}` is archived: it can be read but not changed",
                session.session_id
            ),
        ));
    }
    if params.content.contains('\0') {
        return Err(SyscallError::invalid(
            "content",
            "must not contain NUL characters",
        ));
    }
    let info = ContentInfo {
        content_id: new_id("cnt_"),
        session_id: session.session_id.clone(),
        agent_id: session.agent_id.clone(),
        size_chars: params.content.chars().count() as u64,
        line_count: line_count(&params.content),
        created_by: ctx.caller.identity(),
        created_at: Timestamp::now(),
    };
    ctx.kernel
        .store
        .put_content(&ContentRecord {
            info: info.clone(),
            body: params.content,
        })
        .await?;
    Ok(Out::new(info.clone())
        .session(&info.agent_id, &info.session_id)
        .targets(json!({"contentId": info.content_id, "sizeChars": info.size_chars})))
}

async fn get(ctx: Ctx, params: ContentIdParams) -> Result<Out<ContentInfo>, SyscallError> {
    ctx.kernel
        .store
        .get_content_info(&params.content_id)
        .await?
        .map(Out::new)
        .ok_or_else(|| SyscallError::not_found("content", &params.content_id))
}

async fn read(ctx: Ctx, params: ContentReadParams) -> Result<Out<ContentReadResult>, SyscallError> {
    let record = ctx
        .kernel
        .store
        .get_content(&params.content_id)
        .await?
        .ok_or_else(|| SyscallError::not_found("content", &params.content_id))?;
    let offset = params.offset.unwrap_or(0);
    let total_lines = record.info.line_count;
    let wanted = params.limit.unwrap_or(u64::MAX);
    let content: String = record
        .body
        .split_inclusive('\n')
        .skip(offset.min(usize::MAX as u64) as usize)
        .take(wanted.min(usize::MAX as u64) as usize)
        .collect();
    let lines = line_count(&content);
    Ok(Out::new(ContentReadResult {
        content_id: record.info.content_id,
        content,
        offset,
        lines,
        total_lines,
        total_chars: record.info.size_chars,
    }))
}

/// Longest line text returned by a search hit.
const MATCH_LINE_CHARS: usize = 1000;

async fn search(
    ctx: Ctx,
    params: ContentSearchParams,
) -> Result<Out<ContentSearchResult>, SyscallError> {
    validate::text("pattern", &params.pattern, 1, 1000)?;
    let limit = validate::page_limit(params.limit, 100)?;
    let regex = regex::RegexBuilder::new(&params.pattern)
        .case_insensitive(params.ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            SyscallError::invalid("pattern", format!("is not a valid regular expression: {e}"))
        })?;
    let record = ctx
        .kernel
        .store
        .get_content(&params.content_id)
        .await?
        .ok_or_else(|| SyscallError::not_found("content", &params.content_id))?;
    let mut matches = Vec::new();
    let mut truncated = false;
    for (index, line) in record.body.lines().enumerate() {
        if regex.is_match(line) {
            if matches.len() == limit as usize {
                truncated = true;
                break;
            }
            matches.push(ContentMatch {
                line_number: index as u64 + 1,
                text: line.chars().take(MATCH_LINE_CHARS).collect(),
            });
        }
    }
    Ok(Out::new(ContentSearchResult {
        content_id: record.info.content_id,
        matches,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::line_count;

    #[test]
    fn line_count_follows_the_documented_rule() {
        assert_eq!(line_count(""), 0);
        assert_eq!(line_count("a"), 1);
        assert_eq!(line_count("a\n"), 1);
        assert_eq!(line_count("a\nb"), 2);
        assert_eq!(line_count("a\nb\n"), 2);
        assert_eq!(line_count("\n\n"), 2);
    }
}
