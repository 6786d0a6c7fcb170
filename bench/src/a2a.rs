//! `a2a send --wake --wait` round trip: what messaging another agent costs beyond the
//! model calls.
//!
//! Alice's dispatch makes one bash call, `a2a send bob --wake --wait "ping"`; bob's
//! dispatch answers in one model call; the reply prints in alice's bash; alice answers.
//! The kernel measures every model call and bash command (`timing` of each dispatch
//! record), so the round trip's overhead is alice's bash time minus bob's model time:
//! the script, its `aos call`s, the service, the target's dispatch and the reply. The
//! baseline, in the same run, is a bash call of one `aos call` (a single syscall from
//! the agent's shell).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aos_sdk::protocol::DispatchTiming;
use aos_tests::llm::{Reply, ScriptedLlm, last_user_text, tool_results_since_user};
use serde_json::json;

use crate::Plan;
use crate::context::check_services_built;
use crate::dispatch::{Harness, KernelProcess, dispatch_once};
use crate::report::{Figure, Section, percentile};

async fn timing(kernel: &KernelProcess, dispatch_id: &str) -> Result<DispatchTiming> {
    let record = kernel
        .api
        .ok("dispatch.get", json!({"dispatchId": dispatch_id}))
        .await;
    Ok(serde_json::from_value(record["timing"].clone())?)
}

pub async fn wake_round_trip(plan: &Plan) -> Result<Section> {
    check_services_built()?;
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.rule(|body| {
        let last = last_user_text(body);
        let reply = if last.contains("[a2a wake from alice") {
            Reply::text("pong")
        } else if tool_results_since_user(body) > 0 {
            Reply::text("done")
        } else if last == "python" {
            Reply::bash("python3 -c pass")
        } else if let Some(target) = last.strip_prefix("ping ") {
            Reply::bash(&format!("a2a send {target} --wake --wait \"ping\""))
        } else {
            Reply::bash("aos call agent.list >/dev/null")
        };
        reply.into()
    });
    let kernel = KernelProcess::start_with(&llm, None, Harness::Default, json!({})).await?;
    // Wakes from one agent to another are limited (12 a minute): the rounds spread
    // over several targets.
    const TARGETS: usize = 4;
    let mut ids = Vec::new();
    for name in ["alice", "bob0", "bob1", "bob2", "bob3"] {
        let agent = kernel
            .api
            .ok("agent.create", json!({"displayName": name}))
            .await;
        ids.push(agent["agentId"].as_str().context("agent id")?.to_owned());
    }
    let alice = kernel
        .api
        .ok("session.create", json!({"agentId": ids[0]}))
        .await["sessionId"]
        .as_str()
        .context("session id")?
        .to_owned();
    // aos-a2a must be up before the first send.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !kernel.api.call("aos-a2a.agents", json!({})).await.ok {
        if std::time::Instant::now() > deadline {
            bail!("aos-a2a did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rounds = if plan.rounds <= 1 { 4 } else { 40 };
    let (mut overhead, mut trip, mut target_model, mut baseline, mut whole, mut python) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    dispatch_once(&kernel.api, &alice, "baseline").await?;
    for round in 0..rounds {
        let target = round % TARGETS;
        let (wall, id) = dispatch_once(&kernel.api, &alice, &format!("ping bob{target}")).await?;
        let sender = timing(&kernel, &id).await?;
        let sent = kernel
            .api
            .ok(
                "aos-a2a.inbox",
                json!({"agentId": ids[1 + target], "limit": 1}),
            )
            .await;
        let bobs = sent["items"][0]["dispatchId"]
            .as_str()
            .context("bob's dispatch")?
            .to_owned();
        let target = timing(&kernel, &bobs).await?;
        if target.model_us > sender.tools_us {
            bail!("bob's model time exceeds alice's bash call");
        }
        overhead.push(sender.tools_us - target.model_us);
        trip.push(sender.tools_us);
        target_model.push(target.model_us);
        whole.push(wall.as_micros() as u64 - sender.model_us - target.model_us);
        let (_, base) = dispatch_once(&kernel.api, &alice, "baseline").await?;
        baseline.push(timing(&kernel, &base).await?.tools_us);
        let (_, start) = dispatch_once(&kernel.api, &alice, "python").await?;
        python.push(timing(&kernel, &start).await?.tools_us);
    }
    for samples in [
        &mut overhead,
        &mut trip,
        &mut target_model,
        &mut baseline,
        &mut whole,
        &mut python,
    ] {
        samples.sort_unstable();
    }
    let p50 = percentile(&overhead, 0.5);
    let base = percentile(&baseline, 0.5);
    eprintln!("  wake overhead p50 {p50} µs (one aos call from bash: {base} µs)");
    Ok(Section {
        scenario: "Agent-to-agent wake round trip (aos-a2a)".into(),
        setup: format!(
            "{rounds} rounds against a scripted server that answers at once, the default harness running. \
             Alice's bash runs `a2a send bobN --wake --wait \"ping\"`: the Python script, `aos call aos-a2a.send` \
             (policy, chain depth, notes in both histories, `session.dispatch` of bob's inbox session), bob's \
             dispatch (one model call), the answer collected on `session.dispatch.after`, the reply appended \
             to alice's session and returned to the waiting `aos call aos-a2a.wait`. Overhead = alice's bash \
             time − bob's model time, both measured by the kernel. The rounds go to four target agents \
             in turn, so none passes maxWakesPerMinute."
        ),
        figures: vec![
            Figure::from_samples(
                "wake round trip overhead beyond the model calls, p50",
                "µs",
                &[p50],
                "the figure",
            ),
            Figure::from_samples(
                "alice's bash call (the whole round trip), p50",
                "µs",
                &[percentile(&trip, 0.5)],
                "",
            ),
            Figure::from_samples(
                "wake round trip overhead, p99",
                "µs",
                &[percentile(&overhead, 0.99)],
                "",
            ),
            Figure::from_samples(
                "one `aos call` from bash, p50 (baseline)",
                "µs",
                &[base],
                "a bash call running one syscall through the CLI",
            ),
            Figure::from_samples(
                "overhead / baseline",
                "ratio",
                &[p50 / base.max(1.0)],
                "the round trip makes 4+ CLI calls and a whole dispatch",
            ),
            Figure::from_samples(
                "`python3 -c pass` from bash, p50",
                "µs",
                &[percentile(&python, 0.5)],
                "the interpreter starting: the `a2a` script pays it once per call",
            ),
            Figure::from_samples(
                "bob's model call, p50",
                "µs",
                &[percentile(&target_model, 0.5)],
                "the scripted server, answering at once",
            ),
            Figure::from_samples(
                "alice's whole dispatch minus all three model calls, p50",
                "µs",
                &[percentile(&whole, 0.5)],
                "both dispatches' kernel work, the round trip and alice's two turns",
            ),
        ],
    })
}
