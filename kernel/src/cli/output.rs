//! Human-readable output for the CLI.

use aos_sdk::protocol::{
    AgentCb, AgentStatus, Health, HistorySearchResult, LogEntry, Message, OpDescription, Page,
    PartBody, ServiceInfo, SessionCb, SkillDetail, SkillManifest, SystemCb, TokenInfo,
};
use serde::Serialize;

use crate::syscall::{Registry, markdown};

/// JSON on stdout: pretty for people, one line for pipes.
pub fn print_json<T: Serialize>(value: &T, pretty: bool) {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    say!("{}", text.unwrap_or_default());
}

/// `docs/syscalls.md`: the kernel's own operations.
pub fn syscalls_markdown() {
    say_raw!("{}", markdown(&Registry::standard()));
}

/// The operation list: `live` from a running daemon (kernel and service operations),
/// else the kernel's own from this binary.
pub fn syscalls(live: Option<Vec<OpDescription>>, as_json: bool) {
    let from_daemon = live.is_some();
    let ops = live.unwrap_or_else(|| Registry::standard().describe());
    if as_json {
        print_json(&ops, true);
        return;
    }
    let rows: Vec<Vec<String>> = ops
        .into_iter()
        .map(|d| vec![d.name, d.kind, d.access, d.status])
        .collect();
    table(&["OP", "KIND", "ACCESS", "STATUS"], &rows);
    if !from_daemon {
        eprintln!(
            "(no daemon reachable: these are the kernel's own operations; services add theirs when it runs)"
        );
    }
}

pub fn services(list: &[ServiceInfo]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.service_id.clone(),
                s.skill.clone(),
                s.owner
                    .owner_id
                    .as_deref()
                    .map(|id| format!("{} {id}", s.owner.owner_type.as_str()))
                    .unwrap_or_else(|| "system".to_owned()),
                s.state.as_str().to_owned(),
                s.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                s.restarts.to_string(),
                clip(
                    s.last_error
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or(""),
                    60,
                ),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "SKILL",
            "OWNER",
            "STATE",
            "PID",
            "RESTARTS",
            "LAST ERROR",
        ],
        &rows,
    );
}

pub fn service(s: &ServiceInfo) {
    say!("service:    {}", s.service_id);
    say!("skill:      {}", s.skill);
    say!(
        "owner:      {}",
        s.owner
            .owner_id
            .as_deref()
            .map(|id| format!("{} {id}", s.owner.owner_type.as_str()))
            .unwrap_or_else(|| "system".to_owned())
    );
    say!("state:      {}", s.state.as_str());
    if let Some(pid) = s.pid {
        say!("pid:        {pid}");
    }
    if let Some(command) = &s.command {
        say!("command:    {command}");
    }
    if let Some(sdk) = &s.sdk {
        say!("sdk:        {sdk}");
    }
    say!("restarts:   {}", s.restarts);
    if !s.registered.hooks.is_empty() {
        say!("hooks:      {}", s.registered.hooks.join(", "));
    }
    if !s.registered.events.is_empty() {
        say!("events:     {}", s.registered.events.join(", "));
    }
    if !s.registered.ops.is_empty() {
        say!("ops:        {}", s.registered.ops.join(", "));
    }
    if let Some(error) = &s.last_error {
        say!("last error: {error}");
    }
}

