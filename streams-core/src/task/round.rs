//! Rounds of cuts, for exactly-once processing: every task of a worker cuts in the same
//! round, and the round is one Kafka transaction holding every record the tasks sent since
//! the last one and every task's source offsets (Kafka Streams' `exactly_once_v2`, where a
//! stream thread commits all its tasks together). A task that has made its cut waits until
//! the round is committed (or aborted) before it processes another record, so nothing it
//! sends later can slip into this transaction without its offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The rounds of one worker (or test driver), and the tasks that take part in them.
#[derive(Default)]
pub(crate) struct Rounds {
    /// The last round asked for (0: none yet).
    requested: AtomicU64,
    /// The last round finished (committed or aborted).
    done: AtomicU64,
    /// Each member (a running task) with the last round it delivered its cut for.
    members: Mutex<HashMap<u64, u64>>,
    next_member: AtomicU64,
    /// Wakes idle tasks when a round is asked for.
    wake: tokio::sync::Notify,
    /// Set when a round was aborted: every task stops, and the worker starts them again from
    /// the last committed state.
    aborted: AtomicBool,
    /// Tasks cut only when told to (the test driver's barriers), not as soon as a round is
    /// asked for: the driver's runs stay deterministic.
    at_barriers: bool,
    /// The next round must abort (partitions were lost: what their tasks sent is in it).
    abort_next: AtomicBool,
    /// The last round's outcome is not known: the tasks start again from what the group has
    /// committed, not from what this worker believes it committed.
    unknown: AtomicBool,
    /// Told when a round aborts (the worker's poll thread starts the tasks again).
    on_abort: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// A task's part in a round: which member, which round, and where to say how it ended.
pub(crate) struct Ticket {
    pub member: u64,
    pub round: u64,
    /// Told too, for what the task's agent sends meanwhile (see [`Gate`]); first, and
    /// dropped first when the ticket is dropped unanswered, before the task hears of it.
    pub gate: GateHandle,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl Ticket {
    /// A ticket of a test's cut, for no task's gate.
    #[cfg(test)]
    pub(crate) fn without_gate(
        member: u64,
        round: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) -> Self {
        Self {
            member,
            round,
            gate: GateHandle::default(),
            done,
        }
    }

    /// Says how the round ended, to the task and to its gate.
    pub(crate) fn answer(mut self, outcome: Result<(), String>) {
        self.gate.answer(outcome.is_ok());
        let _ = self.done.send(outcome);
    }
}

/// A ticket's hold on its task's [`Gate`]: answered once. Dropped unanswered (its cut
/// dropped, the committer gone), the round holds nothing of the task, which ends as after
/// an abort.
#[derive(Default)]
pub(crate) struct GateHandle(Option<Arc<Gate>>);

impl GateHandle {
    pub(crate) fn new(gate: &Arc<Gate>) -> Self {
        Self(Some(Arc::clone(gate)))
    }

    fn answer(&mut self, committed: bool) {
        if let Some(gate) = self.0.take() {
            gate.open(committed);
        }
    }
}

impl Drop for GateHandle {
    fn drop(&mut self) {
        self.answer(false);
    }
}

/// Exactly-once: whether a task's cut is under way, from the moment it takes its table
/// changes to its round's outcome. Its agent's sends wait while it is (its code may run
/// then, awaiting its stream in `select!`): sent at once, they would go into the cut's
/// transaction, without the offsets of their input and without the table changes made
/// beside them (those go into the next cut).
#[derive(Default)]
pub(crate) struct Gate {
    /// [`Gate::OPEN`], [`Gate::WAITING`] or [`Gate::ABORTED`].
    state: AtomicU8,
    wake: tokio::sync::Notify,
}

impl Gate {
    const OPEN: u8 = 0;
    const WAITING: u8 = 1;
    const ABORTED: u8 = 2;

    /// The task's cut takes its table changes for its round: sends wait for the round's
    /// answer. A gate whose round did not commit stays shut.
    pub(crate) fn close(&self) {
        let _ = self
            .state
            .compare_exchange(Self::OPEN, Self::WAITING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The round's answer: committed, or not (the task ends; what it sends is refused).
    /// Only a waiting gate changes: an aborted one stays so.
    fn open(&self, committed: bool) {
        let to = if committed { Self::OPEN } else { Self::ABORTED };
        if self
            .state
            .compare_exchange(Self::WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_waiters();
        }
    }

    /// Whether a send must ask [`Gate::pass`] (cheap: read for every send): the gate
    /// waits, or its round did not commit.
    pub(crate) fn closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != Self::OPEN
    }

    /// Waits until the gate opens; `false` when the round did not commit.
    pub(crate) async fn pass(&self) -> bool {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                Self::WAITING => notified.await,
                state => return state == Self::OPEN,
            }
        }
    }
}

impl Rounds {
    /// Rounds whose tasks cut only at the test driver's barriers.
    pub(crate) fn at_barriers() -> Self {
        Self {
            at_barriers: true,
            ..Self::default()
        }
    }

    /// Whether a task cuts as soon as a round is asked for (a worker's), or only when told
    /// to (the test driver's).
    pub(crate) fn interrupts(&self) -> bool {
        !self.at_barriers
    }

