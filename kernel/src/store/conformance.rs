//! Behaviour every [`Store`] backend must show. Each check takes a fresh, empty store;
//! backends run them all from their own test module (`run_all`).

use std::collections::BTreeSet;
use std::sync::Arc;

use aos_sdk::protocol::{
    AgentCb, AgentStatus, ContentInfo, Dispatch, DispatchStatus, LogEntry, MessageMeta, Origin,
    PartBody, QueuedRequest, SessionPhase, SessionStatus, SkillDefaultRule, SystemCb, Timestamp,
    Toggle, TokenInfo, TokenScope, Usage,
};

use super::{ContentRecord, HistoryQuery, ListQuery, LogQuery, Store, StoreError, TokenRecord};
use crate::ids::new_id;

pub use super::conformance_fixtures::{agent, session, text_message};

async fn with_session(store: &dyn Store, agent_id: &str, session_id: &str) {
    store.insert_agent(&agent(agent_id)).await.unwrap();
    store
        .insert_session(&session(session_id, agent_id))
        .await
        .unwrap();
}

/// Runs every check, each on a store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    system_block_uses_revisions(fresh().await).await;
    agents_round_trip_and_page(fresh().await).await;
    sessions_need_an_agent_and_check_revisions(fresh().await).await;
    appends_number_messages_and_bump_revision(fresh().await).await;
    concurrent_appends_leave_no_gaps(fresh().await).await;
    history_reads_by_range_id_and_seq(fresh().await).await;
    archived_sessions_refuse_appends(fresh().await).await;
    content_round_trips_byte_for_byte(fresh().await).await;
    runtime_log_appends_and_filters(fresh().await).await;
    dispatches_round_trip(fresh().await).await;
    usage_adds_up_per_session_agent_and_system(fresh().await).await;
    tokens_are_found_by_hash_and_revoked(fresh().await).await;
    unsettled_sessions_are_listed_for_recovery(fresh().await).await;
    reads_see_every_acknowledged_write_under_concurrency(fresh().await).await;
}

pub async fn system_block_uses_revisions(store: Arc<dyn Store>) {
    assert!(store.load_system().await.unwrap().is_none());
    let now = Timestamp::now();
    let mut system = SystemCb {
        name: "default".into(),
        skill_root: "/skills".into(),
        default_skills: vec![SkillDefaultRule {
            name: "aos".into(),
            load: Some(Toggle::Enable),
            start: None,
            pinned: true,
        }],
        auto_fold_threshold: 16_384,
        compaction_threshold: 100_000,
        max_turns: 50,
        default_model: None,
        providers: vec![],
        bash: Default::default(),
        dispatch_timeout_ms: 60_000,
        revision: 1,
        created_at: now,
        updated_at: now,
    };
    store.insert_system(&system).await.unwrap();
    assert!(matches!(
        store.insert_system(&system).await,
        Err(StoreError::Duplicate { .. })
    ));
    assert_eq!(store.load_system().await.unwrap(), Some(system.clone()));
    system.max_turns = 7;
    system.revision = 2;
    store.save_system(&system, 1).await.unwrap();
    assert_eq!(store.load_system().await.unwrap().unwrap().max_turns, 7);
    system.revision = 3;
    assert!(matches!(
        store.save_system(&system, 1).await,
        Err(StoreError::Conflict { .. })
    ));
}

pub async fn agents_round_trip_and_page(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = new_id("agt_");
        store.insert_agent(&agent(&id)).await.unwrap();
        ids.push(id);
    }
    let first = store.get_agent(&ids[0]).await.unwrap().unwrap();
    assert_eq!(first, agent_with_times(&ids[0], &first));
    let page1 = store
        .list_agents(
            None,
            &ListQuery {
                after: None,
                limit: 3,
            },
        )
        .await
        .unwrap();
    let page2 = store
        .list_agents(
            None,
            &ListQuery {
                after: Some(page1[2].agent_id.clone()),
                limit: 3,
            },
        )
        .await
        .unwrap();
    let listed: Vec<_> = page1
        .iter()
        .chain(&page2)
        .map(|a| a.agent_id.clone())
        .collect();
    assert_eq!(listed, ids, "pages follow creation order without overlap");

    let mut changed = first.clone();
    changed.display_name = "renamed".into();
    changed.status = AgentStatus::Archived;
    changed.revision = 2;
    store.save_agent(&changed, 1).await.unwrap();
    let stored = store.get_agent(&ids[0]).await.unwrap().unwrap();
    assert_eq!(stored.display_name, "renamed");
    assert_eq!(stored.revision, 2);
    assert!(matches!(
        store.save_agent(&changed, 1).await,
        Err(StoreError::Conflict { .. })
    ));
    let archived = store
        .list_agents(
            Some(AgentStatus::Archived),
            &ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(archived.len(), 1);
    assert!(store.get_agent("agt_missing").await.unwrap().is_none());
}

