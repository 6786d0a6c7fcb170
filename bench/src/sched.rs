//! What the scheduling policy costs per model call: the same closed loop of one-turn
//! dispatches with `aos-sched` running (it answers `compute.before` before every model
//! call, and takes `compute.after` and `session.dispatch.after` events) and with it
//! stopped (nobody listens, the kernel skips the hook), alternating in every round.
//!
//! A one-turn dispatch makes exactly one model call, so the difference of the two
//! medians is the overhead per model call. `aos-sched.status` reports the service's
//! own decision time (`decisionUs`); the `compute.before` round trip alone (kernel hook
//! engine → aos-sched's socket → verdict) is measured apart, on an in-process kernel
//! calling its hook engine directly, as `hook-rtt` does.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_kernel::hooks::{Admission, HookScope};
use aos_sdk::protocol::DispatchTiming;
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Api, Setup, TestKernel};
use serde_json::{Value, json};

use crate::Plan;
use crate::dispatch::{Harness, KernelProcess, dispatch_once, sessions};
use crate::report::{Figure, Section, percentile};

const SKILL: &str = "aos-sched";

/// True when aos-sched's `compute.before` handler is registered.
async fn listening(api: &Api) -> Result<bool> {
    let listed = api.client.call("hook.list", json!({})).await?;
    Ok(listed
        .data
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|h| h["hook"] == "compute.before" && h["skill"] == SKILL))
}