    fn members(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task joins; it owes a cut for every round from the one open now.
    pub(crate) fn join(&self) -> (u64, u64) {
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let done = self.done.load(Ordering::Acquire);
        self.members().insert(member, done);
        (member, done)
    }

    /// A task ends: no round waits for it any more.
    pub(crate) fn leave(&self, member: u64) {
        self.members().remove(&member);
    }

    /// The round to cut for: the open one, or a new one (which wakes every idle task).
    pub(crate) fn request(&self) -> u64 {
        loop {
            let done = self.done.load(Ordering::Acquire);
            let requested = self.requested.load(Ordering::Acquire);
            if requested > done {
                return requested;
            }
            if self
                .requested
                .compare_exchange(requested, requested + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.wake.notify_waiters();
                return requested + 1;
            }
        }
    }

    /// The last round asked for.
    pub(crate) fn requested(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// Resolves when a round is asked for (create it before checking [`Rounds::requested`],
    /// so that no request falls between the check and the wait).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// A member delivered its cut for `round`.
    pub(crate) fn delivered(&self, member: u64, round: u64) {
        if let Some(last) = self.members().get_mut(&member) {
            *last = (*last).max(round);
        }
    }

    /// Whether every member has delivered its cut for `round`.
    pub(crate) fn complete(&self, round: u64) -> bool {
        self.members().values().all(|last| *last >= round)
    }

    /// The round is over (committed, or aborted when `aborted`).
    pub(crate) fn finish(&self, round: u64, aborted: bool) {
        if aborted {
            self.aborted.store(true, Ordering::Release);
        }
        self.done.fetch_max(round, Ordering::AcqRel);
        if aborted {
            if let Some(tell) = self.on_abort.get() {
                tell();
            }
        }
    }

    /// Calls `tell` after each round that aborts (once set, for good).
    pub(crate) fn on_abort(&self, tell: impl Fn() + Send + Sync + 'static) {
        if self.on_abort.set(Box::new(tell)).is_err() {
            tracing::debug!("rounds: who to tell of an abort was set already");
        }
    }

    /// The open round (or the next) aborts instead of committing.
    pub(crate) fn request_abort(&self) {
        self.abort_next.store(true, Ordering::Release);
    }

    /// Whether the round being committed must abort instead (see [`Rounds::request_abort`]).
    pub(crate) fn take_abort_request(&self) -> bool {
        self.abort_next.load(Ordering::Acquire) && self.abort_next.swap(false, Ordering::AcqRel)
    }

    /// The round being committed ended without knowing whether it committed.
    pub(crate) fn outcome_unknown(&self) {
        self.unknown.store(true, Ordering::Release);
    }

    /// Whether a round's outcome was unknown since the last call.
    pub(crate) fn take_unknown(&self) -> bool {
        self.unknown.load(Ordering::Acquire) && self.unknown.swap(false, Ordering::AcqRel)
    }

    /// Whether a round was aborted since the last call (the tasks must start again from the
    /// last committed state).
    pub(crate) fn take_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire) && self.aborted.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(gate: &Arc<Gate>) -> (Ticket, tokio::sync::oneshot::Receiver<Result<(), String>>) {
        let (done, answer) = tokio::sync::oneshot::channel();
        let ticket = Ticket {
            member: 0,
            round: 1,
            gate: GateHandle::new(gate),
            done,
        };
        (ticket, answer)
    }

    /// A task's gate is closed while its cut waits for the round, opens with the ticket's
    /// answer (the waiting send goes on), and stays shut when the round did not commit or
    /// the ticket was dropped unanswered.
    #[tokio::test]
    async fn a_gate_opens_with_its_tickets_answer() {
        let gate = Arc::new(Gate::default());
        assert!(!gate.closed());
        gate.close();
        let (committed, answer) = ticket(&gate);
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.pass().await })
        };
        tokio::task::yield_now().await;
        assert!(gate.closed());
        committed.answer(Ok(()));
        assert!(waiting.await.expect("waiter"), "the round committed");
        assert_eq!(answer.await.expect("answer"), Ok(()));
        assert!(!gate.closed());
        // The next cut's round aborts.
        gate.close();
        let (aborted, _answer) = ticket(&gate);
        aborted.answer(Err("aborted".into()));
        assert!(!gate.pass().await);
        assert!(gate.closed(), "an aborted gate stays shut");
        gate.close();
        let passed = tokio::time::timeout(std::time::Duration::from_secs(1), gate.pass()).await;
        assert_eq!(passed, Ok(false), "a cut after the abort does not make it wait again");
        // A ticket dropped unanswered.
        let gate = Arc::new(Gate::default());
        gate.close();
        drop(ticket(&gate));
        assert!(!gate.pass().await);
    }

    #[test]
    fn a_round_completes_when_every_member_has_cut() {
        let rounds = Rounds::default();
        let (a, _) = rounds.join();
        let (b, _) = rounds.join();
        let round = rounds.request();
        assert_eq!(round, 1);
        assert_eq!(rounds.request(), 1, "the open round");
        rounds.delivered(a, round);
        assert!(!rounds.complete(round));
        rounds.leave(b);
        assert!(rounds.complete(round), "a member that left is not waited for");
        rounds.finish(round, false);
        let (c, seen) = rounds.join();
        assert_eq!(seen, 1);
        assert_eq!(rounds.request(), 2);
        assert!(!rounds.complete(2));
        rounds.delivered(c, 2);
        rounds.delivered(a, 2);
        assert!(rounds.complete(2));
        rounds.finish(2, true);
        assert!(rounds.take_aborted());
        assert!(!rounds.take_aborted());
    }
}
