//! The context engine's cost and effect: `context.assemble` for sessions of 100, 1 000
//! and 10 000 history messages (incremental and full rebuild), and the tokens sent per
//! turn in a 50-turn session with and without aos-context (auto-fold, compaction).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use aos_sdk::protocol::DispatchTiming;
use aos_tests::llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

use crate::Plan;
use crate::dispatch::{Harness, KernelProcess, dispatch_once, sessions};
use crate::report::{Figure, Section, percentile};

/// Fails early, and says how to fix it, when the harness's services are not built
/// next to the bench binary (a release `cargo run -p aos-bench` builds only the bench).
pub fn check_services_built() -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    for binary in ["aos-context", "aos-guard", "aos-sched", "aos-mcp"] {
        if !dir.join(binary).is_file() {
            bail!(
                "{binary} is not built next to the bench ({}): run `cargo build --release --workspace --bins` first",
                dir.display()
            );
        }
    }
    Ok(())
}

async fn append_text(api: &aos_tests::Api, session: &str, i: usize) -> Result<()> {
    let role = if i.is_multiple_of(2) {
        "user"
    } else {
        "assistant"
    };
    let text = format!(
        "message {i}: {}",
        "the quick brown fox jumps over the lazy dog. ".repeat(4)
    );
    let envelope = api
        .client
        .call(
            "session.append",
            json!({"sessionId": session, "message": {"role": role, "parts": [{"type": "text", "text": text}]}}),
        )
        .await?;
    if !envelope.ok {
        bail!("append failed: {:?}", envelope.error);
    }
    Ok(())
}

