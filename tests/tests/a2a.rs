//! aos-a2a end to end: agents message each other through the `a2a` command from their
//! bash, replies come back with one correlation id, silent messages never dispatch,
//! notifications queue behind busy agents, sub-agents run in parallel, and message
//! loops stop at the configured bounds.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aos_sdk::protocol::StreamEvent;
use aos_tests::dispatching::{configure, history, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm, Step, last_user_text};
use aos_tests::{Api, TestKernel, eventually};
use serde_json::{Value, json};

fn results(events: &[StreamEvent]) -> Vec<String> {
    tool_results(events)
        .into_iter()
        .map(|r| r.preview)
        .collect()
}

/// An agent called `name` and a session of it.
async fn agent(api: &Api, name: &str) -> (String, String) {
    let agent = api
        .ok(
            "agent.create",
            json!({"displayName": name, "description": format!("{name} the tester")}),
        )
        .await;
    let agent_id = agent["agentId"].as_str().unwrap().to_owned();
    let session = api.ok("session.create", json!({"agentId": agent_id})).await;
    (agent_id, session["sessionId"].as_str().unwrap().to_owned())
}

/// The texts of a session's history, one per message, as `role: text`.
async fn texts(api: &Api, session: &str) -> Vec<String> {
    history(api, session)
        .await
        .iter()
        .map(|m| {
            let text: Vec<&str> = m["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect();
            format!("{}: {}", m["role"].as_str().unwrap(), text.join("\n"))
        })
        .collect()
}

fn corr_of(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("corr="))
        .map(|c| c.trim_end_matches(']').to_owned())
        .unwrap_or_else(|| panic!("no corr= in {text}"))
}

async fn inbox_of(api: &Api, agent_id: &str) -> String {
    let agents = api.ok("aos-a2a.agents", json!({})).await;
    agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentId"] == agent_id)
        .and_then(|a| a["inboxSessionId"].as_str())
        .unwrap()
        .to_owned()
}

