//! The HTTP surface: authentication, envelopes and status codes, strict params for
//! every operation, and hostile request bodies.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use aos_sdk::protocol::{ErrorCode, OpDescription};
use aos_tests::{SpawnedKernel, TestKernel};
use serde_json::{Value, json};

#[tokio::test]
async fn health_needs_no_token_but_everything_else_does() {
    let kernel = TestKernel::start();
    let http = reqwest::Client::new();
    let health: Value = http
        .get(format!("{}/health", kernel.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    for (token, expected) in [
        (None, "needs `Authorization: Bearer"),
        (Some("aos_wrong"), "not known"),
    ] {
        let mut request = http
            .post(format!("{}/aoscp", kernel.url))
            .json(&json!({"op": "agent.list"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["ok"], false);
        assert_eq!(body["error"]["code"], "unauthenticated");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{body}"
        );
    }
    let events = http
        .get(format!("{}/events", kernel.url))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 401);
    let ops = http
        .get(format!("{}/aoscp", kernel.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 401);
}

#[tokio::test]
async fn envelopes_carry_status_codes_and_unknown_ops_get_suggestions() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let error = api.err("session.gte", json!({}), ErrorCode::NotFound).await;
    assert!(error.message.contains("`session.get`"), "{}", error.message);

    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/aoscp", kernel.url))
        .bearer_auth(&kernel.admin_token)
        .json(&json!({"op": "agent.get", "agentId": "agt_missing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "ok": false,
            "op": "agent.get",
            "error": {"code": "not_found", "message": "agent `agt_missing` does not exist", "details": {"kind": "agent", "id": "agt_missing"}}
        })
    );

    for (body, needle) in [
        ("not json", "not valid JSON"),
        ("[1,2]", "must be a JSON object"),
        ("{\"agentId\": \"x\"}", "needs an `op` field"),
        ("{\"op\": 7}", "`op`"),
    ] {
        let response = http
            .post(format!("{}/aoscp", kernel.url))
            .bearer_auth(&kernel.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], "invalid.params");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
    let response = http
        .get(format!("{}/nowhere", kernel.url))
        .bearer_auth(&kernel.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let created = api.ok("agent.create", json!({})).await;
    let envelope = api
        .call("agent.get", json!({"agentId": created["agentId"]}))
        .await;
    assert!(envelope.ok && envelope.error.is_none() && envelope.revision.is_none());
    let envelope = api
        .call(
            "agent.update",
            json!({"agentId": created["agentId"], "priority": 3}),
        )
        .await;
    assert_eq!(
        envelope.revision,
        Some(2),
        "commands return the new revision"
    );
}

/// A value of the wrong JSON type for a schema property.
fn wrong_value(property: &Value) -> Value {
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.contains(&"string")
        || property.get("$ref").is_some()
        || property.get("anyOf").is_some()
    {
        json!([1, 2, 3])
    } else {
        json!("definitely not the right type")
    }
}

#[tokio::test]
async fn every_operation_rejects_unknown_and_mistyped_fields_by_name() {
    let kernel = TestKernel::start();
    let http = reqwest::Client::new();
    let ops: Vec<OpDescription> = http
        .get(format!("{}/aoscp", kernel.url))
        .bearer_auth(&kernel.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ops.len() >= 40,
        "the registry lists {} operations",
        ops.len()
    );
    let mut checked = BTreeMap::new();
    for op in &ops {
        let envelope = kernel.admin.call(&op.name, json!({"bogusField": 1})).await;
        let error = envelope
            .error
            .unwrap_or_else(|| panic!("{} accepted an unknown field", op.name));
        assert_eq!(
            error.code,
            ErrorCode::InvalidParams,
            "{}: {}",
            op.name,
            error.message
        );
        assert!(
            error.message.contains("bogusField"),
            "{}: {}",
            op.name,
            error.message
        );

        let properties = op
            .params
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (field, property) in properties {
            let accepts_anything = ["type", "$ref", "anyOf", "oneOf", "enum", "const"]
                .iter()
                .all(|key| property.get(*key).is_none());
            if accepts_anything {
                continue;
            }
            let envelope = kernel
                .admin
                .call(&op.name, json!({ field.clone(): wrong_value(&property) }))
                .await;
            let error = envelope
                .error
                .unwrap_or_else(|| panic!("{} accepted a wrong type for `{field}`", op.name));
            assert_eq!(
                error.code,
                ErrorCode::InvalidParams,
                "{}.{field}: {}",
                op.name,
                error.message
            );
            assert!(
                error.message.contains(&format!("`{field}")),
                "{}: the message does not name `{field}`: {}",
                op.name,
                error.message
            );
            *checked.entry(op.name.clone()).or_insert(0) += 1;
        }
    }
    assert!(
        checked.len() >= 20,
        "checked fields of {} operations",
        checked.len()
    );
}

#[test]
fn a_20_mib_body_is_refused_without_the_daemon_growing_by_20_mib() {
    let dir = tempfile::tempdir().unwrap();
    aos_tests::copy_repo_skills(dir.path());
    let kernel = SpawnedKernel::start(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Warm up so allocator pools exist before measuring.
        kernel.admin.ok("agent.list", json!({})).await;
    });
    let (_, peak_before) = kernel.memory_kib();
    let body = vec![b'x'; 20 * 1024 * 1024];
    let token = std::fs::read_to_string(kernel.home.join("admin.token")).unwrap();
    // Declared length: the refusal comes before the body is sent at all.
    let host = kernel.url.strip_prefix("http://").unwrap().to_owned();
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /aoscp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token.trim(),
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reply = vec![0u8; 4096];
    let read = stream.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..read]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload.too_large"), "{reply}");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        // Chunked, no declared length: cut off at the limit. The kernel may close the
        // connection before the client has sent everything, so a send error is fine.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let response = http
            .post(format!("{}/aoscp", kernel.url))
            .bearer_auth(token.trim())
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await;
        if let Ok(response) = response {
            assert_eq!(response.status(), 413);
        }
        kernel.admin.ok("agent.list", json!({})).await;
    });
    let (_, peak_after) = kernel.memory_kib();
    let growth_mib = (peak_after.saturating_sub(peak_before)) as f64 / 1024.0;
    assert!(
        growth_mib < 20.0,
        "peak memory grew by {growth_mib:.1} MiB for refused 20 MiB bodies"
    );
}