pub async fn assemble_sizes(plan: &Plan) -> Result<Section> {
    check_services_built()?;
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    // How many messages the last request carried: proof that nothing compacted.
    let sent = Arc::new(AtomicUsize::new(0));
    let seen = sent.clone();
    llm.rule(move |body| {
        let messages = body["messages"].as_array().map_or(0, Vec::len);
        seen.store(messages, Ordering::SeqCst);
        Reply::text("done").into()
    });
    // A window and a threshold that hold 10 000 messages, so no dispatch here compacts.
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(
        aos_tests::repo_root().join("skills/aos-context/config.json"),
    )?)?;
    config["defaultContextWindow"] = json!(2_000_000);
    let kernel = KernelProcess::start_with_files(
        &llm,
        Harness::Default,
        json!({"compactionThreshold": 1_900_000}),
        &[("aos-context/config.json", serde_json::to_string(&config)?)],
    )
    .await?;
    let api = kernel.api.clone();
    let sizes: &[usize] = if plan.rounds <= 1 {
        &[100]
    } else {
        &[100, 1_000, 10_000]
    };
    let reps = if plan.rounds <= 1 { 3 } else { 20 };
    let mut figures = Vec::new();
    // The HTTP floor: a query that touches no history.
    let ids = sessions(&api, 1).await?;
    let mut floor = Vec::new();
    for _ in 0..reps * 5 {
        let started = Instant::now();
        api.ok("session.get", json!({"sessionId": ids[0]})).await;
        floor.push(started.elapsed().as_micros() as u64);
    }
    floor.sort_unstable();
    for &n in sizes {
        let session = sessions(&api, 1).await?.remove(0);
        for i in 0..n {
            append_text(&api, &session, i).await?;
        }
        let (mut rebuild, mut incremental, mut round_trip) = (vec![], vec![], vec![]);
        let mut last: Value = Value::Null;
        for r in 0..reps {
            let view = api
                .ok("session.context.rebuild", json!({"sessionId": session}))
                .await;
            rebuild.push(view["assembleUs"].as_u64().unwrap_or(0));
            append_text(&api, &session, n + r).await?;
            let started = Instant::now();
            let view = api
                .ok("session.context.get", json!({"sessionId": session}))
                .await;
            round_trip.push(started.elapsed().as_micros() as u64);
            incremental.push(view["assembleUs"].as_u64().unwrap_or(0));
            if view["engine"] != true {
                bail!("aos-context did not answer the assembly");
            }
            last = view;
        }
        // Whole dispatches on the same session: the kernel's own time per turn (wall
        // time minus the model call) and the part of it spent building the context.
        let (mut overhead, mut building) = (vec![], vec![]);
        for r in 0..reps.min(10) {
            let (took, id) = dispatch_once(&api, &session, &format!("task {r}")).await?;
            let record = api.ok("dispatch.get", json!({"dispatchId": id})).await;
            let timing: DispatchTiming = serde_json::from_value(record["timing"].clone())?;
            let wall = took.as_micros() as u64;
            overhead.push(wall.saturating_sub(timing.model_us + timing.tools_us));
            building.push(timing.context_us);
        }
        let carried = sent.load(Ordering::SeqCst);
        if carried < n {
            bail!("the model was sent {carried} messages of a {n}-message session: it compacted");
        }
        for samples in [
            &mut rebuild,
            &mut incremental,
            &mut round_trip,
            &mut overhead,
            &mut building,
        ] {
            samples.sort_unstable();
        }
        let overhead_p50 = percentile(&overhead, 0.5);
        let building_p50 = percentile(&building, 0.5);
        eprintln!(
            "  n = {n}: rebuild p50 {} µs, incremental p50 {} µs",
            percentile(&rebuild, 0.5),
            percentile(&incremental, 0.5)
        );
        figures.extend([
            Figure::from_samples(
                &format!("full rebuild, {n} messages, p50"),
                "µs",
                &[percentile(&rebuild, 0.5)],
                "the figure: aos-context reads all history and projects it",
            ),
            Figure::from_samples(
                &format!("incremental, {n} messages, p50"),
                "µs",
                &[percentile(&incremental, 0.5)],
                "the figure: one new message since the last assembly",
            ),
            Figure::from_samples(
                &format!("incremental, {n} messages, p99"),
                "µs",
                &[percentile(&incremental, 0.99)],
                "",
            ),
            Figure::from_samples(
                &format!("session.context.get over HTTP, {n} messages, p50"),
                "µs",
                &[percentile(&round_trip, 0.5)],
                "the client's view: plus serialising the whole context",
            ),
            Figure::from_samples(
                &format!("kernel overhead per turn, {n} messages, p50"),
                "µs",
                &[overhead_p50],
                "a one-turn dispatch: wall time minus the model call",
            ),
            Figure::from_samples(
                &format!("building the conversation per turn, {n} messages, p50"),
                "µs",
                &[building_p50],
                "context.assemble + prompt transforms, as the kernel measures them",
            ),
            Figure::from_samples(
                &format!("its share of the per-turn overhead, {n} messages"),
                "ratio",
                &[building_p50 / overhead_p50.max(1.0)],
                "the figure",
            ),
            Figure::from_samples(
                &format!("estimated tokens in context, {n} messages"),
                "tokens",
                &[last["estimatedTokens"].as_f64().unwrap_or(f64::NAN)],
                "o200k_base",
            ),
        ]);
    }
    figures.push(Figure::from_samples(
        "session.get over HTTP, p50 (floor)",
        "µs",
        &[percentile(&floor, 0.5)],
        "baseline",
    ));
    Ok(Section {
        scenario: "Context assembly (aos-context)".into(),
        setup: format!(
            "A kernel with the default harness; one session per size, filled with alternating user and assistant \
             text messages of about 190 characters through `session.append`. Full rebuild: `session.context.rebuild` \
             (trigger `rebuild`: the engine drops its cache, reads the whole history with `session.history.list` and \
             projects it). Incremental: one more message appended, then `session.context.get` (the engine reads the \
             one new message and answers the whole context). The times are the kernel's own measurement around the \
             `context.assemble` hook chain (`assembleUs`: the round trip to the aos-context process, its work, and \
             the answer — the whole context — coming back over the socket); {reps} repetitions per size. Then up to 10 \
             one-turn dispatches on the same session (the model answers at once): the kernel's overhead per turn \
             (the client's wall time minus the model call the kernel measured) and the part of it spent building \
             the conversation (`Dispatch.timing.contextUs`). aos-context's window is raised to 2 000 000 tokens and \
             `compactionThreshold` to 1 900 000, so that no dispatch compacts."
        ),
        figures,
    })
}