/// `aos skill lint`: the strict check of one skill directory.
pub fn lint(dir: &std::path::Path) -> std::process::ExitCode {
    let Ok(canonical) = dir.canonicalize() else {
        eprintln!("aos: {} does not exist", dir.display());
        return std::process::ExitCode::from(2);
    };
    let source = match std::fs::read_to_string(canonical.join("SKILL.md")) {
        Ok(source) => source,
        Err(error) => {
            say!("{}: cannot read SKILL.md: {error}", canonical.display());
            return std::process::ExitCode::from(1);
        }
    };
    let parsed = crate::skills::manifest::parse(&canonical, &source);
    let mut problems = 0;
    if let Some(error) = &parsed.manifest.error {
        say!(
            "{}:{}: error: {}",
            error.file,
            error.line.unwrap_or(1),
            error.message
        );
        problems += 1;
    }
    for warning in &parsed.manifest.warnings {
        say!(
            "{}: warning: {warning}",
            canonical.join("SKILL.md").display()
        );
        problems += 1;
    }
    if problems == 0 {
        say!("{}: ok", parsed.manifest.name);
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

pub fn hooks(as_markdown: bool) {
    use crate::hooks::HookRef;
    if as_markdown {
        say_raw!("{}", crate::hooks::markdown());
        return;
    }
    let rows: Vec<Vec<String>> = HookRef::all()
        .map(|h| {
            let spec = h.spec();
            vec![
                spec.name.to_owned(),
                spec.class.as_str().to_owned(),
                spec.owners
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                spec.when.to_owned(),
            ]
        })
        .collect();
    table(&["HOOK", "CLASS", "OWNERS", "WHEN"], &rows);
}

/// Prints rows under headers with aligned columns (the last column is not padded).
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        say!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!(
            "{}…",
            one_line
                .chars()
                .take(max.saturating_sub(1))
                .collect::<String>()
        )
    }
}

pub fn status(
    url: &str,
    health: &Health,
    system: Option<SystemCb>,
    skills: Option<Vec<SkillManifest>>,
    agents: Option<Page<AgentCb>>,
) {
    let up = health.uptime_seconds;
    say!(
        "AOS kernel {} at {url}: up {}h{:02}m{:02}s, node {}",
        health.version,
        up / 3600,
        (up / 60) % 60,
        up % 60,
        health.node_id
    );
    if let Some(system) = system {
        say!(
            "system `{}` (revision {}), skill root {}, default model {}",
            system.name,
            system.revision,
            system.skill_root,
            system.default_model.as_deref().unwrap_or("(none)")
        );
    }
    if let Some(skills) = skills {
        let broken = skills.iter().filter(|s| s.error.is_some()).count();
        say!("skills: {} indexed, {broken} broken", skills.len() - broken);
    }
    if let Some(agents) = agents {
        let active = agents
            .items
            .iter()
            .filter(|a| a.status == AgentStatus::Active)
            .count();
        say!(
            "agents: {active} active, {} archived",
            agents.items.len() - active
        );
    }
}

pub fn agents(agents: &[AgentCb]) {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                clip(&a.display_name, 30),
                enum_text(&a.status),
                a.priority.to_string(),
                a.model.clone().unwrap_or_else(|| "-".into()),
                a.usage.total_tokens.to_string(),
            ]
        })
        .collect();
    table(
        &["AGENT", "NAME", "STATUS", "PRIORITY", "MODEL", "TOKENS"],
        &rows,
    );
}

pub fn sessions(sessions: &[SessionCb]) {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.clone(),
                s.agent_id.clone(),
                enum_text(&s.status),
                enum_text(&s.phase),
                s.last_seq.to_string(),
                clip(s.title.as_deref().unwrap_or("-"), 40),
            ]
        })
        .collect();
    table(
        &["SESSION", "AGENT", "STATUS", "PHASE", "MESSAGES", "TITLE"],
        &rows,
    );
}

fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One line per part: `#seq role/origin  summary`.
pub fn history(messages: &[Message]) {
    for message in messages {
        let who = format!("{}/{}", message.role.as_str(), message.origin);
        for part in &message.parts {
            say!(
                "#{:<4} {:<22} {}",
                message.seq,
                who,
                part_summary(&part.body)
            );
        }
    }
}

