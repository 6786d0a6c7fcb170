//! The compute gate: every model call takes a permit from its provider's gate. A gate
//! with `maxConcurrent` admits that many calls at once; waiting calls are ordered by
//! priority (higher first), first come first served within a priority, and a waiting
//! call gains one priority level per [`AGING_STEP`] so nothing starves. A provider
//! without a limit admits every call at once.
//!
//! This is mechanism; which priority a dispatch has, budgets and rate limits are
//! policy (`aos-sched`, through `compute.before` and dispatch priorities).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Waiting this long raises a call's priority by one.
pub const AGING_STEP: Duration = Duration::from_secs(10);

struct Waiter {
    id: u64,
    priority: i32,
    enqueued: Instant,
    dispatch_id: String,
    wake: oneshot::Sender<()>,
}

impl Waiter {
    fn effective(&self, now: Instant) -> i64 {
        let aged = now.duration_since(self.enqueued).as_millis() / AGING_STEP.as_millis().max(1);
        i64::from(self.priority) + aged as i64
    }
}

#[derive(Default)]
struct Lane {
    limit: Option<u32>,
    in_use: u32,
    waiters: Vec<Waiter>,
}

impl Lane {
    /// Index of the waiter to admit next: highest effective priority, then oldest.
    fn next(&self, now: Instant) -> Option<usize> {
        self.waiters
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                a.effective(now)
                    .cmp(&b.effective(now))
                    .then(b.id.cmp(&a.id))
            })
            .map(|(i, _)| i)
    }
}

/// Gates of every provider.
#[derive(Default)]
pub struct ComputeGate {
    // Locked per acquire/release, never across an `.await`.
    lanes: Mutex<HashMap<String, Lane>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ComputeGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ComputeGate")
    }
}

/// A permit; dropping it admits the next waiter.
pub struct Permit {
    gate: Arc<ComputeGate>,
    provider: String,
    counted: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.counted {
            self.gate.release(&self.provider);
        }
    }
}

/// Cleans up after a caller that stopped waiting (its dispatch was interrupted): the
/// waiter leaves the line, or, when the permit was handed over just then, the permit
/// goes to the next one.
struct Waiting<'a> {
    gate: &'a Arc<ComputeGate>,
    provider: &'a str,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let still_waiting = {
            let mut lanes = self.gate.lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes.get_mut(self.provider).is_some_and(|lane| {
                let before = lane.waiters.len();
                lane.waiters.retain(|w| w.id != self.id);
                lane.waiters.len() != before
            })
        };
        if !still_waiting {
            self.gate.release(self.provider);
        }
    }
}

/// Where a waiting call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1 = next.
    pub position: u32,
    pub waiting: Duration,
}

