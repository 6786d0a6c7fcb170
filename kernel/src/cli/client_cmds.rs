//! Client subcommands: thin wrappers over syscalls with readable output.

use std::io::Read;
use std::process::ExitCode;

use aos_sdk::client::EventFilter;
use aos_sdk::protocol::{
    AgentCb, Appended, CatalogItem, ContentInfo, ContentReadResult, ContentSearchResult, Envelope,
    Health, HistorySearchResult, IssuedToken, LogEntry, Message, Page, ServiceInfo, SessionCb,
    SkillDetail, SkillLoaded, SkillManifest, SystemCb, TokenInfo,
};
use aos_sdk::{Client, ClientError};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::output;
use super::{Global, exit_for, stdout_is_terminal};

pub(super) enum ClientCommand {
    Status,
    Call { op: String, payload: Option<String> },
    Agent(AgentCmd),
    Session(SessionCmd),
    Skill(SkillCmd),
    Service(ServiceCmd),
    Content(ContentCmd),
    Token(TokenCmd),
    Events(EventsArgs),
    Log(LogArgs),
    Run(super::dispatch_cmds::RunArgs),
    Chat(super::dispatch_cmds::ChatArgs),
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Create an agent; prints its id.
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `provider/model`.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Default skill to load in every session of this agent (repeatable).
        #[arg(long = "skill")]
        skills: Vec<String>,
    },
    /// List agents.
    List {
        /// Include archived agents.
        #[arg(long)]
        all: bool,
    },
    /// Show an agent.
    Get { agent: String },
    /// Change an agent's settings.
    Update {
        agent: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// Archive an agent and its sessions.
    Archive { agent: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Create (and bootstrap) a session; prints its id.
    Create {
        /// Agent id (default: $AOS_AGENT_ID).
        #[arg(env = "AOS_AGENT_ID")]
        agent: String,
        #[arg(long)]
        title: Option<String>,
    },
    /// List sessions.
    List {
        #[arg(long)]
        agent: Option<String>,
    },
    /// Show a session.
    Get {
        #[arg(env = "AOS_SESSION_ID")]
        session: String,
    },
    /// Print a session's history.
    History {
        #[arg(env = "AOS_SESSION_ID")]
        session: String,
        /// First seq.
        #[arg(long)]
        from: Option<u64>,
        /// Last seq.
        #[arg(long)]
        to: Option<u64>,
        /// Only the newest N messages.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Search a session's history.
    Search {
        #[arg(long, env = "AOS_SESSION_ID")]
        session: String,
        /// Words that must all appear.
        query: Vec<String>,
    },
    /// Append a text message to a session's history.
    Append {
        session: String,
        text: String,
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Record an interrupt.
    Interrupt {
        session: String,
        #[arg(default_value = "interrupted from the CLI")]
        reason: String,
    },
    /// Archive a session.
    Archive { session: String },
}

#[derive(Debug, Subcommand)]
pub enum SkillCmd {
    /// List indexed skills, broken ones with their error.
    List,
    /// Show one skill's manifest and text.
    Show { name: String },
    /// Search the catalog by words.
    Search { words: Vec<String> },
    /// Load a skill into a session.
    Load {
        name: String,
        #[arg(long, env = "AOS_SESSION_ID")]
        session: String,
    },
    /// Rescan the skill root.
    Refresh,
    /// Start a skill's service (system-owned unless --agent or --session is given).
    Start {
        name: String,
        /// Run it for this agent.
        #[arg(long, conflicts_with = "session")]
        agent: Option<String>,
        /// Run it for this session.
        #[arg(long)]
        session: Option<String>,
    },
    /// Stop a service by id (`aos service list` shows them).
    Stop { service: String },
    /// Check a skill directory strictly against the Agent Skills standard (no daemon
    /// needed): exit code 1 on any error or warning.
    Lint {
        /// The skill directory (holding SKILL.md).
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// List services with their state.
    List {
        #[arg(long)]
        skill: Option<String>,
        /// starting, running, restarting, stopping, stopped or failed.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one service: state, pid, restarts, last error, registrations.
    Get { service: String },
}

#[derive(Debug, Subcommand)]
pub enum ContentCmd {
    /// Store a file (or stdin with `-`) for a session; prints the content id.
    Put {
        #[arg(long, env = "AOS_SESSION_ID")]
        session: String,
        file: String,
    },
    /// Print lines of a blob.
    Read {
        content: String,
        #[arg(long)]
        offset: Option<u64>,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print lines of a blob matching a regular expression.
    Search {
        content: String,
        pattern: String,
        #[arg(long, short)]
        ignore_case: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Issue a token; prints the secret (shown only once).
    Issue {
        /// A token for one session.
        #[arg(long, group = "scope")]
        session: Option<String>,
        /// A token for one agent and its sessions.
        #[arg(long, group = "scope")]
        agent: Option<String>,
        /// A token for a remote service of this skill (system-owned unless --owner-*).
        #[arg(long, group = "scope")]
        service: Option<String>,
        /// Owner agent of the service.
        #[arg(long, requires = "service", conflicts_with = "owner_session")]
        owner_agent: Option<String>,
        /// Owner session of the service.
        #[arg(long, requires = "service")]
        owner_session: Option<String>,
        /// An admin token.
        #[arg(long, group = "scope")]
        admin: bool,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        label: Option<String>,
    },
    /// List tokens.
    List,
    /// Revoke a token.
    Revoke { token: String },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    session: Option<String>,
    /// Event name or `prefix.*` (repeatable).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Resume after this event id.
    #[arg(long)]
    since: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[arg(long)]
    op: Option<String>,
    #[arg(long)]
    session: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Calls `op`; prints the envelope with `--json`, otherwise hands the decoded data to
/// `show`. Failures go to stderr with exit code 1 (3 if unreachable).
async fn run_op<R: DeserializeOwned>(
    client: &Client,
    global: &Global,
    op: &str,
    params: Value,
    show: impl FnOnce(R),
) -> ExitCode {
    let envelope = match client.call(op, params).await {
        Ok(envelope) => envelope,
        Err(error) => {
            eprintln!("aos: {error}");
            return exit_for(&error);
        }
    };
    if global.json {
        output::print_json(&envelope, stdout_is_terminal());
        return if envelope.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match envelope.into_result() {
        Ok(data) => match serde_json::from_value::<R>(data) {
            Ok(data) => {
                show(data);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("aos: unexpected reply to `{op}`: {error}");
                ExitCode::from(1)
            }
        },
        Err(error) => {
            eprintln!("aos: {}: {}", error.code, error.message);
            ExitCode::from(1)
        }
    }
}

fn params(pairs: &[(&str, Option<Value>)]) -> Value {
    let mut map = Map::new();
    for (key, value) in pairs {
        if let Some(value) = value {
            map.insert((*key).to_owned(), value.clone());
        }
    }
    Value::Object(map)
}

fn read_payload(payload: Option<String>) -> Result<Value, String> {
    let Some(text) = payload else {
        return Ok(Value::Object(Map::new()));
    };
    let text = if text == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
        buf
    } else if let Some(path) = text.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the payload file {path}: {e}"))?
    } else {
        text
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(other) => Err(format!(
            "--payload must be a JSON object of params, got {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
        Err(e) => Err(format!("--payload is not valid JSON: {e}")),
    }
}

pub(super) async fn run(client: &Client, global: &Global, command: ClientCommand) -> ExitCode {
    match command {
        ClientCommand::Status => status(client, global).await,
        ClientCommand::Call { op, payload } => {
            let params = match read_payload(payload) {
                Ok(params) => params,
                Err(message) => {
                    let envelope = Envelope::<Value>::failure(
                        op.as_str(),
                        aos_sdk::ErrorBody::new(aos_sdk::ErrorCode::InvalidParams, message),
                    );
                    output::print_json(&envelope, stdout_is_terminal());
                    return ExitCode::from(2);
                }
            };
            match client.call(&op, params).await {
                Ok(envelope) => {
                    output::print_json(&envelope, stdout_is_terminal());
                    if envelope.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(error) => {
                    // Keep stdout machine-readable even when the kernel is down.
                    let envelope = Envelope::<Value>::failure(
                        op.as_str(),
                        aos_sdk::ErrorBody::new(aos_sdk::ErrorCode::Unavailable, error.to_string())
                            .with_details(json!({"transport": true})),
                    );
                    output::print_json(&envelope, stdout_is_terminal());
                    exit_for(&error)
                }
            }
        }
        ClientCommand::Agent(cmd) => agent(client, global, cmd).await,
        ClientCommand::Session(cmd) => session(client, global, cmd).await,
        ClientCommand::Skill(cmd) => skill(client, global, cmd).await,
        ClientCommand::Service(cmd) => service(client, global, cmd).await,
        ClientCommand::Run(args) => super::dispatch_cmds::run(client, global, args).await,
        ClientCommand::Chat(args) => super::dispatch_cmds::chat(client, args).await,
        ClientCommand::Content(cmd) => content(client, global, cmd).await,
        ClientCommand::Token(cmd) => token(client, global, cmd).await,
        ClientCommand::Events(args) => events(client, args).await,
        ClientCommand::Log(args) => {
            let p = params(&[
                ("operation", args.op.map(Value::String)),
                ("sessionId", args.session.map(Value::String)),
                ("agentId", args.agent.map(Value::String)),
                ("limit", Some(json!(args.limit))),
            ]);
            run_op(client, global, "log.list", p, |entries: Vec<LogEntry>| {
                output::log(&entries)
            })
            .await
        }
    }
}

async fn status(client: &Client, global: &Global) -> ExitCode {
    let health: Health = match client.health().await {
        Ok(health) => health,
        Err(error) => {
            eprintln!("aos: not running? {error}");
            return exit_for(&error);
        }
    };
    let system: Result<SystemCb, ClientError> = client.call_ok("system.get", json!({})).await;
    let skills: Result<Vec<SkillManifest>, ClientError> =
        client.call_ok("skill.list", json!({})).await;
    let agents: Result<Page<AgentCb>, ClientError> =
        client.call_ok("agent.list", json!({"limit": 1000})).await;
    if global.json {
        let value = json!({
            "health": health,
            "system": system.as_ref().ok(),
            "skills": skills.as_ref().ok().map(Vec::len),
            "agents": agents.as_ref().ok().map(|p| p.items.len()),
        });
        output::print_json(&value, stdout_is_terminal());
        return ExitCode::SUCCESS;
    }
    output::status(
        client.base_url(),
        &health,
        system.ok(),
        skills.ok(),
        agents.ok(),
    );
    ExitCode::SUCCESS
}

async fn agent(client: &Client, global: &Global, cmd: AgentCmd) -> ExitCode {
    match cmd {
        AgentCmd::Create {
            name,
            description,
            model,
            priority,
            skills,
        } => {
            let default_skills = (!skills.is_empty()).then(|| {
                Value::Array(
                    skills
                        .iter()
                        .map(|s| json!({"name": s, "load": "enable"}))
                        .collect(),
                )
            });
            let p = params(&[
                ("displayName", name.map(Value::String)),
                ("description", description.map(Value::String)),
                ("model", model.map(Value::String)),
                ("priority", priority.map(|p| json!(p))),
                ("defaultSkills", default_skills),
            ]);
            run_op(client, global, "agent.create", p, |a: AgentCb| {
                say!("{}", a.agent_id)
            })
            .await
        }
        AgentCmd::List { all } => {
            let p = if all {
                json!({"limit": 1000})
            } else {
                json!({"limit": 1000, "status": "active"})
            };
            run_op(client, global, "agent.list", p, |page: Page<AgentCb>| {
                output::agents(&page.items)
            })
            .await
        }
        AgentCmd::Get { agent } => {
            run_op(
                client,
                global,
                "agent.get",
                json!({"agentId": agent}),
                |a: AgentCb| output::print_json(&a, true),
            )
            .await
        }
        AgentCmd::Update {
            agent,
            name,
            description,
            model,
            priority,
        } => {
            let p = params(&[
                ("agentId", Some(Value::String(agent))),
                ("displayName", name.map(Value::String)),
                ("description", description.map(Value::String)),
                ("model", model.map(Value::String)),
                ("priority", priority.map(|p| json!(p))),
            ]);
            run_op(client, global, "agent.update", p, |a: AgentCb| {
                say!("{} updated (revision {})", a.agent_id, a.revision)
            })
            .await
        }
        AgentCmd::Archive { agent } => {
            run_op(
                client,
                global,
                "agent.archive",
                json!({"agentId": agent}),
                |a: AgentCb| say!("{} archived", a.agent_id),
            )
            .await
        }
    }
}

async fn session(client: &Client, global: &Global, cmd: SessionCmd) -> ExitCode {
    match cmd {
        SessionCmd::Create { agent, title } => {
            let p = params(&[
                ("agentId", Some(Value::String(agent))),
                ("title", title.map(Value::String)),
            ]);
            run_op(client, global, "session.create", p, |s: SessionCb| {
                say!("{}", s.session_id)
            })
            .await
        }
        SessionCmd::List { agent } => {
            let p = params(&[
                ("agentId", agent.map(Value::String)),
                ("limit", Some(json!(1000))),
            ]);
            run_op(
                client,
                global,
                "session.list",
                p,
                |page: Page<SessionCb>| output::sessions(&page.items),
            )
            .await
        }
        SessionCmd::Get { session } => {
            run_op(
                client,
                global,
                "session.get",
                json!({"sessionId": session}),
                |s: SessionCb| output::print_json(&s, true),
            )
            .await
        }
        SessionCmd::History {
            session,
            from,
            to,
            tail,
        } => {
            let p = match tail {
                Some(n) => json!({"sessionId": session, "limit": n, "descending": true}),
                None => params(&[
                    ("sessionId", Some(Value::String(session))),
                    ("fromSeq", from.map(|v| json!(v))),
                    ("toSeq", to.map(|v| json!(v))),
                    ("limit", Some(json!(1000))),
                ]),
            };
            run_op(
                client,
                global,
                "session.history.list",
                p,
                |page: Page<Message>| {
                    let mut items = page.items;
                    items.sort_by_key(|m| m.seq);
                    output::history(&items)
                },
            )
            .await
        }
        SessionCmd::Search { session, query } => {
            let p = json!({"sessionId": session, "query": query.join(" ")});
            run_op(
                client,
                global,
                "session.history.search",
                p,
                |r: HistorySearchResult| output::search_hits(&r),
            )
            .await
        }
        SessionCmd::Append {
            session,
            text,
            role,
        } => {
            let p = json!({"sessionId": session, "message": {"role": role, "parts": [{"type": "text", "text": text}]}});
            run_op(client, global, "session.append", p, |a: Appended| {
                say!("appended {} at seq {}", a.message_id, a.seq)
            })
            .await
        }
        SessionCmd::Interrupt { session, reason } => {
            let p = json!({"sessionId": session, "reason": reason});
            run_op(client, global, "session.interrupt", p, |a: Appended| {
                say!("interrupt recorded at seq {}", a.seq)
            })
            .await
        }
        SessionCmd::Archive { session } => {
            run_op(
                client,
                global,
                "session.archive",
                json!({"sessionId": session}),
                |s: SessionCb| say!("{} archived", s.session_id),
            )
            .await
        }
    }
}

async fn skill(client: &Client, global: &Global, cmd: SkillCmd) -> ExitCode {
    match cmd {
        SkillCmd::List => {
            run_op(
                client,
                global,
                "skill.list",
                json!({}),
                |skills: Vec<SkillManifest>| output::skills(&skills),
            )
            .await
        }
        SkillCmd::Show { name } => {
            run_op(
                client,
                global,
                "skill.get",
                json!({"name": name}),
                |d: SkillDetail| output::skill_detail(&d),
            )
            .await
        }
        SkillCmd::Search { words } => {
            run_op(
                client,
                global,
                "skill.catalog.list",
                json!({"query": words.join(" ")}),
                |items: Vec<CatalogItem>| {
                    for item in items {
                        say!("{}\t{}", item.name, item.description);
                    }
                },
            )
            .await
        }
        SkillCmd::Load { name, session } => {
            run_op(
                client,
                global,
                "skill.load",
                json!({"name": name, "sessionId": session}),
                |l: SkillLoaded| say!("loaded {} into {} at seq {}", l.name, l.session_id, l.seq),
            )
            .await
        }
        SkillCmd::Refresh => {
            run_op(
                client,
                global,
                "skill.index.refresh",
                json!({}),
                |r: Value| {
                    say!(
                        "{} skills indexed, {} broken",
                        r["indexedCount"],
                        r["errorCount"]
                    )
                },
            )
            .await
        }
        SkillCmd::Start {
            name,
            agent,
            session,
        } => {
            let p = match (agent, session) {
                (Some(agent), _) => json!({"name": name, "ownerType": "agent", "ownerId": agent}),
                (_, Some(session)) => {
                    json!({"name": name, "ownerType": "session", "ownerId": session})
                }
                (None, None) => json!({"name": name}),
            };
            run_op(client, global, "skill.start", p, |s: ServiceInfo| {
                output::service(&s)
            })
            .await
        }
        SkillCmd::Stop { service } => {
            run_op(
                client,
                global,
                "skill.stop",
                json!({"serviceId": service}),
                |s: ServiceInfo| say!("{} {}", s.service_id, s.state.as_str()),
            )
            .await
        }
        SkillCmd::Lint { dir } => output::lint(&dir),
    }
}

async fn service(client: &Client, global: &Global, cmd: ServiceCmd) -> ExitCode {
    match cmd {
        ServiceCmd::List { skill, state } => {
            let p = params(&[
                ("skill", skill.map(Value::String)),
                ("state", state.map(Value::String)),
            ]);
            run_op(
                client,
                global,
                "service.list",
                p,
                |list: Vec<ServiceInfo>| output::services(&list),
            )
            .await
        }
        ServiceCmd::Get { service } => {
            run_op(
                client,
                global,
                "service.get",
                json!({"serviceId": service}),
                |s: ServiceInfo| output::service(&s),
            )
            .await
        }
    }
}

async fn content(client: &Client, global: &Global, cmd: ContentCmd) -> ExitCode {
    match cmd {
        ContentCmd::Put { session, file } => {
            let text = if file == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf).map(|_| buf)
            } else {
                std::fs::read_to_string(&file)
            };
            let text = match text {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("aos: cannot read {file}: {error}");
                    return ExitCode::from(2);
                }
            };
            let p = json!({"sessionId": session, "content": text});
            run_op(client, global, "content.put", p, |c: ContentInfo| {
                say!("{}", c.content_id)
            })
            .await
        }
        ContentCmd::Read {
            content,
            offset,
            limit,
        } => {
            let p = params(&[
                ("contentId", Some(Value::String(content))),
                ("offset", offset.map(|v| json!(v))),
                ("limit", limit.map(|v| json!(v))),
            ]);
            run_op(client, global, "content.read", p, |r: ContentReadResult| {
                say_raw!("{}", r.content)
            })
            .await
        }
        ContentCmd::Search {
            content,
            pattern,
            ignore_case,
        } => {
            let p = json!({"contentId": content, "pattern": pattern, "ignoreCase": ignore_case});
            run_op(
                client,
                global,
                "content.search",
                p,
                |r: ContentSearchResult| {
                    for m in r.matches {
                        say!("{}:{}", m.line_number, m.text);
                    }
                },
            )
            .await
        }
    }
}

async fn token(client: &Client, global: &Global, cmd: TokenCmd) -> ExitCode {
    match cmd {
        TokenCmd::Issue {
            session,
            agent,
            service,
            owner_agent,
            owner_session,
            admin,
            ttl,
            label,
        } => {
            let scope = if let Some(session) = session {
                json!({"kind": "session", "sessionId": session})
            } else if let Some(agent) = agent {
                json!({"kind": "agent", "agentId": agent})
            } else if let Some(skill) = service {
                match (owner_agent, owner_session) {
                    (Some(a), _) => {
                        json!({"kind": "service", "skill": skill, "ownerType": "agent", "ownerId": a})
                    }
                    (_, Some(s)) => {
                        json!({"kind": "service", "skill": skill, "ownerType": "session", "ownerId": s})
                    }
                    _ => json!({"kind": "service", "skill": skill, "ownerType": "system"}),
                }
            } else if admin {
                json!({"kind": "admin"})
            } else {
                eprintln!("aos: say which scope: --session, --agent, --service or --admin");
                return ExitCode::from(2);
            };
            let p = params(&[
                ("scope", Some(scope)),
                ("ttlSeconds", ttl.map(|t| json!(t))),
                ("label", label.map(Value::String)),
            ]);
            run_op(client, global, "token.issue", p, |t: IssuedToken| {
                say!("{}", t.token)
            })
            .await
        }
        TokenCmd::List => {
            run_op(
                client,
                global,
                "token.list",
                json!({}),
                |tokens: Vec<TokenInfo>| output::tokens(&tokens),
            )
            .await
        }
        TokenCmd::Revoke { token } => {
            run_op(
                client,
                global,
                "token.revoke",
                json!({"tokenId": token}),
                |_: Value| say!("revoked"),
            )
            .await
        }
    }
}

async fn events(client: &Client, args: EventsArgs) -> ExitCode {
    let filter = EventFilter {
        agent_id: args.agent,
        session_id: args.session,
        names: args.names,
        last_event_id: args.since,
    };
    let mut stream = match client.events(&filter).await {
        Ok(stream) => Box::pin(stream),
        Err(error) => {
            eprintln!("aos: {error}");
            return exit_for(&error);
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                use std::io::Write as _;
                let line = serde_json::to_string(&event).unwrap_or_default();
                if writeln!(std::io::stdout().lock(), "{line}").is_err() {
                    // The reader went away (`aos events | head`): stop quietly.
                    return ExitCode::SUCCESS;
                }
            }
            Err(error) => {
                eprintln!("aos: {error}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
