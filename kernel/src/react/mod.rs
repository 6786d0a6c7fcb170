//! The ReActUnit: dispatches of an agent (an LLM with one tool, bash) on a session.
//!
//! [`Dispatcher`] owns the mechanism around the loop: one running dispatch per session
//! (a lease with a TTL, renewed while it runs) and a FIFO run queue behind it, the
//! stream of each dispatch (`GET /dispatches/{id}/stream`), interrupts, deadlines and
//! shutdown. The loop itself is in [`run`]; providers in [`llm`]; the compute gate in
//! [`gate`]; the bash executor in [`bash`]; context assembly in [`context`] (with the
//! neutral projection of [`projection`] as its fallback).

pub mod bash;
pub mod context;
pub mod gate;
pub mod llm;
pub mod projection;
mod run;
pub mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_sdk::protocol::{
    AgentCb, Dispatch, DispatchStarted, DispatchStatus, ErrorCode, GateWait, Lease, Origin,
    QueuedRequest, SessionCb, SessionPhase, SessionStatus, SystemCb, Timestamp, Usage,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::hooks::{Admission, EventName, HookScope, Transform};
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::syscall::SyscallError;
pub use stream::DispatchStream;

/// Finished dispatch streams kept for late readers.
const KEPT_STREAMS: usize = 512;

/// Why a dispatch was stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Interrupt(String),
    Deadline,
    Shutdown,
    LeaseLost,
}

/// A dispatch waiting in its session's run queue, or about to run.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub dispatch: Dispatch,
    pub content: String,
    /// Stored with the user message as a `meta` part.
    pub meta: Option<aos_sdk::protocol::MessageMeta>,
    pub origin: Origin,
    pub deadline: Duration,
}

/// Stops one dispatch from outside, and remembers why.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stopper {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stopper {
    /// Stops it; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.cancel.cancel();
    }

    /// Why it was stopped, once it was.
    pub fn stopped(&self) -> Option<StopReason> {
        if !self.cancel.is_cancelled() {
            return None;
        }
        Some(
            self.reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or(StopReason::Interrupt("interrupted".into())),
        )
    }

    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }
}

#[derive(Debug)]
struct Active {
    dispatch_id: String,
    stopper: Stopper,
}

#[derive(Default)]
struct Streams {
    by_id: HashMap<String, Arc<DispatchStream>>,
    finished: VecDeque<String>,
}

#[derive(Debug, Default)]
struct SessionRuns {
    running: Option<Active>,
    queue: VecDeque<Work>,
}

