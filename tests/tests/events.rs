//! `GET /events`: live delivery, filters, `Last-Event-ID` resume, gaps and keepalive.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aos_sdk::client::EventFilter;
use aos_sdk::protocol::Event;
use aos_tests::{Setup, TestKernel};
use futures::{Stream, StreamExt};
use serde_json::json;

async fn next(
    stream: &mut (impl Stream<Item = Result<Event, aos_sdk::ClientError>> + Unpin),
) -> Event {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("a well-formed event")
}

#[tokio::test]
async fn events_stream_live_and_filter_by_name_and_session() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let mut all = Box::pin(api.client.events(&EventFilter::default()).await.unwrap());
    let mut agents_only = Box::pin(
        api.client
            .events(&EventFilter {
                names: vec!["agent.*".into()],
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let (agent, session) = api.agent_and_session().await;
    let first = next(&mut all).await;
    assert_eq!(first.name, "agent.started");
    assert_eq!(first.agent_id.as_deref(), Some(agent.as_str()));
    let mut names = vec![first.name];
    while names.last().map(String::as_str) != Some("session.started") {
        names.push(next(&mut all).await.name);
    }
    assert!(names.contains(&"context.ingest".to_owned()), "{names:?}");
    assert!(
        names.contains(&"session.bootstrap.after".to_owned()),
        "{names:?}"
    );
    api.ok("agent.update", json!({"agentId": agent, "priority": 1}))
        .await;
    assert_eq!(next(&mut agents_only).await.name, "agent.started");
    let updated = next(&mut agents_only).await;
    assert_eq!(updated.name, "agent.updated");
    assert_eq!(updated.payload["changed"], json!(["priority"]));

    let mut mine = Box::pin(
        api.client
            .events(&EventFilter {
                session_id: Some(session.clone()),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let (_, other) = api.agent_and_session().await;
    for s in [&other, &session] {
        api.ok("session.append", json!({"sessionId": s, "message": {"role": "user", "parts": [{"type": "text", "text": "x"}]}}))
            .await;
    }
    let event = next(&mut mine).await;
    assert_eq!(event.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(event.name, "context.ingest");
    assert_eq!(event.payload["message"]["parts"][0]["text"], "x");
}

#[tokio::test]
async fn a_client_that_reconnects_with_last_event_id_gets_exactly_what_it_missed() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let mut stream = Box::pin(
        api.client
            .events(&EventFilter {
                names: vec!["agent.*".into()],
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    api.ok("agent.create", json!({"displayName": "one"})).await;
    let seen = next(&mut stream).await;
    drop(stream);
    let mut missed = Vec::new();
    for name in ["two", "three", "four"] {
        let agent = api.ok("agent.create", json!({"displayName": name})).await;
        missed.push(agent["agentId"].as_str().unwrap().to_owned());
    }
    let mut resumed = Box::pin(
        api.client
            .events(&EventFilter {
                names: vec!["agent.*".into()],
                last_event_id: Some(seen.id),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next(&mut resumed).await;
        assert!(event.id > seen.id);
        got.push(event.agent_id.unwrap());
    }
    assert_eq!(got, missed);
    let later = api.ok("agent.create", json!({})).await;
    assert_eq!(
        next(&mut resumed).await.agent_id.as_deref(),
        later["agentId"].as_str(),
        "then it goes live"
    );
}

#[tokio::test]
async fn a_resume_older_than_the_ring_is_announced() {
    let mut setup = Setup::new();
    setup.config.limits.event_ring = 4;
    let kernel = TestKernel::start_with(setup);
    let api = &kernel.admin;
    let mut stream = Box::pin(api.client.events(&EventFilter::default()).await.unwrap());
    api.ok("agent.create", json!({})).await;
    let first = next(&mut stream).await;
    drop(stream);
    for _ in 0..10 {
        api.ok("agent.create", json!({})).await;
    }
    let mut resumed = Box::pin(
        api.client
            .events(&EventFilter {
                last_event_id: Some(first.id),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let notice = next(&mut resumed).await;
    assert_eq!(notice.name, "events.lagged");
    assert_eq!(notice.payload["requestedAfter"], first.id);
    let replayed = next(&mut resumed).await;
    assert_eq!(
        replayed.id,
        notice.payload["oldestAvailable"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn idle_streams_carry_keepalive_comments() {
    let mut setup = Setup::new();
    setup.config.limits.keepalive = Duration::from_millis(100);
    let kernel = TestKernel::start_with(setup);
    let response = reqwest::Client::new()
        .get(format!("{}/events", kernel.url))
        .bearer_auth(&kernel.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !seen.contains(": keepalive") {
            seen.push_str(&String::from_utf8_lossy(
                &body.next().await.unwrap().unwrap(),
            ));
        }
    })
    .await
    .expect("a keepalive comment within 5 s");
}

#[tokio::test]
async fn streams_end_when_the_kernel_stops() {
    let kernel = TestKernel::start();
    let mut stream = Box::pin(
        kernel
            .admin
            .client
            .events(&EventFilter::default())
            .await
            .unwrap(),
    );
    let stopper = std::thread::spawn(move || drop(kernel));
    let mut names = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(item) = stream.next().await {
            if let Ok(event) = item {
                names.push(event.name);
            }
        }
    })
    .await
    .expect("the stream closes when the kernel stops");
    stopper.join().unwrap();
    assert_eq!(names.last().map(String::as_str), Some("aos.stopping"));
}
