//! aos-cron end to end on its manual clock: a job fires on time and not before,
//! survives a restart of the service, never stacks a run on a running one, and follows
//! its missed-run policy.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aos_tests::dispatching::{configure, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm, Step, last_user_text};
use aos_tests::{Api, Setup, TestKernel, eventually};
use serde_json::{Value, json};

/// A kernel whose aos-cron runs on the manual clock.
fn kernel() -> TestKernel {
    let setup = Setup::new();
    let config = setup.skills().join("aos-cron/config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["clock"] = json!("manual");
    std::fs::write(&config, settings.to_string()).unwrap();
    TestKernel::start_with(setup)
}

async fn tick(api: &Api, now: &str) -> Vec<Value> {
    api.ok("aos-cron.tick", json!({"now": now})).await["results"]
        .as_array()
        .unwrap()
        .clone()
}

async fn dispatches(api: &Api, session: &str) -> Vec<Value> {
    api.ok("dispatch.list", json!({"sessionId": session})).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn job(api: &Api, id: &str) -> Value {
    api.ok("aos-cron.list", json!({})).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("job {id} is gone"))
}

/// `t` plus `seconds`, as RFC 3339.
fn plus(t: &str, seconds: i64) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(t).unwrap() + chrono::Duration::seconds(seconds);
    t.to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn wait_done(api: &Api, dispatch: &str) {
    eventually(Duration::from_secs(30), "the run finished", || {
        let api = api.clone();
        let dispatch = dispatch.to_owned();
        async move {
            let d = api
                .ok("dispatch.get", json!({"dispatchId": dispatch}))
                .await;
            (d["status"] == "done").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_fires_on_time_survives_a_restart_and_never_stacks() {
    let kernel = kernel();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, me) = kernel.admin.agent_and_session().await;
    let agent = kernel
        .admin
        .ok("session.get", json!({"sessionId": me}))
        .await["agentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = kernel
        .admin
        .ok("session.create", json!({"agentId": agent}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let add = format!("cron add \"*/5 * * * *\" --session {target} \"check the build\"");
    llm.rule(move |body| {
        let last = last_user_text(body);
        if last.contains("check the build") && last.contains("[cron job") {
            return Step {
                reply: Reply::text("build checked"),
                delay: Duration::from_secs(2),
            };
        }
        let reply = if aos_tests::llm::tool_results_since_user(body) == 0 {
            Reply::bash(&add)
        } else {
            Reply::text("scheduled")
        };
        reply.into()
    });
    // The agent schedules it from its bash.
    let added = tool_results(&run(&kernel.admin, &me, "schedule the build check").await);
    assert!(added[0].preview.starts_with("added cron_"), "{added:?}");
    let id = added[0]
        .preview
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(',');
    let next = job(&kernel.admin, id).await["nextRunAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(next.ends_with(":00.000Z"), "{next}");

    // Not before its time; at its time, once.
    assert!(tick(&kernel.admin, &plus(&next, -1)).await.is_empty());
    assert!(dispatches(&kernel.admin, &target).await.is_empty());
    let fired = tick(&kernel.admin, &next).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["status"], "dispatched");
    let first = fired[0]["dispatchId"].as_str().unwrap().to_owned();
    let ran = dispatches(&kernel.admin, &target).await;
    assert_eq!(ran.len(), 1);
    assert!(tick(&kernel.admin, &plus(&next, 1)).await.is_empty());
    wait_done(&kernel.admin, &first).await;

    // A restarted service still has the job and runs it at the next occurrence.
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-cron"}))
        .await;
    let service = services[0]["serviceId"].as_str().unwrap().to_owned();
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": service}))
        .await;
    kernel
        .admin
        .ok("skill.start", json!({"name": "aos-cron"}))
        .await;
    let second_at = eventually(Duration::from_secs(20), "aos-cron back", || {
        let api = kernel.admin.clone();
        let id = id.to_owned();
        async move {
            let reply = api.call("aos-cron.list", json!({})).await;
            reply.ok.then(|| {
                reply.data.unwrap()["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["id"] == id.as_str())
                    .map(|j| j["nextRunAt"].as_str().unwrap().to_owned())
            })?
        }
    })
    .await;
    assert_eq!(second_at, plus(&next, 300));
    let fired = tick(&kernel.admin, &second_at).await;
    assert_eq!(fired[0]["status"], "dispatched", "{fired:?}");

    // The second run is still going (2 s model latency) when the third is due: skipped.
    let skipped = tick(&kernel.admin, &plus(&second_at, 300)).await;
    assert_eq!(skipped[0]["status"], "skipped", "{skipped:?}");
    assert_eq!(dispatches(&kernel.admin, &target).await.len(), 2);
    let listed = job(&kernel.admin, id).await;
    assert_eq!(listed["runs"], 2);
    assert_eq!(listed["skipped"], 1);
    assert!(
        listed["lastStatus"]
            .as_str()
            .unwrap()
            .contains("previous run"),
        "{listed}"
    );
    // `cron run` obeys the same rule while it runs, and runs once it has finished.
    let by_hand = kernel.admin.ok("aos-cron.run", json!({"id": id})).await;
    assert_eq!(by_hand["status"], "skipped");
    wait_done(&kernel.admin, fired[0]["dispatchId"].as_str().unwrap()).await;
    let by_hand = kernel.admin.ok("aos-cron.run", json!({"id": id})).await;
    assert_eq!(by_hand["status"], "dispatched", "{by_hand}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_runs_follow_the_policy_and_bad_jobs_are_refused() {
    let kernel = kernel();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, _) = kernel.admin.agent_and_session().await;
    let add = |missed: &str| {
        let api = kernel.admin.clone();
        let params = json!({"expr": "* * * * *", "agentId": agent, "task": format!("missed {missed}"), "missed": missed});
        async move { api.ok("aos-cron.add", params).await }
    };
    let once = add("once").await;
    let skip = add("skip").await;
    assert!(
        once["sessionId"].is_null(),
        "a new session per run by default"
    );
    // Ten minutes pass with nobody ticking (as when AOS was down).
    let later = plus(once["nextRunAt"].as_str().unwrap(), 600);
    let results = tick(&kernel.admin, &later).await;
    let status = |id: &Value| {
        results
            .iter()
            .find(|r| r["id"] == *id)
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(status(&once["id"]), "dispatched");
    assert_eq!(status(&skip["id"]), "missed");
    for j in [&once, &skip] {
        let listed = job(&kernel.admin, j["id"].as_str().unwrap()).await;
        assert_eq!(listed["nextRunAt"], plus(&later, 60), "{listed}");
    }
    // The run went to a fresh session of the agent, linked to its job.
    let session = results.iter().find(|r| r["id"] == once["id"]).unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(record["agentId"], agent.as_str());
    assert_eq!(record["metadata"]["aos-cron"]["jobId"], once["id"]);

    let refused = kernel
        .admin
        .call(
            "aos-cron.add",
            json!({"expr": "every tuesday", "agentId": agent, "task": "x"}),
        )
        .await
        .error
        .unwrap();
    assert!(
        refused.message.contains("minute hour day month weekday"),
        "{refused:?}"
    );
    let backwards = kernel
        .admin
        .call("aos-cron.tick", json!({"now": plus(&later, -60)}))
        .await
        .error
        .unwrap();
    assert!(
        backwards.message.contains("only moves forward"),
        "{backwards:?}"
    );
    // An agent's token manages only its own jobs.
    let (other, other_session) = kernel.admin.agent_and_session().await;
    let token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": other_session}, "label": "test"}),
        )
        .await;
    let as_other = kernel.api(token["token"].as_str());
    let denied = as_other
        .call("aos-cron.remove", json!({"id": once["id"]}))
        .await
        .error
        .unwrap();
    assert_eq!(denied.code.as_str(), "permission.denied");
    let listed = as_other.ok("aos-cron.list", json!({})).await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    assert!(!other.is_empty());
}