/// Dispatches of this kernel.
pub struct Dispatcher {
    // Locked per decision, never across an `.await`.
    sessions: Mutex<HashMap<String, SessionRuns>>,
    streams: Mutex<Streams>,
    pub gate: Arc<gate::ComputeGate>,
    pub(crate) http: reqwest::Client,
    pub(crate) env_provider: Option<llm::EnvProvider>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(env_provider: Option<llm::EnvProvider>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            sessions: Mutex::new(HashMap::new()),
            streams: Mutex::new(Streams::default()),
            gate: Arc::new(gate::ComputeGate::default()),
            http,
            env_provider,
        }
    }

    /// The stream of a dispatch this kernel ran recently.
    pub fn stream(&self, dispatch_id: &str) -> Option<Arc<DispatchStream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .get(dispatch_id)
            .cloned()
    }

    fn new_stream(&self, dispatch_id: &str) -> Arc<DispatchStream> {
        let stream = Arc::new(DispatchStream::default());
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .insert(dispatch_id.to_owned(), stream.clone());
        stream
    }

    /// Remembers that a stream finished, forgetting the oldest finished ones.
    pub(crate) fn finished_stream(&self, dispatch_id: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.finished.push_back(dispatch_id.to_owned());
        while streams.finished.len() > KEPT_STREAMS {
            if let Some(old) = streams.finished.pop_front() {
                streams.by_id.remove(&old);
            }
        }
    }

    /// The running dispatch of a session, if this kernel runs one.
    pub fn running(&self, session_id: &str) -> Option<String> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session_id)
            .and_then(|s| s.running.as_ref().map(|a| a.dispatch_id.clone()))
    }

    /// Adds runtime facts (gate position) to a stored record.
    pub fn enrich(&self, mut dispatch: Dispatch) -> Dispatch {
        if dispatch.status == DispatchStatus::Running
            && let Some((provider, position)) = self.gate.position(&dispatch.dispatch_id)
        {
            dispatch.waiting = Some(GateWait {
                provider,
                position: position.position,
                waiting_ms: position.waiting.as_millis() as u64,
            });
        }
        if dispatch.status == DispatchStatus::Queued {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(runs) = sessions.get(&dispatch.session_id)
                && let Some(index) = runs
                    .queue
                    .iter()
                    .position(|w| w.dispatch.dispatch_id == dispatch.dispatch_id)
            {
                dispatch.waiting = Some(GateWait {
                    provider: "session".to_owned(),
                    position: index as u32 + 1,
                    waiting_ms: Timestamp::now()
                        .as_millis()
                        .saturating_sub(dispatch.queued_at.as_millis())
                        as u64,
                });
            }
        }
        dispatch
    }

    /// Starts a dispatch on an idle session, or queues it behind the running one.
    pub(crate) async fn submit(
        &self,
        kernel: &Arc<Kernel>,
        session: &SessionCb,
        work: Work,
        queue: bool,
    ) -> Result<DispatchStarted, SyscallError> {
        let session_id = session.session_id.clone();
        let dispatch_id = work.dispatch.dispatch_id.clone();
        // Decide under the lock: run now, queue, or refuse.
        let position = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let runs = sessions.entry(session_id.clone()).or_default();
            match &runs.running {
                Some(active) if !queue => {
                    return Err(busy(&session_id, &active.dispatch_id));
                }
                Some(_) => {
                    runs.queue.push_back(work.clone());
                    Some(runs.queue.len() as u32)
                }
                None => {
                    runs.running = Some(Active {
                        dispatch_id: dispatch_id.clone(),
                        stopper: Stopper::default(),
                    });
                    None
                }
            }
        };
        if let Some(position) = position {
            let mut record = work.dispatch.clone();
            record.status = DispatchStatus::Queued;
            record.node = Some(kernel.node_id.clone());
            kernel.store.insert_dispatch(&record).await?;
            self.new_stream(&dispatch_id);
            return Ok(DispatchStarted {
                dispatch_id,
                session_id,
                status: DispatchStatus::Queued,
                user_message_seq: None,
                queue_position: Some(position),
            });
        }
        let lease = match take_lease(kernel, &session_id).await {
            Ok(lease) => lease,
            Err(error) => {
                self.forget(&session_id, &dispatch_id);
                // Another node runs the session: wait for it in the database, or say
                // which dispatch is running, as that node itself would.
                if error.code == ErrorCode::SessionBusy && kernel.cluster.is_some() {
                    return if queue {
                        self.queue_in_database(kernel, work).await
                    } else {
                        Err(busy_elsewhere(kernel, &session_id, error).await)
                    };
                }
                return Err(error);
            }
        };
        // Not queued: `begin` inserts its record rather than updating it.
        let mut work = work;
        work.dispatch.status = DispatchStatus::Running;
        match self
            .begin(kernel, &session.agent_id, &session_id, work)
            .await
        {
            Ok((started, run)) => {
                let kernel_for_task = kernel.clone();
                kernel.tasks.spawn(run::session_loop(
                    kernel_for_task,
                    session.agent_id.clone(),
                    session_id,
                    lease,
                    run,
                ));
                Ok(started)
            }
            Err(error) => {
                release_lease(kernel, &session_id, &lease.id).await;
                self.forget(&session_id, &dispatch_id);
                Err(error)
            }
        }
    }

    /// Queues a dispatch for a session another node runs: the record keeps the
    /// request, and whichever node next holds the lease runs it. The holder looks for
    /// such records after each dispatch and again after releasing the lease; this node
    /// tries to take the lease after writing the record. One of the two always sees
    /// the other's step, so the dispatch cannot be left behind.
    async fn queue_in_database(
        &self,
        kernel: &Arc<Kernel>,
        work: Work,
    ) -> Result<DispatchStarted, SyscallError> {
        let mut record = work.dispatch;
        record.status = DispatchStatus::Queued;
        record.node = None;
        record.request = Some(QueuedRequest {
            content: work.content,
            meta: work.meta,
            origin: work.origin,
            deadline_ms: work.deadline.as_millis() as u64,
        });
        kernel.store.insert_dispatch(&record).await?;
        self.kick(kernel, &record.session_id).await;
        Ok(DispatchStarted {
            dispatch_id: record.dispatch_id,
            session_id: record.session_id,
            status: DispatchStatus::Queued,
            user_message_seq: None,
            queue_position: None,
        })
    }

    /// Runs the dispatches waiting in the database for `session_id`, if there are any
    /// and its lease is free.
    pub(crate) async fn kick(&self, kernel: &Arc<Kernel>, session_id: &str) {
        let Some((lease, work)) = self.take_waiting(kernel, session_id).await else {
            return;
        };
        let agent_id = work.dispatch.agent_id.clone();
        match run::start_queued(kernel, &agent_id, session_id, Some(work)).await {
            Some(run) => {
                kernel.tasks.spawn(run::session_loop(
                    kernel.clone(),
                    agent_id,
                    session_id.to_owned(),
                    lease,
                    run,
                ));
            }
            None => {
                release_lease(kernel, session_id, &lease.id).await;
                self.finish_session(session_id);
            }
        }
    }

    /// Takes the lease of a session with dispatches waiting in the database (this node
    /// running nothing on it) and moves them into its run queue; returns the lease and
    /// the first of them, marked running.
    pub(crate) async fn take_waiting(
        &self,
        kernel: &Arc<Kernel>,
        session_id: &str,
    ) -> Option<(Lease, Work)> {
        kernel.cluster.as_ref()?;
        if waiting_in_database(kernel, session_id).await.is_empty() {
            return None;
        }
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let runs = sessions.entry(session_id.to_owned()).or_default();
            if runs.running.is_some() {
                return None;
            }
            runs.running = Some(Active {
                dispatch_id: TAKING.to_owned(),
                stopper: Stopper::default(),
            });
        }
        let Ok(lease) = take_lease(kernel, session_id).await else {
            self.forget(session_id, TAKING);
            return None;
        };
        self.adopt_waiting(kernel, session_id).await;
        match self.next_queued(session_id) {
            Some(work) => Some((lease, work)),
            None => {
                release_lease(kernel, session_id, &lease.id).await;
                self.forget(session_id, TAKING);
                None
            }
        }
    }

    /// Moves the dispatches waiting in the database for a session whose lease this
    /// node holds into its run queue, oldest first.
    pub(crate) async fn adopt_waiting(&self, kernel: &Arc<Kernel>, session_id: &str) {
        for mut record in waiting_in_database(kernel, session_id).await {
            let Some(request) = record.request.take() else {
                continue;
            };
            record.node = Some(kernel.node_id.clone());
            if let Err(error) = kernel.store.save_dispatch(&record).await {
                tracing::error!(dispatch_id = %record.dispatch_id, %error, "taking a queued dispatch failed");
                continue;
            }
            if self.stream(&record.dispatch_id).is_none() {
                self.new_stream(&record.dispatch_id);
            }
            let work = Work {
                dispatch: record,
                content: request.content,
                meta: request.meta,
                origin: request.origin,
                deadline: Duration::from_millis(request.deadline_ms),
            };
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions
                .entry(session_id.to_owned())
                .or_default()
                .queue
                .push_back(work);
        }
    }

    fn forget(&self, session_id: &str, dispatch_id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runs) = sessions.get_mut(session_id) {
            if runs
                .running
                .as_ref()
                .is_some_and(|a| a.dispatch_id == dispatch_id)
            {
                runs.running = None;
            }
            if runs.running.is_none() && runs.queue.is_empty() {
                sessions.remove(session_id);
            }
        }
    }

    /// Writes the user message and the record of a dispatch about to run (its
    /// session's lease already held); returns what the caller gets back.
    async fn begin(
        &self,
        kernel: &Arc<Kernel>,
        agent_id: &str,
        session_id: &str,
        work: Work,
    ) -> Result<(DispatchStarted, run::Run), SyscallError> {
        let mut record = work.dispatch.clone();
        // A queued dispatch has its record already; one that runs at once does not.
        let queued = record.status == DispatchStatus::Queued;
        record.status = DispatchStatus::Running;
        record.node = Some(kernel.node_id.clone());
        record.request = None;
        let now = Timestamp::now();
        record.started_at = Some(now);
        record.deadline_at = Some(now.plus_millis(work.deadline.as_millis() as i64));
        // The user message and the record are independent writes: they share one
        // group commit.
        let append = crate::syscall::append_message(
            kernel,
            crate::syscall::AppendRequest {
                agent_id,
                session_id,
                role: aos_sdk::protocol::Role::User,
                origin: work.origin.clone(),
                parts: std::iter::once(aos_sdk::protocol::PartBody::Text {
                    text: work.content.clone(),
                })
                .chain(work.meta.clone().map(aos_sdk::protocol::PartBody::Meta))
                .collect(),
                dispatch_id: Some(record.dispatch_id.clone()),
                kernel_parts: false,
            },
        );
        let recorded = async {
            if queued {
                kernel.store.save_dispatch(&record).await
            } else {
                kernel.store.insert_dispatch(&record).await
            }
        };
        let (appended, recorded) = tokio::join!(append, recorded);
        let both = appended
            .and_then(|(message, _)| recorded.map(|()| message).map_err(SyscallError::from));
        let message = match both {
            Ok(message) => message,
            Err(error) => {
                record.status = DispatchStatus::Failed;
                record.ended_at = Some(Timestamp::now());
                record.error = Some(error.clone().into_body());
                let _ = kernel.store.save_dispatch(&record).await;
                return Err(error);
            }
        };
        record.user_message_seq = Some(message.seq);
        let stream = self
            .stream(&record.dispatch_id)
            .unwrap_or_else(|| self.new_stream(&record.dispatch_id));
        stream.push(aos_sdk::protocol::StreamEvent::Message(
            aos_sdk::protocol::StreamMessage {
                seq: message.seq,
                role: aos_sdk::protocol::Role::User,
                text: work.content.clone(),
            },
        ));
        let stopper = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions
                .get(session_id)
                .and_then(|s| s.running.as_ref())
                .filter(|a| a.dispatch_id == record.dispatch_id)
                .map(|a| a.stopper.clone())
                .unwrap_or_default()
        };
        let timer = stopper.clone();
        let deadline = work.deadline;
        kernel.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => timer.stop(StopReason::Deadline),
                () = timer.token().cancelled() => {}
            }
        });
        kernel.emit(
            EventName::SessionUpdated,
            Some(agent_id),
            Some(session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "changed": ["phase"], "phase": "dispatched", "dispatchId": record.dispatch_id}),
        );
        let started = DispatchStarted {
            dispatch_id: record.dispatch_id.clone(),
            session_id: session_id.to_owned(),
            status: DispatchStatus::Running,
            user_message_seq: Some(message.seq),
            queue_position: None,
        };
        Ok((
            started,
            run::Run {
                record,
                stream,
                stopper,
                user_message: message,
            },
        ))
    }

    /// After a dispatch ended: the next queued one of the session, marked running.
    /// With none queued, the ended one stays marked until [`Dispatcher::finish_session`],
    /// so nothing starts while the lease is still held.
    pub(crate) fn next_queued(&self, session_id: &str) -> Option<Work> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let runs = sessions.get_mut(session_id)?;
        let next = runs.queue.pop_front()?;
        runs.running = Some(Active {
            dispatch_id: next.dispatch.dispatch_id.clone(),
            stopper: Stopper::default(),
        });
        Some(next)
    }

    /// After the lease was released: forgets the session, unless work was queued
    /// meanwhile (returned, marked running, to run under a new lease).
    pub(crate) fn finish_session(&self, session_id: &str) -> Option<Work> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let runs = sessions.get_mut(session_id)?;
        match runs.queue.pop_front() {
            Some(next) => {
                runs.running = Some(Active {
                    dispatch_id: next.dispatch.dispatch_id.clone(),
                    stopper: Stopper::default(),
                });
                Some(next)
            }
            None => {
                sessions.remove(session_id);
                None
            }
        }
    }

    /// Stops the running dispatch of a session. Returns its id, if one ran.
    pub fn interrupt(&self, session_id: &str, reason: StopReason) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let active = sessions.get(session_id)?.running.as_ref()?;
        active.stopper.stop(reason);
        Some(active.dispatch_id.clone())
    }

    /// Kernel shutdown: interrupts every running dispatch, fails the queued ones, and
    /// waits (bounded) until they have written their ends.
    pub async fn shutdown(&self, limit: Duration) {
        let queued: Vec<Work> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let mut queued = Vec::new();
            for runs in sessions.values_mut() {
                queued.extend(runs.queue.drain(..));
                if let Some(active) = &runs.running {
                    active.stopper.stop(StopReason::Shutdown);
                }
            }
            queued
        };
        drop(queued);
        let deadline = tokio::time::Instant::now() + limit;
        while !self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("dispatches did not end within the drain timeout");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The running-slot marker while this node takes a lease for waiting dispatches.