/// Tokens of a chat request (o200k_base, 4 tokens of framing per message): what the
/// provider is sent.
fn request_tokens(bpe: &tiktoken_rs::CoreBPE, body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let content = m["content"]
                .as_str()
                .map_or(0, |c| bpe.encode_ordinary(c).len());
            let calls: usize = m["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["function"]["arguments"].as_str())
                .map(|a| bpe.encode_ordinary(a).len() + 4)
                .sum();
            (content + calls + 4) as u64
        })
        .sum()
}

pub async fn tokens_per_turn(plan: &Plan) -> Result<Section> {
    check_services_built()?;
    const TURNS: usize = 50;
    let turns = if plan.rounds <= 1 { 10 } else { TURNS };
    let bpe = tiktoken_rs::o200k_base()?;
    let mut figures = Vec::new();
    let mut totals = Vec::new();
    for (label, harness, settings) in [
        (
            "with aos-context",
            Harness::Default,
            json!({"compactionThreshold": 8000}),
        ),
        ("without a context engine", Harness::Bare, json!({})),
    ] {
        let llm = ScriptedLlm::start();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        llm.rule(move |body| {
            if body.get("tools").is_none() {
                return Reply::text("Summary: the agent printed the fox lines in small and large batches; nothing is open.")
                    .into();
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n + 1 >= turns {
                return Reply::text("done").into();
            }
            // Every fifth command prints about 44 000 characters, the others about 1 200.
            let lines = if n % 5 == 4 { 1000 } else { 50 };
            Reply::bash(&format!("yes 'the quick brown fox jumps over the lazy dog' | head -n {lines}")).into()
        });
        let kernel = KernelProcess::start_with(&llm, None, harness, settings).await?;
        let session = sessions(&kernel.api, 1).await?.remove(0);
        dispatch_once(&kernel.api, &session, "print the fox lines").await?;
        let per_turn: Vec<u64> = llm
            .requests()
            .iter()
            .filter(|b| b.get("tools").is_some())
            .map(|b| request_tokens(&bpe, b))
            .collect();
        if per_turn.len() != turns {
            bail!("{label}: {} model turns, expected {turns}", per_turn.len());
        }
        let total: u64 = per_turn.iter().sum();
        let summaries = llm
            .requests()
            .iter()
            .filter(|b| b.get("tools").is_none())
            .count();
        eprintln!("  {label}: {total} tokens over {turns} turns, {summaries} compactions");
        let mut sorted = per_turn.clone();
        sorted.sort_unstable();
        figures.extend([
            Figure::from_samples(
                &format!("tokens per turn, mean, {label}"),
                "tokens",
                &[total as f64 / turns as f64],
                "the figure",
            ),
            Figure::from_samples(
                &format!("tokens per turn, max, {label}"),
                "tokens",
                &[*sorted.last().unwrap_or(&0) as f64],
                "",
            ),
            Figure::from_samples(
                &format!("tokens in the last turn, {label}"),
                "tokens",
                &[*per_turn.last().unwrap_or(&0) as f64],
                "",
            ),
            Figure::from_samples(
                &format!("compactions, {label}"),
                "count",
                &[summaries as f64],
                "summary calls (not counted as turns)",
            ),
        ]);
        totals.push(total as f64);
    }
    figures.push(Figure::from_samples(
        "tokens sent over the session, with ÷ without",
        "ratio",
        &[totals[0] / totals[1].max(1.0)],
        "the figure",
    ));
    Ok(Section {
        scenario: "Tokens sent per turn".into(),
        setup: format!(
            "One dispatch of {turns} turns: each turn runs one bash command, every fifth printing about 44 000 \
             characters (1 000 lines), the others about 1 200 (50 lines); then an answer. With the default harness \
             (auto-fold over 16 384 characters, `compactionThreshold` 8 000 tokens) and with the bare kernel (no \
             context engine: the neutral projection keeps everything inline). Tokens are counted from the request \
             bodies the scripted server received (o200k_base, content and tool-call arguments, 4 per message); \
             summary calls are not turns."
        ),
        figures,
    })
}
