//! `aos run` (one task, blocking, the final answer on stdout) and `aos chat`
//! (interactive): dispatches streamed as they happen. Ctrl-C interrupts the running
//! dispatch (a second one, at the prompt, leaves).

use std::io::Write;
use std::process::ExitCode;

use aos_sdk::protocol::{DispatchStatus, SessionCb, StreamDone, StreamEvent};
use aos_sdk::{Client, ClientError};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::{Global, exit_for, output};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An agent id (a new session is created for the task) or a session id.
    target: String,
    /// The task, as the user message.
    task: String,
    /// Wait behind a dispatch already running on the session instead of failing.
    #[arg(long)]
    queue: bool,
    /// Print nothing but the answer (no progress on stderr).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// An agent id (a new session is created) or a session id (default $AOS_SESSION_ID).
    #[arg(env = "AOS_SESSION_ID")]
    target: String,
}

/// The session to dispatch to: the given one, or a new one of the given agent.
async fn session_for(client: &Client, target: &str, title: &str) -> Result<String, ExitCode> {
    if target.starts_with("ses_") {
        return Ok(target.to_owned());
    }
    if !target.starts_with("agt_") {
        eprintln!("aos: `{target}` is neither an agent id (agt_…) nor a session id (ses_…)");
        return Err(ExitCode::from(2));
    }
    let title: String = title.chars().take(80).collect();
    match client
        .call_ok::<SessionCb>("session.create", json!({"agentId": target, "title": title}))
        .await
    {
        Ok(session) => Ok(session.session_id),
        Err(error) => {
            eprintln!("aos: {error}");
            Err(exit_for(&error))
        }
    }
}

/// How a dispatch's stream is shown.
#[derive(Clone, Copy)]
enum Show {
    /// Progress to stderr, the answer to stdout at the end (`aos run`).
    Run { quiet: bool },
    /// Everything to stdout as it comes (`aos chat`).
    Chat,
}

/// Follows a dispatch to its end, interrupting it on Ctrl-C. Returns its `done`.
async fn follow(
    client: &Client,
    session_id: &str,
    dispatch_id: &str,
    show: Show,
) -> Result<StreamDone, ClientError> {
    let mut events = Box::pin(client.dispatch_events(dispatch_id).await?);
    let mut interrupted = false;
    let mut streamed_text = false;
    let err = |text: &str| {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    };
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                err("\n[interrupting…]\n");
                let _ = client
                    .call("session.interrupt", json!({"sessionId": session_id, "reason": "interrupted from the CLI (Ctrl-C)"}))
                    .await;
                continue;
            }
        };
        let Some(event) = event else {
            return Err(ClientError::Decode {
                url: client.base_url().to_owned(),
                message: "the dispatch stream ended before `done`".into(),
            });
        };
        match (event?, show) {
            (StreamEvent::Done(done), _) => return Ok(done),
            (StreamEvent::Delta { text }, Show::Chat) => {
                streamed_text = true;
                say_raw!("{text}");
                let _ = std::io::stdout().flush();
            }
            (StreamEvent::Delta { text }, Show::Run { quiet: false }) => err(&text),
            (StreamEvent::ToolCall(call), Show::Chat) => {
                if streamed_text {
                    say!("");
                    streamed_text = false;
                }
                say!("$ {}", call.command);
            }
            (StreamEvent::ToolCall(call), Show::Run { quiet: false }) => {
                err(&format!("\n$ {}\n", call.command));
            }
            (StreamEvent::ToolResult(result), Show::Chat) => {
                say!(
                    "{}",
                    output::indent_preview(&result.preview, result.error_text.as_deref())
                );
            }
            (StreamEvent::ToolResult(result), Show::Run { quiet: false }) => {
                err(&format!(
                    "{}\n",
                    output::indent_preview(&result.preview, result.error_text.as_deref())
                ));
            }
            (StreamEvent::Message(message), Show::Chat)
                if message.role == aos_sdk::protocol::Role::Assistant && !streamed_text =>
            {
                say!("{}", message.text);
            }
            (StreamEvent::Error { code, message }, _) => err(&format!("\n[{code}] {message}\n")),
            _ => {}
        }
    }
}

/// `aos run`: one task; the answer on stdout; exit code 0 only when it is done.
pub async fn run(client: &Client, global: &Global, args: RunArgs) -> ExitCode {
    let session_id = match session_for(client, &args.target, &args.task).await {
        Ok(id) => id,
        Err(code) => return code,
    };
    let started = match client.dispatch(&session_id, &args.task, args.queue).await {
        Ok(started) => started,
        Err(error) => {
            eprintln!("aos: {error}");
            return exit_for(&error);
        }
    };
    let done = match follow(
        client,
        &session_id,
        &started.dispatch_id,
        Show::Run {
            quiet: args.quiet || global.json,
        },
    )
    .await
    {
        Ok(done) => done,
        Err(error) => {
            eprintln!("aos: {error}");
            return exit_for(&error);
        }
    };
    if global.json {
        match client
            .call("dispatch.get", json!({"dispatchId": started.dispatch_id}))
            .await
        {
            Ok(envelope) => output::print_json(&envelope, super::stdout_is_terminal()),
            Err(error) => eprintln!("aos: {error}"),
        }
    } else if let Some(answer) = &done.answer {
        if !args.quiet {
            eprintln!();
        }
        say!("{answer}");
    }
    finish_code(&done)
}

fn finish_code(done: &StreamDone) -> ExitCode {
    match done.status {
        DispatchStatus::Done => ExitCode::SUCCESS,
        status => {
            let why = done
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default();
            eprintln!("aos: the dispatch ended {} {why}", status.as_str());
            ExitCode::from(1)
        }
    }
}

/// `aos chat`: read a line, dispatch it, stream the answer; `/exit` or end of input
/// leaves.
pub async fn chat(client: &Client, args: ChatArgs) -> ExitCode {
    let session_id = match session_for(client, &args.target, "chat").await {
        Ok(id) => id,
        Err(code) => return code,
    };
    eprintln!(
        "session {session_id} — type a message; /exit or Ctrl-D leaves, Ctrl-C interrupts a running answer"
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("> ");
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = tokio::signal::ctrl_c() => {
                eprintln!();
                return ExitCode::SUCCESS;
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => {
                eprintln!();
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                eprintln!("aos: reading input: {error}");
                return ExitCode::from(2);
            }
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" || text == "/quit" {
            return ExitCode::SUCCESS;
        }
        let started = match client.dispatch(&session_id, text, true).await {
            Ok(started) => started,
            Err(error) => {
                eprintln!("aos: {error}");
                continue;
            }
        };
        match follow(client, &session_id, &started.dispatch_id, Show::Chat).await {
            Ok(done) => {
                say!("");
                if done.status != DispatchStatus::Done {
                    let _ = finish_code(&done);
                }
            }
            Err(error) => eprintln!("aos: {error}"),
        }
    }
}