const TAKING: &str = "(taking the lease)";

/// Dispatches of a session waiting in the database for a node, oldest first.
async fn waiting_in_database(kernel: &Kernel, session_id: &str) -> Vec<Dispatch> {
    let page = kernel
        .store
        .list_dispatches(
            Some(session_id),
            Some(DispatchStatus::Queued),
            &crate::store::ListQuery {
                after: None,
                limit: 500,
            },
        )
        .await;
    match page {
        Ok(page) => {
            let mut waiting: Vec<Dispatch> =
                page.into_iter().filter(|d| d.request.is_some()).collect();
            waiting
                .sort_by(|a, b| (a.queued_at, &a.dispatch_id).cmp(&(b.queued_at, &b.dispatch_id)));
            waiting
        }
        Err(error) => {
            tracing::error!(%session_id, %error, "reading queued dispatches failed");
            Vec::new()
        }
    }
}

/// `session.busy` for a session another node runs, naming its running dispatch.
async fn busy_elsewhere(kernel: &Kernel, session_id: &str, error: SyscallError) -> SyscallError {
    let running = kernel
        .store
        .list_dispatches(
            Some(session_id),
            Some(DispatchStatus::Running),
            &crate::store::ListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .ok()
        .and_then(|page| page.into_iter().last());
    match running {
        Some(dispatch) => {
            let node = dispatch.node.unwrap_or_default();
            SyscallError::new(
                ErrorCode::SessionBusy,
                format!(
                    "session `{session_id}` is running dispatch `{}` on node {node}; pass `ifBusy: queue` to run after it, or interrupt it",
                    dispatch.dispatch_id
                ),
            )
            .with_details(json!({"sessionId": session_id, "dispatchId": dispatch.dispatch_id, "node": node}))
        }
        None => error,
    }
}

fn busy(session_id: &str, dispatch_id: &str) -> SyscallError {
    SyscallError::new(
        ErrorCode::SessionBusy,
        format!(
            "session `{session_id}` is running dispatch `{dispatch_id}`; pass `ifBusy: queue` to run after it, or interrupt it"
        ),
    )
    .with_details(json!({"sessionId": session_id, "dispatchId": dispatch_id}))
}

/// Takes the session's lease (compare-and-set on its revision): the session must be
/// ready and idle, or its lease expired.
pub async fn take_lease(kernel: &Kernel, session_id: &str) -> Result<Lease, SyscallError> {
    let lease = Lease {
        id: new_id("lse_"),
        holder: kernel.node_id.clone(),
        expires_at: Timestamp::now().plus_millis(kernel.config.lease_ttl.as_millis() as i64),
    };
    let now = Timestamp::now();
    kernel
        .update_session(session_id, |s| {
            match s.status {
                SessionStatus::Ready => {}
                SessionStatus::Archived => {
                    return Err(SyscallError::new(
                        ErrorCode::SessionArchived,
                        format!("session `{session_id}` is archived"),
                    ));
                }
                SessionStatus::Initializing => {
                    return Err(SyscallError::new(
                        ErrorCode::SessionNotReady,
                        format!("session `{session_id}` is still bootstrapping"),
                    ));
                }
            }
            // A live lease is someone's running dispatch; an expired one is stale.
            if let Some(held) = s.lease.as_ref().filter(|l| l.expires_at > now) {
                let holder = held.holder.clone();
                return Err(SyscallError::new(
                    ErrorCode::SessionBusy,
                    format!(
                        "session `{session_id}` is leased by {holder} (phase {:?})",
                        s.phase
                    ),
                ));
            }
            s.lease = Some(lease.clone());
            s.phase = SessionPhase::Dispatched;
            Ok(())
        })
        .await?;
    Ok(lease)
}

/// Extends a held lease; fails when it is no longer this dispatch's.
pub async fn renew_lease(
    kernel: &Kernel,
    session_id: &str,
    lease_id: &str,
) -> Result<(), SyscallError> {
    let expires = Timestamp::now().plus_millis(kernel.config.lease_ttl.as_millis() as i64);
    kernel
        .update_session(session_id, |s| match &mut s.lease {
            Some(lease) if lease.id == lease_id => {
                lease.expires_at = expires;
                Ok(())
            }
            _ => Err(SyscallError::new(
                ErrorCode::LeaseExpired,
                format!("the lease on session `{session_id}` was taken over"),
            )),
        })
        .await
        .map(|_| ())
}

/// Gives the lease back and returns the session to idle (if the lease is still ours).
pub async fn release_lease(kernel: &Kernel, session_id: &str, lease_id: &str) {
    let result = kernel
        .update_session(session_id, |s| {
            if s.lease.as_ref().is_some_and(|l| l.id == lease_id) {
                s.lease = None;
                if s.phase == SessionPhase::Dispatched {
                    s.phase = SessionPhase::Idle;
                }
            }
            Ok(())
        })
        .await;
    if let Err(error) = result {
        tracing::error!(session_id, %error, "releasing the lease failed");
    }
}

/// A new dispatch record for `session`.
pub(crate) fn new_record(session: &SessionCb, priority: i32) -> Dispatch {
    Dispatch {
        dispatch_id: new_id("dsp_"),
        session_id: session.session_id.clone(),
        agent_id: session.agent_id.clone(),
        status: DispatchStatus::Queued,
        priority,
        queued_at: Timestamp::now(),
        started_at: None,
        deadline_at: None,
        ended_at: None,
        turns: 0,
        usage: Usage::default(),
        error: None,
        model: None,
        user_message_seq: None,
        final_message_seq: None,
        waiting: None,
        timing: Default::default(),
        node: None,
        request: None,
    }
}

/// The caller a dispatch's bash commands act as: the session itself.
pub(crate) fn session_caller(agent_id: &str, session_id: &str) -> Caller {
    Caller {
        scope: crate::auth::Scope::Session {
            agent_id: agent_id.to_owned(),
            session_id: session_id.to_owned(),
        },
        token_id: None,
    }
}

/// The model a session's calls use unless `compute.model.resolve` says otherwise: the
/// session's, the agent's, the environment's provider, the system default.
pub(crate) fn default_model(
    kernel: &Kernel,
    system: &SystemCb,
    agent: &AgentCb,
    session: &SessionCb,
) -> Option<String> {
    session
        .model
        .clone()
        .or_else(|| agent.model.clone())
        .or_else(|| {
            kernel
                .dispatcher
                .env_provider
                .as_ref()
                .map(|e| format!("{}/{}", llm::ENV_PROVIDER, e.model))
        })
        .or_else(|| system.default_model.clone())
}

/// `compute.model.resolve`, else `default`.
pub(crate) async fn resolve_model(
    kernel: &Kernel,
    agent_id: &str,
    session_id: &str,
    dispatch_id: Option<&str>,
    default: Option<&str>,
    request_type: &str,
) -> Result<String, SyscallError> {
    let resolved = kernel
        .hooks
        .transform(Transform::ComputeModelResolve, HookScope::session(agent_id, session_id), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": dispatch_id, "requestType": request_type}),
                json!({"model": default}),
            )
        })
        .await
        .and_then(|out| out.get("model").and_then(Value::as_str).map(str::to_owned));
    resolved.or_else(|| default.map(str::to_owned)).ok_or_else(|| {
        SyscallError::new(
            ErrorCode::ProviderUnavailable,
            "no model is chosen: set `defaultModel` (`provider/model`) in aoscb.json, an agent's or session's `model`, or AOS_LLM_MODEL with AOS_LLM_BASE_URL (see docs/deployment.md)",
        )
    })
}