impl ComputeGate {
    /// Takes a permit for `provider` (limit `limit`), waiting in line when it is full.
    /// `on_wait` is called once with the starting position when the call must wait.
    pub async fn acquire(
        self: &Arc<Self>,
        provider: &str,
        limit: Option<u32>,
        priority: i32,
        dispatch_id: &str,
        on_wait: impl FnOnce(Position),
    ) -> Permit {
        let Some(limit) = limit else {
            return Permit {
                gate: self.clone(),
                provider: provider.to_owned(),
                counted: false,
            };
        };
        let (tx, rx) = oneshot::channel();
        let waiting = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let lane = lanes.entry(provider.to_owned()).or_default();
            lane.limit = Some(limit.max(1));
            if lane.in_use < limit.max(1) && lane.waiters.is_empty() {
                lane.in_use += 1;
                None
            } else {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lane.waiters.push(Waiter {
                    id,
                    priority,
                    enqueued: Instant::now(),
                    dispatch_id: dispatch_id.to_owned(),
                    wake: tx,
                });
                Some((id, lane.waiters.len() as u32))
            }
        };
        if let Some((id, position)) = waiting {
            on_wait(Position {
                position,
                waiting: Duration::ZERO,
            });
            let guard = Waiting {
                gate: self,
                provider,
                id,
            };
            // The sender is used (never dropped) when the permit is handed over.
            let _ = rx.await;
            std::mem::forget(guard);
        }
        Permit {
            gate: self.clone(),
            provider: provider.to_owned(),
            counted: true,
        }
    }

    fn release(&self, provider: &str) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lane) = lanes.get_mut(provider) else {
            return;
        };
        let now = Instant::now();
        // Hand the permit straight to the best waiter still waiting.
        while let Some(index) = lane.next(now) {
            let waiter = lane.waiters.remove(index);
            if waiter.wake.send(()).is_ok() {
                return;
            }
        }
        lane.in_use = lane.in_use.saturating_sub(1);
    }

    /// Where `dispatch_id` waits, if it does.
    pub fn position(&self, dispatch_id: &str) -> Option<(String, Position)> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for (provider, lane) in lanes.iter() {
            let Some(waiter) = lane.waiters.iter().find(|w| w.dispatch_id == dispatch_id) else {
                continue;
            };
            let mine = (waiter.effective(now), std::cmp::Reverse(waiter.id));
            let ahead = lane
                .waiters
                .iter()
                .filter(|w| (w.effective(now), std::cmp::Reverse(w.id)) > mine)
                .count();
            return Some((
                provider.clone(),
                Position {
                    position: ahead as u32 + 1,
                    waiting: now.duration_since(waiter.enqueued),
                },
            ));
        }
        None
    }

    /// Calls in flight and waiting per provider (for status displays).
    pub fn snapshot(&self) -> Vec<(String, u32, usize, Option<u32>)> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = lanes
            .iter()
            .map(|(name, lane)| (name.clone(), lane.in_use, lane.waiters.len(), lane.limit))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[tokio::test(start_paused = true)]
    async fn waiters_go_by_priority_then_arrival_and_age_up() {
        let gate = Arc::new(ComputeGate::default());
        let first = gate.acquire("p", Some(1), 0, "dsp_first", |_| {}).await;
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [("low-a", 0), ("high", 5), ("low-b", 0), ("mid", 2)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire("p", Some(1), priority, name, |_| {}).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.position("high").unwrap().1.position, 1);
        assert_eq!(gate.position("low-b").unwrap().1.position, 4);
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["high", "mid", "low-a", "low-b"]
        );

        // Aging: a low-priority call waiting 30 s passes a new priority-2 call.
        let holder = gate.acquire("p", Some(1), 0, "dsp_holder", |_| {}).await;
        let order = Arc::new(StdMutex::new(Vec::new()));
        let (g, o) = (gate.clone(), order.clone());
        let old = tokio::spawn(async move {
            let _p = g.acquire("p", Some(1), 0, "old", |_| {}).await;
            o.lock().unwrap().push("old");
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(30)).await;
        let (g, o) = (gate.clone(), order.clone());
        let new = tokio::spawn(async move {
            let _p = g.acquire("p", Some(1), 2, "new", |_| {}).await;
            o.lock().unwrap().push("new");
        });
        tokio::task::yield_now().await;
        drop(holder);
        old.await.unwrap();
        new.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["old", "new"]);
    }

    #[tokio::test]
    async fn unlimited_providers_never_wait_and_cancelled_waiters_are_skipped() {
        let gate = Arc::new(ComputeGate::default());
        let _a = gate
            .acquire("free", None, 0, "a", |_| panic!("waited"))
            .await;
        let _b = gate
            .acquire("free", None, 0, "b", |_| panic!("waited"))
            .await;
        let held = gate.acquire("one", Some(1), 0, "held", |_| {}).await;
        let g = gate.clone();
        let cancelled = tokio::spawn(async move {
            let _p = g.acquire("one", Some(1), 9, "gone", |_| {}).await;
        });
        tokio::task::yield_now().await;
        cancelled.abort();
        let _ = cancelled.await;
        let g = gate.clone();
        let next = tokio::spawn(async move {
            let _p = g.acquire("one", Some(1), 0, "next", |_| {}).await;
        });
        tokio::task::yield_now().await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the permit skipped the cancelled waiter")
            .unwrap();
        assert_eq!(gate.snapshot(), vec![("one".to_owned(), 0, 0, Some(1))]);
    }
}