async fn dispatches(api: &Api, session: &str) -> Vec<Value> {
    api.ok("dispatch.list", json!({"sessionId": session})).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wake_comes_back_with_one_correlation_id_in_both_histories() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (alice, a) = agent(&kernel.admin, "alice").await;
    let (bob, _) = agent(&kernel.admin, "bob").await;
    llm.rule(|body| {
        let last = last_user_text(body);
        let reply = if last.contains("[a2a wake from alice") {
            Reply::text("bob says 42")
        } else if last.contains("[a2a reply from bob") {
            Reply::text("thanks, bob")
        } else if aos_tests::llm::tool_results_since_user(body) == 0 && last == "ask bob" {
            Reply::bash("a2a send bob --wake --wait \"what is the answer?\"")
        } else if aos_tests::llm::tool_results_since_user(body) == 0 && last == "ask bob later" {
            Reply::bash("a2a send bob --wake \"and the question?\"")
        } else {
            Reply::text("asked")
        };
        reply.into()
    });
    let asked = results(&run(&kernel.admin, &a, "ask bob").await);
    assert!(asked[0].contains("bob says 42"), "{asked:?}");
    let corr = corr_of(&asked[0]);
    // Both histories hold the exchange under one correlation id.
    let mine = texts(&kernel.admin, &a).await;
    assert!(
        mine.iter()
            .any(|t| t.starts_with("system: [a2a sent wake to bob")
                && t.contains(&format!("corr={corr}"))
                && t.contains("what is the answer?")),
        "{mine:#?}"
    );
    assert!(
        mine.iter()
            .any(|t| t.starts_with("user: [a2a reply from bob")
                && t.contains(&format!("corr={corr}"))
                && t.contains("bob says 42")),
        "{mine:#?}"
    );
    let inbox = inbox_of(&kernel.admin, &bob).await;
    let theirs = texts(&kernel.admin, &inbox).await;
    let asked_at = theirs
        .iter()
        .position(|t| {
            t.starts_with("user: [a2a wake from alice")
                && t.contains(&format!("corr={corr}"))
                && t.contains("what is the answer?")
        })
        .unwrap_or_else(|| panic!("{theirs:#?}"));
    assert_eq!(theirs[asked_at + 1], "assistant: bob says 42");
    // Both sides name sender, target, mode and correlation id; the service's record
    // holds them as fields and points at each side's history message.
    let (from, to) = (
        format!("alice ({alice}, {a})"),
        format!("bob ({bob}, {inbox})"),
    );
    let sent_note = mine
        .iter()
        .find(|t| t.starts_with("system: [a2a sent wake"))
        .unwrap();
    assert!(
        sent_note.contains(&format!("to {to} from {from} id=")),
        "{sent_note}"
    );
    assert!(
        theirs[asked_at].contains(&format!("wake from {from} to {to} id=")),
        "{}",
        theirs[asked_at]
    );
    let id = asked[0].split_whitespace().nth(1).unwrap();
    let record = kernel.admin.ok("aos-a2a.get", json!({"id": id})).await;
    assert_eq!(record["mode"], "wake", "{record}");
    assert_eq!(record["corr"], corr.as_str(), "{record}");
    assert_eq!(record["from"]["agentId"], alice.as_str(), "{record}");
    assert_eq!(record["from"]["sessionId"], a.as_str(), "{record}");
    assert_eq!(record["to"]["agentId"], bob.as_str(), "{record}");
    assert_eq!(record["to"]["sessionId"], inbox.as_str(), "{record}");
    let by_id = |messages: &[Value], id: &Value| {
        messages
            .iter()
            .find(|m| &m["id"] == id)
            .map(|m| m["parts"][0]["text"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no history message {id}"))
    };
    let note = by_id(
        &history(&kernel.admin, &a).await,
        &record["from"]["messageId"],
    );
    assert!(note.contains(&format!("id={id} corr={corr}")), "{note}");
    // A woken target's side is the user message that started its dispatch.
    let started = history(&kernel.admin, &inbox)
        .await
        .into_iter()
        .find(|m| m["role"] == "user" && m["dispatchId"] == record["dispatchId"])
        .unwrap_or_else(|| panic!("no message of dispatch {}", record["dispatchId"]));
    assert!(
        started["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("id={id} corr={corr}")),
        "{started}"
    );
    // The same facts, structured: a `meta` part on each side (never shown to a model).
    let meta_of = |message: &Value| {
        message["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == "meta")
            .cloned()
            .unwrap_or_else(|| panic!("no meta part in {message}"))
    };
    let sender_side = history(&kernel.admin, &a)
        .await
        .into_iter()
        .find(|m| m["id"] == record["from"]["messageId"])
        .unwrap();
    let exchange = |side: &str| {
        json!({
            "side": side, "id": id, "corr": corr, "mode": "wake", "depth": 1,
            "from": {"agentId": alice, "sessionId": a},
            "to": {"agentId": bob, "sessionId": inbox},
        })
    };
    assert_eq!(
        meta_of(&sender_side),
        json!({"id": meta_of(&sender_side)["id"], "type": "meta", "source": "aos-a2a", "data": exchange("sender")})
    );
    assert_eq!(meta_of(&started)["data"], exchange("target"));
    let reply = history(&kernel.admin, &a)
        .await
        .into_iter()
        .find(|m| {
            m["parts"][0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("[a2a reply from bob"))
        })
        .unwrap();
    let reply_meta = meta_of(&reply)["data"].clone();
    assert_eq!(reply_meta["replyTo"], id, "{reply_meta}");
    assert_eq!(reply_meta["corr"], corr.as_str(), "{reply_meta}");
    assert_eq!(reply_meta["mode"], "reply", "{reply_meta}");
    assert_eq!(reply_meta["from"]["agentId"], bob.as_str(), "{reply_meta}");
    assert_eq!(reply_meta["to"]["sessionId"], a.as_str(), "{reply_meta}");
    assert!(
        llm.requests()
            .iter()
            .all(|body| !body.to_string().contains("\"side\"")),
        "a meta part reached a model"
    );
    // The kernel recorded who wrote each: the service, not alice's token.
    let origins: Vec<Value> = history(&kernel.admin, &inbox)
        .await
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["origin"].clone())
        .collect();
    assert!(origins.contains(&json!("skill:aos-a2a")), "{origins:?}");

    // Without --wait the reply arrives later as a message that wakes alice.
    let sent = results(&run(&kernel.admin, &a, "ask bob later").await);
    assert!(sent[0].starts_with("sent a2m_"), "{sent:?}");
    let later = corr_of(&sent[0]);
    let woke = eventually(Duration::from_secs(30), "alice woken by the reply", || {
        let api = kernel.admin.clone();
        let a = a.clone();
        let later = later.clone();
        async move {
            let texts = texts(&api, &a).await;
            let at = texts.iter().position(|t| {
                t.starts_with("user: [a2a reply from bob") && t.contains(&format!("corr={later}"))
            })?;
            texts.get(at + 1).cloned()
        }
    })
    .await;
    assert_eq!(woke, "assistant: thanks, bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_never_dispatches_notify_queues_behind_a_busy_agent_and_wakes_are_rate_limited() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, a) = agent(&kernel.admin, "alice").await;
    let (bob, _) = agent(&kernel.admin, "bob").await;
    llm.rule(|body| {
        let last = last_user_text(body);
        let since = aos_tests::llm::tool_results_since_user(body);
        if last == "slow work" {
            return Step {
                reply: Reply::text("slow work done"),
                delay: Duration::from_secs(3),
            };
        }
        let reply = if last.contains("[a2a notify from alice") {
            Reply::text("noted")
        } else if since == 0 && last == "tell bob quietly" {
            Reply::bash("a2a send bob --silent \"fyi: the build is green\"")
        } else if since == 0 && last == "poke bob" {
            Reply::bash("a2a send bob --notify \"please review PR 12\"")
        } else {
            Reply::text("sent")
        };
        reply.into()
    });
    let quiet = results(&run(&kernel.admin, &a, "tell bob quietly").await);
    assert!(quiet[0].contains("(silent) to bob"), "{quiet:?}");
    let inbox = inbox_of(&kernel.admin, &bob).await;
    assert!(
        texts(&kernel.admin, &inbox)
            .await
            .iter()
            .any(|t| t.starts_with("user: [a2a silent from alice") && t.contains("build is green"))
    );
    // A silent message never dispatches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dispatches(&kernel.admin, &inbox).await.is_empty());

    // Bob is busy; a notification queues behind his work and runs after it.
    let busy = kernel
        .admin
        .client
        .dispatch(&inbox, "slow work", false)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "bob's slow work running", || {
        let api = kernel.admin.clone();
        let id = busy.dispatch_id.clone();
        async move {
            let d = api.ok("dispatch.get", json!({"dispatchId": id})).await;
            (d["status"] == "running").then_some(())
        }
    })
    .await;
    let seen = llm.requests().len();
    let poked = results(&run(&kernel.admin, &a, "poke bob").await);
    assert!(poked[0].contains("(notify) to bob"), "{poked:?}");
    let queued: Vec<Value> = dispatches(&kernel.admin, &inbox)
        .await
        .into_iter()
        .filter(|d| d["dispatchId"] != busy.dispatch_id.as_str())
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["status"], "queued", "{queued:?}");
    let notified = queued[0]["dispatchId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the notification handled", || {
        let api = kernel.admin.clone();
        let id = notified.clone();
        async move {
            let d = api.ok("dispatch.get", json!({"dispatchId": id})).await;
            (d["status"] == "done").then_some(())
        }
    })
    .await;
    let slow = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": busy.dispatch_id}))
        .await;
    assert_eq!(slow["status"], "done");
    // Bob's notified turn saw the silent message from before.
    let request = llm
        .requests()
        .into_iter()
        .skip(seen)
        .find(|r| last_user_text(r).contains("[a2a notify from alice"))
        .unwrap();
    assert!(request.to_string().contains("fyi: the build is green"));

    // Dispatching messages from one agent to another are limited per minute.
    let mut sent = 1; // the notification above
    let refused = loop {
        let reply = kernel
            .admin
            .call(
                "aos-a2a.send",
                json!({"to": "bob", "text": "again", "mode": "notify", "fromSessionId": a}),
            )
            .await;
        if !reply.ok {
            break reply.error.unwrap();
        }
        sent += 1;
        assert!(sent <= 12, "more than 12 wakes in a minute were accepted");
    };
    assert_eq!(sent, 12, "refused too early: {refused:?}");
    assert_eq!(refused.code.as_str(), "limit.exceeded");
    assert!(refused.message.contains("maxWakesPerMinute"), "{refused:?}");
    // Silent messages are not counted.
    kernel
        .admin
        .ok(
            "aos-a2a.send",
            json!({"to": "bob", "text": "still fine", "mode": "silent", "fromSessionId": a}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_sub_agents_run_at_once_and_wait_collects_their_answers() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, a) = agent(&kernel.admin, "alice").await;
    llm.rule(|body| {
        let last = last_user_text(body);
        let reply = if let Some(task) = ["one", "two", "three"]
            .into_iter()
            .find(|t| last.contains(&format!("task {t}")) && last.contains("[a2a spawn"))
        {
            Reply::text(&format!("answer {task}"))
        } else if aos_tests::llm::tool_results_since_user(body) == 0 {
            Reply::bash(
                "s=$(date +%s%N) && a=$(a2a spawn \"task one\") && b=$(a2a spawn \"task two\") && c=$(a2a spawn \"task three\") && a2a wait $a $b $c && echo \"took_ms=$(( ($(date +%s%N) - s) / 1000000 ))\"",
            )
        } else {
            Reply::text("all three answered")
        };
        reply.into()
    });
    // Every model call takes L; three children one after another would take 3L.
    let latency = Duration::from_secs(3);
    llm.set_latency(latency);
    let events = run(&kernel.admin, &a, "split the work").await;
    let out = results(&events);
    for task in ["one", "two", "three"] {
        assert!(out[0].contains(&format!("answer {task}")), "{out:?}");
    }
    // They ran at once: three model calls in flight together.
    assert!(
        llm.max_in_flight() >= 3,
        "the sub-agents ran one after another (at most {} model calls at once)",
        llm.max_in_flight()
    );
    // And in about the time of one: from the first spawn to the last answer, well
    // under 2L (the margin is for the interpreter and the kernel, not a benchmark).
    let took = out[0]
        .lines()
        .find_map(|l| l.strip_prefix("took_ms="))
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| panic!("no took_ms= in {out:?}"));
    assert!(
        took < 2 * latency,
        "three sub-agents with a model latency of {latency:?} took {took:?}"
    );
    // Each child links to its parent, and the parent's history records them.
    let children: Vec<String> = out[0]
        .lines()
        .filter_map(|l| l.strip_prefix("== "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 3, "{out:?}");
    for child in &children {
        let session = kernel
            .admin
            .ok("session.get", json!({"sessionId": child}))
            .await;
        assert_eq!(
            session["metadata"]["aos-a2a"]["parentSessionId"],
            a.as_str()
        );
        assert_eq!(session["metadata"]["aos-a2a"]["spawnDepth"], 1);
    }
    let mine = texts(&kernel.admin, &a).await;
    assert_eq!(
        mine.iter()
            .filter(|t| t.starts_with("system: [a2a spawned sub-agent"))
            .count(),
        3
    );
    assert_eq!(
        mine.iter()
            .filter(|t| t.starts_with("user: [a2a sub-agent answer"))
            .count(),
        3,
        "{mine:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ping_pong_between_two_agents_stops_at_the_chain_limit() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, a) = agent(&kernel.admin, "alice").await;
    agent(&kernel.admin, "bob").await;
    // Whoever is messaged messages the other back, forever if nothing stops them.
    llm.rule(|body| {
        let last = last_user_text(body);
        if aos_tests::llm::tool_results_since_user(body) > 0 {
            return Reply::text("passed it on").into();
        }
        let other = if last.contains("from bob") {
            "bob"
        } else {
            "alice"
        };
        let other = if last == "start the rally" {
            "bob"
        } else {
            other
        };
        Reply::bash(&format!("a2a send {other} --notify \"ping\"")).into()
    });
    let started = results(&run(&kernel.admin, &a, "start the rally").await);
    assert!(started[0].starts_with("sent a2m_"), "{started:?}");
    let refusal = eventually(Duration::from_secs(60), "the rally refused", || {
        let llm = &llm;
        async move {
            llm.requests().iter().find_map(|r| {
                let text = r.to_string();
                text.contains("limit.exceeded").then_some(text)
            })
        }
    })
    .await;
    assert!(
        refusal.contains("maxChainDepth") && refusal.contains("hop 7"),
        "{refusal}"
    );
    // And then everything is quiet: six hops were delivered, no more.
    let sent = eventually(Duration::from_secs(30), "every dispatch ended", || {
        let api = kernel.admin.clone();
        async move {
            let all = api.ok("dispatch.list", json!({"limit": 1000})).await;
            let items = all["items"].as_array().unwrap().clone();
            items
                .iter()
                .all(|d| d["status"] == "done")
                .then_some(items.len())
        }
    })
    .await;
    assert_eq!(sent, 7, "the first dispatch and six hops");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = kernel
        .admin
        .ok("dispatch.list", json!({"limit": 1000}))
        .await;
    assert_eq!(after["items"].as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sends_are_refused_with_what_is_accepted_and_policy_is_obeyed() {
    let setup = aos_tests::Setup::new();
    // Bob may not be woken by anyone; silent messages are fine.
    std::fs::write(
        setup.skills().join("aos-a2a/policy.json"),
        r#"{"rules": [
            {"from": "*", "to": "bob", "modes": ["wake", "notify"], "allow": false},
            {"from": "*", "to": "*", "allow": true}
        ]}"#,
    )
    .unwrap();
    let kernel = TestKernel::start_with(setup);
    let (_, a) = agent(&kernel.admin, "alice").await;
    agent(&kernel.admin, "bob").await;
    let send = |params: Value| {
        let api = kernel.admin.clone();
        async move { api.call("aos-a2a.send", params).await }
    };
    let denied = send(json!({"to": "bob", "text": "hi", "mode": "wake", "fromSessionId": a}))
        .await
        .error
        .unwrap();
    assert_eq!(denied.code.as_str(), "permission.denied");
    assert!(denied.message.contains("policy rule 1"), "{denied:?}");
    assert!(
        send(json!({"to": "bob", "text": "hi", "mode": "silent", "fromSessionId": a}))
            .await
            .ok
    );
    let bad_mode = send(json!({"to": "bob", "text": "hi", "mode": "shout", "fromSessionId": a}))
        .await
        .error
        .unwrap();
    assert!(
        bad_mode.message.contains("accepted: silent, notify, wake"),
        "{bad_mode:?}"
    );
    let unknown = send(json!({"to": "nobody", "text": "hi", "fromSessionId": a}))
        .await
        .error
        .unwrap();
    assert_eq!(unknown.code.as_str(), "not_found");
    let extra = send(json!({"to": "bob", "text": "hi", "fromSessionId": a, "urgent": true}))
        .await
        .error
        .unwrap();
    assert!(
        extra.message.contains("unknown field `urgent`"),
        "{extra:?}"
    );
    let to_self = send(json!({"to": a, "text": "hi", "mode": "silent", "fromSessionId": a}))
        .await
        .error
        .unwrap();
    assert!(
        to_self.message.contains("cannot message itself"),
        "{to_self:?}"
    );
    // A session token speaks only for its own session.
    let token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": a}, "label": "test"}),
        )
        .await;
    let as_alice = kernel.api(token["token"].as_str());
    let (_, other) = agent(&kernel.admin, "carol").await;
    let forged = as_alice
        .call(
            "aos-a2a.send",
            json!({"to": "bob", "text": "hi", "mode": "silent", "fromSessionId": other}),
        )
        .await
        .error
        .unwrap();
    assert_eq!(forged.code.as_str(), "permission.denied", "{forged:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_agents_are_bounded_in_depth_and_fan_out() {
    let setup = aos_tests::Setup::new();
    let config = setup.skills().join("aos-a2a/config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["maxSpawnDepth"] = json!(1);
    settings["maxChildren"] = json!(2);
    std::fs::write(&config, settings.to_string()).unwrap();
    let kernel = TestKernel::start_with(setup);
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    // Children take their time, so they are still running when the third is asked for.
    llm.rule(|_| Step {
        reply: Reply::text("finished"),
        delay: Duration::from_secs(2),
    });
    let (_, parent) = agent(&kernel.admin, "alice").await;
    let spawn = |from: String| {
        let api = kernel.admin.clone();
        async move {
            api.call(
                "aos-a2a.spawn",
                json!({"task": "count to three", "fromSessionId": from}),
            )
            .await
        }
    };
    let first = spawn(parent.clone()).await;
    assert!(first.ok, "{:?}", first.error);
    assert!(spawn(parent.clone()).await.ok);
    let third = spawn(parent.clone()).await.error.unwrap();
    assert_eq!(third.code.as_str(), "limit.exceeded");
    assert!(third.message.contains("maxChildren"), "{third:?}");
    // A sub-agent may not spawn its own at maxSpawnDepth 1.
    let child = first.data.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let deeper = spawn(child).await.error.unwrap();
    assert_eq!(deeper.code.as_str(), "limit.exceeded");
    assert!(deeper.message.contains("maxSpawnDepth"), "{deeper:?}");
    // Once the children have answered, the parent may spawn again.
    let answered = kernel
        .admin
        .ok(
            "aos-a2a.wait",
            json!({"ids": [first_id(&kernel.admin, &parent).await], "timeoutMs": 20000}),
        )
        .await;
    assert_eq!(answered["pending"], 0, "{answered}");
    eventually(Duration::from_secs(20), "a free child slot", || {
        let spawn = spawn(parent.clone());
        async move { spawn.await.ok.then_some(()) }
    })
    .await;
}

/// The message id of the first sub-agent of `parent`, from the parent's history note.
async fn first_id(api: &Api, parent: &str) -> String {
    let texts = texts(api, parent).await;
    let note = texts
        .iter()
        .find(|t| t.starts_with("system: [a2a spawned sub-agent"))
        .unwrap();
    note.split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_notify_and_wake_count_toward_the_wake_rate() {
    let setup = aos_tests::Setup::new();
    let config = setup.skills().join("aos-a2a/config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["maxWakesPerMinute"] = json!(2);
    std::fs::write(&config, settings.to_string()).unwrap();
    let kernel = TestKernel::start_with(setup);
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    llm.rule(|_| Reply::text("ok").into());
    let (_, a) = agent(&kernel.admin, "alice").await;
    let (_, b) = agent(&kernel.admin, "bob").await;
    let call = |op: &'static str, params: Value| {
        let api = kernel.admin.clone();
        async move { api.call(op, params).await }
    };
    let send = |from: &str, to: &str, mode: &str| {
        call(
            "aos-a2a.send",
            json!({"to": to, "text": "hi", "mode": mode, "fromSessionId": from}),
        )
    };
    // Sub-agents are bounded by maxChildren, not by the rate: three of bob, more than
    // the rate allows, are all started.
    for _ in 0..3 {
        let spawned = call(
            "aos-a2a.spawn",
            json!({"task": "count to three", "agentId": "bob", "fromSessionId": a}),
        )
        .await;
        assert!(spawned.ok, "{:?}", spawned.error);
    }
    // A notify and a wake are two; the third dispatching message is refused.
    let first = send(&a, "bob", "notify").await;
    assert!(
        first.ok,
        "the spawns were counted as wakes: {:?}",
        first.error
    );
    assert!(send(&a, "bob", "wake").await.ok);
    let refused = send(&a, "bob", "notify").await.error.unwrap();
    assert_eq!(refused.code.as_str(), "limit.exceeded");
    assert!(
        refused.message.contains("maxWakesPerMinute")
            && refused.message.contains("notify and wake"),
        "{refused:?}"
    );
    assert!(send(&a, "bob", "silent").await.ok, "silent is not counted");
    // Replies are bounded by the chain depth, not by the rate: bob answers three times
    // and may still notify alice twice.
    let message = first.data.unwrap()["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let replied = call(
            "aos-a2a.reply",
            json!({"id": message, "text": "thanks", "fromSessionId": b}),
        )
        .await;
        assert!(replied.ok, "{:?}", replied.error);
    }
    assert!(send(&b, "alice", "notify").await.ok, "replies were counted");
    assert!(send(&b, "alice", "notify").await.ok);
    assert!(!send(&b, "alice", "wake").await.ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_inbox_reply_and_wait_timeout_through_the_command() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (alice, a) = agent(&kernel.admin, "alice").await;
    let (bob, b) = agent(&kernel.admin, "bob").await;
    llm.rule(|body| {
        let last = last_user_text(body);
        if last.contains("[a2a spawn from alice") {
            return Step {
                reply: Reply::text("slow answer"),
                delay: Duration::from_secs(5),
            };
        }
        if last.contains("[a2a reply from bob") {
            return Reply::text("got it").into();
        }
        if aos_tests::llm::tool_results_since_user(body) > 0 {
            return Reply::text("done").into();
        }
        let command = match last.as_str() {
            "who is there" => "a2a agents".to_owned(),
            "tell bob" => "a2a send bob --silent \"the build is green\"".to_owned(),
            "read mail" => "a2a inbox --limit 5".to_owned(),
            "wait briefly" => {
                "c=$(a2a spawn \"a slow task\") && a2a wait --timeout 1 $c; echo \"exit=$?\""
                    .to_owned()
            }
            other => match other.strip_prefix("answer ") {
                Some(id) => format!("a2a reply {id} \"thanks for the news\""),
                None => return Reply::text("?").into(),
            },
        };
        Reply::bash(&command).into()
    });
    // The directory: every agent, its description, what the caller may do, and who
    // the caller is.
    let agents = results(&run(&kernel.admin, &a, "who is there").await);
    let line = |id: &str| {
        agents[0]
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed: {agents:?}"))
            .to_owned()
    };
    assert_eq!(
        line(&alice),
        format!("{alice} alice (you) [silent,notify,wake,spawn] alice the tester")
    );
    assert_eq!(
        line(&bob),
        format!("{bob} bob [silent,notify,wake,spawn] bob the tester")
    );
    // Bob finds alice's message in his inbox, from another of his sessions.
    let sent = results(&run(&kernel.admin, &a, "tell bob").await);
    let id = sent[0].split_whitespace().nth(1).unwrap().to_owned();
    let corr = corr_of(&sent[0]);
    let inbox = results(&run(&kernel.admin, &b, "read mail").await);
    assert!(
        inbox[0].starts_with(&format!("{id} silent from alice ({alice}) corr={corr} "))
            && inbox[0].contains("\n    the build is green"),
        "{inbox:?}"
    );
    // His reply carries the message's correlation id on both sides and wakes alice.
    let replied = results(&run(&kernel.admin, &b, &format!("answer {id}")).await);
    assert!(
        replied[0].starts_with("replied a2m_")
            && replied[0].trim_end().ends_with(&format!("corr={corr}")),
        "{replied:?}"
    );
    let bobs = texts(&kernel.admin, &b).await;
    assert!(
        bobs.iter()
            .any(|t| t.starts_with("system: [a2a sent reply to alice")
                && t.contains(&format!("corr={corr}"))
                && t.contains("thanks for the news")),
        "{bobs:#?}"
    );
    let answered = eventually(Duration::from_secs(30), "alice woken by the reply", || {
        let api = kernel.admin.clone();
        let a = a.clone();
        let corr = corr.clone();
        async move {
            let texts = texts(&api, &a).await;
            let at = texts.iter().position(|t| {
                t.starts_with("user: [a2a reply from bob")
                    && t.contains(&format!("corr={corr}"))
                    && t.contains("thanks for the news")
            })?;
            texts.get(at + 1).cloned()
        }
    })
    .await;
    assert_eq!(answered, "assistant: got it");
    eventually(Duration::from_secs(30), "alice idle", || {
        let api = kernel.admin.clone();
        let a = a.clone();
        async move {
            dispatches(&api, &a)
                .await
                .iter()
                .all(|d| d["status"] == "done")
                .then_some(())
        }
    })
    .await;
    // `a2a wait --timeout` gives up on a child still running, and says so.
    let waited = results(&run(&kernel.admin, &a, "wait briefly").await);
    assert!(
        waited[0].contains("(running)\n(still running)") && waited[0].contains("exit=3"),
        "{waited:?}"
    );
}