/// The provider and model name of a `provider/model` reference.
pub(crate) fn find_provider<'a>(
    providers: &'a [llm::Provider],
    model_ref: &'a str,
) -> Result<(&'a llm::Provider, &'a str), SyscallError> {
    let Some((provider_name, model)) = llm::split_model(model_ref) else {
        return Err(SyscallError::new(
            ErrorCode::ProviderUnavailable,
            format!("model `{model_ref}` must be written `provider/model` (e.g. `local/qwen2.5`)"),
        ));
    };
    let Some(provider) = providers.iter().find(|p| p.name == provider_name) else {
        return Err(SyscallError::new(
            ErrorCode::ProviderUnavailable,
            format!(
                "no provider `{provider_name}` is configured (model `{model_ref}`); configured: {}",
                providers
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    Ok((provider, model))
}

/// One model call without tools (a compaction summary): the session's model, through
/// its provider's compute gate at `priority`. Returns the text and its usage.
pub(crate) async fn complete(
    kernel: &Arc<Kernel>,
    session: &SessionCb,
    dispatch_id: Option<&str>,
    priority: i32,
    messages: Vec<Value>,
    cancel: &CancellationToken,
) -> Result<(String, Usage), SyscallError> {
    let system = kernel.system().await?;
    let agent = kernel.get_agent(&session.agent_id).await?;
    let providers = llm::providers(&system, kernel.dispatcher.env_provider.as_ref());
    let default = default_model(kernel, &system, &agent, session);
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    let model_ref = resolve_model(
        kernel,
        agent_id,
        session_id,
        dispatch_id,
        default.as_deref(),
        "compaction",
    )
    .await?;
    let (provider, model) = find_provider(&providers, &model_ref)?;
    let body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let waiter = dispatch_id.map_or_else(|| new_id("cmp_"), str::to_owned);
    let call = ModelCall {
        agent_id,
        session_id,
        dispatch_id: &waiter,
        provider: &provider.name,
        model: &model_ref,
        request_type: "compaction",
        priority,
        deadline_at: None,
        last_seq: session.last_seq,
        turn: 0,
    };
    let Some(priority) = admit_model_call(kernel, &call, cancel).await? else {
        return Err(SyscallError::new(
            ErrorCode::Timeout,
            "the compaction was interrupted while its model call was held",
        ));
    };
    let permit = tokio::select! {
        permit = kernel.dispatcher.gate.acquire(&provider.name, provider.max_concurrent, priority, &waiter, |_| {}) => permit,
        () = cancel.cancelled() => return Err(SyscallError::new(ErrorCode::Timeout, "the compaction was interrupted while waiting for the model")),
    };
    let mut ignore_deltas = |_: &str| {};
    let reply = tokio::select! {
        reply = llm::call(&kernel.dispatcher.http, provider, &body, &mut ignore_deltas) => reply,
        () = cancel.cancelled() => return Err(SyscallError::new(ErrorCode::Timeout, "the compaction was interrupted during the model call")),
    };
    drop(permit);
    let reply = reply.map_err(|e| {
        SyscallError::new(
            ErrorCode::ProviderUnavailable,
            format!("the summary call failed: {e}"),
        )
    })?;
    let usage = Usage {
        prompt_tokens: reply.prompt_tokens,
        completion_tokens: reply.completion_tokens,
        total_tokens: reply.prompt_tokens + reply.completion_tokens,
        cost_usd: provider.cost(model, reply.prompt_tokens, reply.completion_tokens),
        turns: 0,
        dispatches: 0,
    };
    kernel.emit(
        EventName::ComputeAfter,
        Some(agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": waiter, "model": model_ref, "provider": provider.name, "requestType": "compaction", "usage": usage, "turn": 0, "toolCalls": 0, "retries": reply.retries}),
    );
    Ok((reply.text.trim().to_owned(), usage))
}

/// Longest a `compute.before` handler may hold a call in one answer.
const MAX_HOLD: Duration = Duration::from_secs(60);

/// One model call about to be admitted.
pub(crate) struct ModelCall<'a> {
    pub agent_id: &'a str,
    pub session_id: &'a str,
    /// The dispatch (or, for a compaction outside one, the call's own id).
    pub dispatch_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    /// `turn` or `compaction`.
    pub request_type: &'a str,
    /// The dispatch's priority: what the gate uses unless a handler says otherwise.
    pub priority: i32,
    pub deadline_at: Option<Timestamp>,
    pub last_seq: u64,
    pub turn: u32,
}

/// `compute.before`: handlers admit or refuse the call, may set the priority it waits
/// at in the compute gate (`output.priority`), and may hold it (`output.retryAfterMs`:
/// the kernel waits that long, announcing `compute.held`, and asks again). Returns the
/// priority to wait at, or `None` when `cancel` fired while the call was held.
pub(crate) async fn admit_model_call(
    kernel: &Kernel,
    call: &ModelCall<'_>,
    cancel: &CancellationToken,
) -> Result<Option<i32>, SyscallError> {
    let scope = HookScope::session(call.agent_id, call.session_id);
    let mut held_ms: u64 = 0;
    loop {
        let (output, reasons) = kernel
            .hooks
            .admit_audited(Admission::ComputeBefore, scope, || {
                (
                    json!({
                        "agentId": call.agent_id,
                        "sessionId": call.session_id,
                        "dispatchId": call.dispatch_id,
                        "lastSeq": call.last_seq,
                        "model": call.model,
                        "provider": call.provider,
                        "requestType": call.request_type,
                        "priority": call.priority,
                        "deadline": call.deadline_at,
                        "turn": call.turn,
                        "heldMs": held_ms,
                    }),
                    json!({}),
                )
            })
            .await?;
        let output = output.unwrap_or(Value::Null);
        let priority = output
            .get("priority")
            .and_then(Value::as_i64)
            .map_or(call.priority, |p| {
                p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
            });
        let Some(hold) = output
            .get("retryAfterMs")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms).min(MAX_HOLD))
        else {
            return Ok(Some(priority));
        };
        let reason = reasons
            .iter()
            .map(|r| format!("{}: {}", r.skill, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::debug!(dispatch_id = call.dispatch_id, hold_ms = hold.as_millis() as u64, %reason, "compute.before holds the model call");
        kernel.emit(
            EventName::ComputeHeld,
            Some(call.agent_id),
            Some(call.session_id),
            json!({
                "agentId": call.agent_id,
                "sessionId": call.session_id,
                "dispatchId": call.dispatch_id,
                "provider": call.provider,
                "retryAfterMs": hold.as_millis() as u64,
                "heldMs": held_ms,
                "reason": reason,
            }),
        );
        tokio::select! {
            () = tokio::time::sleep(hold) => held_ms += hold.as_millis() as u64,
            () = cancel.cancelled() => return Ok(None),
        }
    }
}