async fn wait_listening(api: &Api, wanted: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening(api).await? != wanted {
        if Instant::now() > deadline {
            bail!("aos-sched's compute.before did not become listened = {wanted} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts aos-sched (system-owned) and waits for its hook; returns its service id.
async fn start(api: &Api) -> Result<String> {
    let envelope = api
        .client
        .call("skill.start", json!({"name": SKILL}))
        .await?;
    let id = match envelope.data {
        Some(data) if envelope.ok => data["serviceId"].as_str().context("service id")?.to_owned(),
        _ => bail!("starting {SKILL} failed: {:?}", envelope.error),
    };
    wait_listening(api, true).await?;
    Ok(id)
}

async fn stop(api: &Api, service_id: &str) -> Result<()> {
    let envelope = api
        .client
        .call("skill.stop", json!({"serviceId": service_id}))
        .await?;
    if !envelope.ok {
        bail!("stopping {SKILL} failed: {:?}", envelope.error);
    }
    wait_listening(api, false).await
}

/// One condition of a round: `n` one-turn dispatches, each on a fresh session (made
/// beforehand, untimed), one after the other. Returns the wall times and the model
/// times the kernel measured, in microseconds, sorted.
async fn closed_loop(kernel: &KernelProcess, n: usize) -> Result<(Vec<u64>, Vec<u64>)> {
    let ids = sessions(&kernel.api, n + 1).await?;
    // The first call after a (re)start opens connections: not measured.
    dispatch_once(&kernel.api, &ids[n], "warm up").await?;
    let (mut wall, mut model) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, session) in ids[..n].iter().enumerate() {
        let (took, id) = dispatch_once(&kernel.api, session, &format!("task {i}")).await?;
        let record = kernel
            .api
            .ok("dispatch.get", json!({"dispatchId": id}))
            .await;
        if record["turns"].as_u64() != Some(1) {
            bail!("a dispatch ran {} turns, not 1", record["turns"]);
        }
        let timing: DispatchTiming = serde_json::from_value(record["timing"].clone())?;
        wall.push(took.as_micros() as u64);
        model.push(timing.model_us);
    }
    wall.sort_unstable();
    model.sort_unstable();
    Ok((wall, model))
}

/// Scheduler overhead per model call, and the `compute.before` round trip alone.
pub async fn overhead(plan: &Plan) -> Result<Section> {
    crate::context::check_services_built()?;
    let n = if plan.rounds <= 1 { 10 } else { 200 };
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.rule(|_| Reply::text("done").into());
    // Only the `aos` manual by default: aos-sched is started and stopped by the bench.
    let kernel = KernelProcess::start_with(&llm, None, Harness::Bare, json!({})).await?;
    if listening(&kernel.api).await? {
        bail!("aos-sched runs before the bench started it");
    }
    let (mut on_p50, mut off_p50, mut diff, mut ratio) = (vec![], vec![], vec![], vec![]);
    let (mut on_p99, mut off_p99, mut on_model, mut off_model) = (vec![], vec![], vec![], vec![]);
    let (mut decision_p50, mut decision_p99) = (vec![], vec![]);
    for round in 0..=plan.rounds {
        // Alternate which condition goes first, so drift during a round favours neither.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut on, mut off) = (None, None);
        for with_sched in order {
            if with_sched {
                let service = start(&kernel.api).await?;
                let samples = closed_loop(&kernel, n).await?;
                let status = kernel.api.ok("aos-sched.status", json!({})).await;
                let decisions = &status["decisionUs"];
                if decisions["count"].as_u64().unwrap_or(0) < n.min(1024) as u64 {
                    bail!("aos-sched decided {} calls, not {n}", decisions["count"]);
                }
                stop(&kernel.api, &service).await?;
                on = Some((samples, decisions.clone()));
            } else {
                off = Some(closed_loop(&kernel, n).await?);
            }
        }
        let (((on_wall, on_mod), decisions), (off_wall, off_mod)) =
            (on.context("with")?, off.context("without")?);
        let (with, without) = (percentile(&on_wall, 0.5), percentile(&off_wall, 0.5));
        let decided = |q: &str| decisions[q].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "  round {round}: dispatch p50 {with:.0} µs with aos-sched, {without:.0} µs without; decision p50 {} µs",
            decided("p50")
        );
        if round == 0 {
            continue;
        }
        on_p50.push(with);
        off_p50.push(without);
        diff.push(with - without);
        ratio.push(with / without.max(1.0));
        on_p99.push(percentile(&on_wall, 0.99));
        off_p99.push(percentile(&off_wall, 0.99));
        on_model.push(percentile(&on_mod, 0.5));
        off_model.push(percentile(&off_mod, 0.5));
        decision_p50.push(decided("p50"));
        decision_p99.push(decided("p99"));
    }
    drop(kernel);
    let (hook_p50, hook_p99, hook_calls) = hook_round_trip(plan).await?;
    let figures = vec![
        Figure::from_samples(
            "overhead per model call (dispatch p50 with − without aos-sched)",
            "µs",
            &diff,
            "the figure",
        ),
        Figure::from_samples("dispatch p50 with ÷ without aos-sched", "ratio", &ratio, ""),
        Figure::from_samples(
            "one-turn dispatch p50, with aos-sched",
            "µs",
            &on_p50,
            "session.dispatch sent → done received",
        ),
        Figure::from_samples(
            "one-turn dispatch p50, without aos-sched",
            "µs",
            &off_p50,
            "baseline: the same loop, nobody on compute.before",
        ),
        Figure::from_samples("one-turn dispatch p99, with aos-sched", "µs", &on_p99, ""),
        Figure::from_samples(
            "one-turn dispatch p99, without aos-sched",
            "µs",
            &off_p99,
            "",
        ),
        Figure::from_samples(
            "aos-sched decision time p50 (`decisionUs`)",
            "µs",
            &decision_p50,
            "inside the service's handler, whole µs",
        ),
        Figure::from_samples(
            "aos-sched decision time p99 (`decisionUs`)",
            "µs",
            &decision_p99,
            "",
        ),
        Figure::from_samples(
            "compute.before round trip alone, p50",
            "µs",
            &hook_p50,
            "kernel hook engine → aos-sched → verdict, in-process kernel",
        ),
        Figure::from_samples("compute.before round trip alone, p99", "µs", &hook_p99, ""),
        Figure::from_samples(
            "model call p50, with aos-sched",
            "µs",
            &on_model,
            "scripted server, streamed (the record's `timing.modelUs`)",
        ),
        Figure::from_samples("model call p50, without aos-sched", "µs", &off_model, ""),
    ];
    Ok(Section {
        scenario: "Scheduler overhead per model call (aos-sched)".into(),
        setup: format!(
            "A closed loop of {n} one-turn dispatches (one model call each, every one on a fresh session made \
             beforehand), one after the other, against the scripted server answering at once; bare kernel (only the \
             `aos` manual). Each round runs the loop twice, in alternating order: with aos-sched running (started by \
             `skill.start`, default config: fair-share, no budgets, no rate limits), and stopped (`skill.stop`; nobody \
             listens on compute.before, so the kernel skips the hook). One untimed dispatch opens each loop. With \
             aos-sched the cost per call is the compute.before round trip plus the service's handling of the \
             `compute.after` and `session.dispatch.after` events (usage kept in SQLite) on the same two cores. \
             Figures are per-round medians of the loop, min / median / max over rounds. `decisionUs` comes from \
             `aos-sched.status` after each loop (the service restarts every round). The round trip alone: an \
             in-process kernel running only aos-sched, its hook engine asked `compute.before` in a sequential loop \
             for {:.1} s per round ({hook_calls} calls in all).",
            plan.window.as_secs_f64()
        ),
        figures,
    })
}

/// `compute.before` asked of aos-sched through the kernel's hook engine, one call at a
/// time: per round p50 and p99 in microseconds, and the number of calls.
async fn hook_round_trip(plan: &Plan) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let kernel = tokio::task::spawn_blocking(|| -> Result<TestKernel> {
        let mut setup = Setup::new();
        let system = setup.dir.path().join("aoscb-sched.json");
        std::fs::write(
            &system,
            json!({"defaultSkills": [
                {"name": "aos", "load": "enable", "pinned": true},
                {"name": SKILL, "start": "enable"},
            ]})
            .to_string(),
        )?;
        setup.config.system_file = Some(system);
        // The release services next to the bench, whatever else is built.
        let exe = std::env::current_exe()?;
        setup.config.service_bin_dirs = vec![exe.parent().context("bench dir")?.to_owned()];
        Ok(TestKernel::start_with(setup))
    })
    .await??;
    wait_listening(&kernel.admin, true).await?;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let input = json!({
        "agentId": agent,
        "sessionId": session,
        "dispatchId": "dsp_bench",
        "lastSeq": 3,
        "model": "scripted/bench",
        "provider": "scripted",
        "requestType": "turn",
        "priority": 0,
        "deadline": null,
        "turn": 1,
        "heldMs": 0,
    });
    let engine = kernel.kernel.clone();
    let (mut p50, mut p99, mut calls) = (vec![], vec![], 0);
    for round in 0..=plan.rounds {
        let deadline = Instant::now() + plan.window;
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let started = Instant::now();
            let verdict = engine
                .hooks
                .admit(
                    Admission::ComputeBefore,
                    HookScope::session(&agent, &session),
                    || (input.clone(), json!({})),
                )
                .await;
            samples.push(started.elapsed().as_micros() as u64);
            match verdict {
                Ok(Some(_)) => {}
                Ok(None) => bail!("nobody answered compute.before"),
                Err(rejection) => bail!("{rejection}"),
            }
        }
        samples.sort_unstable();
        eprintln!(
            "  round {round}: compute.before round trip p50 {:.0} µs ({} calls)",
            percentile(&samples, 0.5),
            samples.len()
        );
        if round == 0 {
            continue;
        }
        calls += samples.len();
        p50.push(percentile(&samples, 0.5));
        p99.push(percentile(&samples, 0.99));
    }
    tokio::task::spawn_blocking(move || drop(kernel)).await?;
    Ok((p50, p99, calls))
}