fn part_summary(body: &PartBody) -> String {
    match body {
        PartBody::Text { text } => clip(text, 200),
        PartBody::Bash(call) => {
            let result = call
                .output
                .as_ref()
                .map(|o| match (&o.visible_result, &o.content_id) {
                    (_, Some(id)) => format!("[stored as {id}]"),
                    (Some(v), None) => clip(v, 80),
                    (None, None) => String::new(),
                })
                .or_else(|| {
                    call.error_text
                        .as_ref()
                        .map(|e| format!("error: {}", clip(e, 80)))
                })
                .unwrap_or_default();
            format!("$ {}  → {}", clip(&call.command, 80), result)
        }
        PartBody::SkillLoad { name, cause, text } => {
            format!(
                "[skill-load {name} ({}), {} chars]",
                enum_text(cause),
                text.chars().count()
            )
        }
        PartBody::SkillUnload { name } => format!("[skill-unload {name}]"),
        PartBody::CompactionMarker {
            from_seq, to_seq, ..
        } => {
            format!("[compaction boundary: #{from_seq}–#{to_seq}]")
        }
        PartBody::CompactionSummary { text, .. } => format!("[summary] {}", clip(text, 160)),
        PartBody::Interrupt { reason, .. } => format!("[interrupt] {reason}"),
        PartBody::Meta(meta) => format!(
            "[meta {}] {}",
            meta.source,
            clip(&meta.data.to_string(), 160)
        ),
        PartBody::Bootstrap {
            phase,
            planned_names,
            loaded,
            skipped,
        } => {
            let mut text = format!("[bootstrap {}]", enum_text(phase));
            if !planned_names.is_empty() {
                text.push_str(&format!(" planned: {}", planned_names.join(", ")));
            }
            if !loaded.is_empty() {
                text.push_str(&format!(" loaded: {}", loaded.join(", ")));
            }
            for s in skipped {
                text.push_str(&format!(" skipped {} ({})", s.name, s.reason));
            }
            text
        }
        PartBody::Error { source, message } => {
            format!("[error from {source}] {}", clip(message, 160))
        }
    }
}

pub fn search_hits(result: &HistorySearchResult) {
    for hit in &result.hits {
        say!("#{:<4} {}", hit.seq, hit.snippet);
    }
    if result.truncated {
        say!("(more matches; narrow the query)");
    }
}

pub fn skills(skills: &[SkillManifest]) {
    let rows: Vec<Vec<String>> = skills
        .iter()
        .map(|s| {
            let (state, text) = match &s.error {
                Some(e) => (
                    "broken".to_owned(),
                    format!(
                        "{}{}",
                        e.message,
                        e.line.map(|l| format!(" (line {l})")).unwrap_or_default()
                    ),
                ),
                None => (
                    if s.service.is_some() {
                        "service"
                    } else {
                        "text"
                    }
                    .to_owned(),
                    s.description.clone(),
                ),
            };
            vec![s.name.clone(), state, clip(&text, 100)]
        })
        .collect();
    table(&["SKILL", "KIND", "DESCRIPTION"], &rows);
}

pub fn skill_detail(detail: &SkillDetail) {
    let m = &detail.manifest;
    say!("name:        {}", m.name);
    say!("description: {}", m.description);
    say!("directory:   {}", m.dir);
    if let Some(service) = &m.service {
        say!("service:     {service}");
    }
    if let Some(error) = &m.error {
        say!(
            "error:       {}{} ({})",
            error.message,
            error
                .line
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default(),
            error.file
        );
    }
    for warning in &m.warnings {
        say!("warning:     {warning}");
    }
    if !detail.text.is_empty() {
        say!("\n{}", detail.text);
    }
}

pub fn tokens(tokens: &[TokenInfo]) {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = match (t.revoked_at, t.expires_at) {
                (Some(_), _) => "revoked".to_owned(),
                (None, Some(at)) => format!("expires {at}"),
                (None, None) => "active".to_owned(),
            };
            vec![
                t.token_id.clone(),
                serde_json::to_string(&t.scope).unwrap_or_default(),
                state,
                t.label.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["TOKEN", "SCOPE", "STATE", "LABEL"], &rows);
}

pub fn log(entries: &[LogEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.ts.to_string(),
                e.caller.clone(),
                e.op.clone(),
                e.outcome.clone(),
                format!("{}µs", e.duration_us),
                e.session_id
                    .clone()
                    .or_else(|| e.agent_id.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["SEQ", "TIME", "CALLER", "OP", "OUTCOME", "TOOK", "TARGET"],
        &rows,
    );
}

/// A tool result for the terminal: its first lines, indented, and why it failed.
pub fn indent_preview(preview: &str, error: Option<&str>) -> String {
    const LINES: usize = 12;
    let mut out: Vec<String> = preview
        .lines()
        .take(LINES)
        .map(|l| format!("  {}", clip(l, 200)))
        .collect();
    let total = preview.lines().count();
    if total > LINES {
        out.push(format!("  … {} more lines", total - LINES));
    }
    if let Some(error) = error {
        out.push(format!("  [{error}]"));
    }
    out.join("\n")
}