fn agent_with_times(id: &str, stored: &AgentCb) -> AgentCb {
    let mut expected = agent(id);
    expected.created_at = stored.created_at;
    expected.updated_at = stored.updated_at;
    expected
}

pub async fn sessions_need_an_agent_and_check_revisions(store: Arc<dyn Store>) {
    assert!(matches!(
        store
            .insert_session(&session("ses_orphan", "agt_none"))
            .await,
        Err(StoreError::NotFound { kind: "agent", .. })
    ));
    with_session(&*store, "agt_a", "ses_a").await;
    store.insert_agent(&agent("agt_b")).await.unwrap();
    store
        .insert_session(&session("ses_b", "agt_b"))
        .await
        .unwrap();
    let mine = store
        .list_sessions(
            Some("agt_a"),
            None,
            &ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].session_id, "ses_a");

    let mut s = store.get_session("ses_a").await.unwrap().unwrap();
    s.title = Some("new".into());
    s.revision = 2;
    store.save_session(&s, 1).await.unwrap();
    assert!(matches!(
        store.save_session(&s, 1).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut ghost = session("ses_ghost", "agt_a");
    ghost.revision = 2;
    assert!(matches!(
        store.save_session(&ghost, 1).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn appends_number_messages_and_bump_revision(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    for expected in 1..=3u64 {
        let outcome = store
            .append_message(&text_message("ses_a", &format!("m{expected}")))
            .await
            .unwrap();
        assert_eq!(outcome.seq, expected);
        assert_eq!(outcome.session_revision, 1 + expected);
    }
    let s = store.get_session("ses_a").await.unwrap().unwrap();
    assert_eq!((s.last_seq, s.revision), (3, 4));
    assert!(matches!(
        store.append_message(&text_message("ses_none", "x")).await,
        Err(StoreError::NotFound {
            kind: "session",
            ..
        })
    ));
    // A title change saved on a stale revision loses to the appends.
    let mut stale = s.clone();
    stale.revision = 2;
    assert!(matches!(
        store.save_session(&stale, 1).await,
        Err(StoreError::Conflict { .. })
    ));
}

pub async fn concurrent_appends_leave_no_gaps(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_message(&text_message("ses_a", &format!("writer {i}")))
                .await
                .unwrap()
                .seq
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        assert!(
            seqs.insert(task.await.unwrap()),
            "every seq is handed out once"
        );
    }
    assert_eq!(seqs, (1..=64).collect());
    let all = store
        .list_messages(
            "ses_a",
            &HistoryQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stored: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(stored, (1..=64).collect::<Vec<_>>());
    assert_eq!(
        store.get_session("ses_a").await.unwrap().unwrap().last_seq,
        64
    );
}

pub async fn history_reads_by_range_id_and_seq(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        let message = text_message("ses_a", &format!("message number {i}"));
        ids.push(message.id.clone());
        store.append_message(&message).await.unwrap();
    }
    let range = store
        .list_messages(
            "ses_a",
            &HistoryQuery {
                from_seq: Some(3),
                to_seq: Some(5),
                limit: 100,
                descending: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        range.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let newest = store
        .list_messages(
            "ses_a",
            &HistoryQuery {
                limit: 2,
                descending: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![10, 9]
    );
    let by_id = store.get_message("ses_a", &ids[6]).await.unwrap().unwrap();
    assert_eq!(by_id.seq, 7);
    assert_eq!(
        by_id.parts[0].body,
        PartBody::Text {
            text: "message number 7".into()
        }
    );
    assert_eq!(by_id.origin, Origin::Human);
    let by_seq = store.get_message_by_seq("ses_a", 7).await.unwrap().unwrap();
    assert_eq!(by_seq, by_id);
    assert!(
        store
            .get_message("ses_other", &ids[6])
            .await
            .unwrap()
            .is_none()
    );
    let found = store
        .find_messages_containing("ses_a", "NUMBER 1", None, 100)
        .await
        .unwrap();
    assert_eq!(found.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![10, 1]);
}

pub async fn archived_sessions_refuse_appends(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    store
        .append_message(&text_message("ses_a", "before"))
        .await
        .unwrap();
    let mut s = store.get_session("ses_a").await.unwrap().unwrap();
    let expected = s.revision;
    s.status = SessionStatus::Archived;
    s.archived_at = Some(Timestamp::now());
    s.revision = expected + 1;
    store.save_session(&s, expected).await.unwrap();
    assert!(matches!(
        store.append_message(&text_message("ses_a", "after")).await,
        Err(StoreError::SessionArchived(_))
    ));
    let history = store
        .list_messages(
            "ses_a",
            &HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "reads still work and nothing was lost");
}

pub async fn content_round_trips_byte_for_byte(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    let body = "line 1\nline 2 ünïcødé 🚀\n\ttabs and \"quotes\"\n\0nul\n".repeat(100);
    let record = ContentRecord {
        info: ContentInfo {
            content_id: "cnt_1".into(),
            session_id: "ses_a".into(),
            agent_id: "agt_a".into(),
            size_chars: body.chars().count() as u64,
            line_count: 400,
            created_by: "human".into(),
            created_at: Timestamp::now(),
        },
        body,
    };
    store.put_content(&record).await.unwrap();
    assert_eq!(
        store.get_content("cnt_1").await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store.get_content_info("cnt_1").await.unwrap(),
        Some(record.info.clone())
    );
    assert!(matches!(
        store.put_content(&record).await,
        Err(StoreError::Duplicate { .. })
    ));
    assert!(store.get_content("cnt_2").await.unwrap().is_none());
}

pub async fn runtime_log_appends_and_filters(store: Arc<dyn Store>) {
    let entry = |op: &str, session: Option<&str>| LogEntry {
        seq: 0,
        id: new_id("log_"),
        ts: Timestamp::now(),
        caller: "admin".into(),
        op: op.into(),
        agent_id: None,
        session_id: session.map(str::to_owned),
        outcome: "ok".into(),
        duration_us: 42,
        targets: Some(serde_json::json!({"agentId": "agt_x"})),
        data: None,
    };
    store
        .append_log(&[
            entry("agent.create", None),
            entry("session.append", Some("ses_a")),
        ])
        .await
        .unwrap();
    store
        .append_log(&[entry("session.append", Some("ses_b"))])
        .await
        .unwrap();
    let all = store
        .list_log(&LogQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.op.as_str()).collect::<Vec<_>>(),
        vec!["agent.create", "session.append", "session.append"]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        all[0].targets,
        Some(serde_json::json!({"agentId": "agt_x"}))
    );
    let for_b = store
        .list_log(&LogQuery {
            session_id: Some("ses_b".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(for_b.len(), 1);
    let after = store
        .list_log(&LogQuery {
            after_seq: Some(all[1].seq),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
}

pub async fn dispatches_round_trip(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    let mut dispatch = Dispatch {
        dispatch_id: new_id("dsp_"),
        session_id: "ses_a".into(),
        agent_id: "agt_a".into(),
        status: DispatchStatus::Queued,
        priority: 5,
        queued_at: Timestamp::now(),
        started_at: None,
        deadline_at: None,
        ended_at: None,
        turns: 0,
        usage: Usage::default(),
        error: None,
        model: Some("local/m".into()),
        user_message_seq: Some(4),
        final_message_seq: None,
        waiting: None,
        timing: Default::default(),
        node: Some("node_a".into()),
        request: Some(QueuedRequest {
            content: "run this later".into(),
            meta: Some(MessageMeta {
                source: "aos-cron".into(),
                data: serde_json::json!({"job": "nightly"}),
            }),
            origin: Origin::Skill("aos-cron".into()),
            deadline_ms: 60_000,
        }),
    };
    store.insert_dispatch(&dispatch).await.unwrap();
    dispatch.status = DispatchStatus::Done;
    dispatch.turns = 3;
    store.save_dispatch(&dispatch).await.unwrap();
    assert_eq!(
        store.get_dispatch(&dispatch.dispatch_id).await.unwrap(),
        Some(dispatch.clone())
    );
    let done = store
        .list_dispatches(
            Some("ses_a"),
            Some(DispatchStatus::Done),
            &ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(done, vec![dispatch]);
}

pub async fn usage_adds_up_per_session_agent_and_system(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    store
        .insert_session(&session("ses_a2", "agt_a"))
        .await
        .unwrap();
    let one = Usage {
        prompt_tokens: 100,
        completion_tokens: 20,
        total_tokens: 120,
        cost_usd: 0.25,
        turns: 2,
        dispatches: 1,
    };
    store.add_usage("ses_a", &one).await.unwrap();
    store.add_usage("ses_a2", &one).await.unwrap();
    let s = store.get_session("ses_a").await.unwrap().unwrap();
    assert_eq!(s.usage, one);
    assert_eq!(s.revision, 2, "recording usage is a control-block write");
    let a = store.get_agent("agt_a").await.unwrap().unwrap();
    assert_eq!(a.usage.prompt_tokens, 200);
    assert_eq!(a.usage.total_tokens, 240);
    assert!((a.usage.cost_usd - 0.5).abs() < 1e-9);
    assert_eq!(store.system_usage().await.unwrap().dispatches, 2);
    assert!(store.add_usage("ses_none", &one).await.is_err());
}

pub async fn tokens_are_found_by_hash_and_revoked(store: Arc<dyn Store>) {
    let record = TokenRecord {
        info: TokenInfo {
            token_id: "tok_1".into(),
            scope: TokenScope::Session {
                session_id: "ses_a".into(),
                agent_id: Some("agt_a".into()),
            },
            label: Some("ui".into()),
            created_by: "admin".into(),
            created_at: Timestamp::now(),
            expires_at: Some(Timestamp::now().plus_millis(60_000)),
            revoked_at: None,
        },
        secret_hash: "abc123".into(),
    };
    store.insert_token(&record).await.unwrap();
    assert_eq!(
        store.find_token("abc123").await.unwrap(),
        Some(record.clone())
    );
    assert!(store.find_token("other").await.unwrap().is_none());
    assert_eq!(
        store.list_tokens().await.unwrap(),
        vec![record.info.clone()]
    );
    assert!(store.revoke_token("tok_1", Timestamp::now()).await.unwrap());
    assert!(!store.revoke_token("tok_1", Timestamp::now()).await.unwrap());
    assert!(
        store
            .find_token("abc123")
            .await
            .unwrap()
            .unwrap()
            .info
            .revoked_at
            .is_some()
    );
}

pub async fn unsettled_sessions_are_listed_for_recovery(store: Arc<dyn Store>) {
    store.insert_agent(&agent("agt_a")).await.unwrap();
    store
        .insert_session(&session("ses_idle", "agt_a"))
        .await
        .unwrap();
    let mut booting = session("ses_boot", "agt_a");
    booting.status = SessionStatus::Initializing;
    booting.phase = SessionPhase::Bootstrapping;
    store.insert_session(&booting).await.unwrap();
    let mut running = session("ses_run", "agt_a");
    running.phase = SessionPhase::Dispatched;
    store.insert_session(&running).await.unwrap();
    let ids: Vec<_> = store
        .sessions_needing_recovery()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(ids, vec!["ses_boot".to_owned(), "ses_run".to_owned()]);
}

/// Writers of every kind and readers at once; every read after an acknowledged write
/// reflects it, and in the end a read equals what a list (a fresh query) returns.
pub async fn reads_see_every_acknowledged_write_under_concurrency(store: Arc<dyn Store>) {
    with_session(&*store, "agt_a", "ses_a").await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let outcome = store
                    .append_message(&text_message("ses_a", &format!("w{w} {i}")))
                    .await
                    .unwrap();
                let seen = store.get_session("ses_a").await.unwrap().unwrap();
                assert!(
                    seen.last_seq >= outcome.seq,
                    "read after append {} saw {}",
                    outcome.seq,
                    seen.last_seq
                );
                assert!(seen.revision >= outcome.session_revision);
            }
        }));
    }
    for u in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                loop {
                    let mut s = store.get_session("ses_a").await.unwrap().unwrap();
                    let expected = s.revision;
                    s.title = Some(format!("u{u} {i}"));
                    s.revision = expected + 1;
                    match store.save_session(&s, expected).await {
                        Ok(()) => {
                            let seen = store.get_session("ses_a").await.unwrap().unwrap();
                            assert!(seen.revision > expected);
                            assert!(seen.revision > s.revision || seen.title == s.title);
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }));
    }
    {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                let usage = Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    total_tokens: 2,
                    cost_usd: 0.0,
                    turns: 1,
                    dispatches: 0,
                };
                store.add_usage("ses_a", &usage).await.unwrap();
            }
        }));
    }
    for _ in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..200 {
                let seen = store.get_session("ses_a").await.unwrap().unwrap();
                assert!(
                    seen.revision >= last,
                    "revisions never go backwards for a reader"
                );
                last = seen.revision;
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let read = store.get_session("ses_a").await.unwrap().unwrap();
    let listed = store
        .list_sessions(
            Some("agt_a"),
            None,
            &ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(read, listed);
    assert_eq!(read.last_seq, 320);
    assert_eq!(read.usage.turns, 30);
    // 1 (insert) + 320 appends + 40 saves + 30 usage updates.
    assert_eq!(read.revision, 1 + 320 + 40 + 30);
    let agent = store.get_agent("agt_a").await.unwrap().unwrap();
    let listed_agent = store
        .list_agents(
            None,
            &ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(agent, listed_agent);
    assert_eq!(agent.usage.prompt_tokens, 30);
}
