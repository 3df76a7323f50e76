//! A task's input: the records of partition *p* of each of its source topics, as the worker
//! (or the test driver) hands them over, with the cuts made between them — every commit
//! interval, when the table cache is full, on revoke and on shutdown — and the dead-letter
//! topic for records that cannot be processed.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::commit::{Ack, Cut, TableWrite};
use super::round::{GateHandle, Rounds, Ticket};
use super::sink::{Headers, OnError, OutRecord, SinkError};
use super::TaskContext;
use crate::message::{Message, Spent};
use crate::Origin;

/// The longest a task waits for records of one source that the broker is known to have
/// (see `StreamCore::held_back`).
pub(crate) const HOLD_BACK_LIMIT: Duration = Duration::from_secs(5);

/// How long a quiet task (see `StreamCore::quiet`) sleeps when no input comes: input wakes
/// it at once, so this only bounds the sleep.
const QUIET_WAKE: Duration = Duration::from_secs(60);

/// What the worker puts into a task's queue.
pub(crate) enum Input {
    /// Records of one source (by its index in the task's sources), in order.
    Records(usize, Vec<Message>),
    /// Where a source starts, decided once the task's stores are restored: its records
    /// before it were read from an earlier position and are skipped (their effects are in
    /// the stores already). The source counts as processed up to it: the task's first cut
    /// commits it, with whatever the restore left to write again.
    StartAt(usize, i64),
    /// Finish: make a last cut, acknowledge it once committed, and end the stream.
    Finish(Ack),
    /// Make a cut once the records handed over before this are processed, and acknowledge
    /// it once committed; the stream goes on.
    Flush(Ack),
    /// Acknowledge once the records handed over before this are processed, without a cut
    /// (the test driver's `process`).
    Processed(Ack),
    /// Cut every `interval` from now on (the test driver's `commit_interval`).
    Interval(Duration),
}

/// Where a record failed: which of the app's handlers decides what becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Its key, value or event time does not decode.
    Deserialization,
    /// What the task does with it failed.
    Processing,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Deserialization => "deserialization",
            Stage::Processing => "processing",
        }
    }
}

/// Work a task does at each cut before its table changes are written: a pipeline sends
/// the changes of its tables downstream (`KTable::to_stream`).
pub(crate) trait CutHook: Send {
    /// Runs before the cut takes the tables' changes. Records the sink could not take yet
    /// go to `backlog`; the cut waits until they are handed over.
    fn before_cut(&mut self, ctx: &Arc<TaskContext>, backlog: &mut Vec<OutRecord>);

    /// When (the task's wall time, ms) wall-clock punctuation is due next, if any is
    /// scheduled: the task cuts then, idle or not, and the cut runs it.
    fn wall_clock_due(&self, ctx: &Arc<TaskContext>) -> Option<i64> {
        let _ = ctx;
        None
    }

    /// Runs the wall-clock punctuation that is due, between records: what it sends goes to
    /// `backlog`; what it changes in tables waits for the next cut.
    fn wall_clock(&mut self, ctx: &Arc<TaskContext>, backlog: &mut Vec<OutRecord>) {
        let _ = (ctx, backlog);
    }
}

/// One source of a task.
struct Source {
    topic: Arc<str>,
    queue: VecDeque<Message>,
    /// The event times of the queued records, by the topic's extractor (kept only for a
    /// topic with one, in a task with several sources, where they decide the order).
    times: Option<VecDeque<i64>>,
    /// Records before this offset are skipped (see [`Input::StartAt`]).
    floor: i64,
    /// The last offset processed.
    processed: Option<i64>,
}

/// The state of a task's input that survives restarts of an agent.
pub(crate) struct StreamCore {
    pub(crate) ctx: Arc<TaskContext>,
    rx: mpsc::Receiver<Input>,
    sources: Vec<Source>,
    /// The record being processed, with its source.
    current: Option<(usize, Message)>,
    /// [`crate::error::outages`] when the current record began.
    outages: u64,
    last_cut: Vec<(Arc<str>, i64)>,
    next_cut: Instant,
    /// The last cut found nothing to take (no record since the one before, no round): an
    /// idle task then sleeps until input comes instead of waking every commit interval.
    quiet: bool,
    commit_interval: Duration,
    since_clock: u32,
    /// Since when the task holds back: it has records of some sources, and another source
    /// with none queued has records on the broker (see [`StreamCore::held_back`]).
    holding_since: Option<Instant>,
    /// Flushes that wait for the records queued before them (see [`Input::Flush`]).
    flushes: Vec<Ack>,
    /// Acknowledgements that wait for the records queued before them (see
    /// [`Input::Processed`]).
    processed: Vec<Ack>,
    /// Exactly-once: the worker's rounds, this task's membership, and the last round it cut
    /// for (see `round.rs`). Every cut is then a round's.
    rounds: Option<(Arc<Rounds>, u64)>,
    round_seen: u64,
    /// Exactly-once: the committer was told that this task stopped after a failure.
    committer_told: bool,
    pub(crate) ended: bool,
    hook: Option<Box<dyn CutHook>>,
    /// Wall-clock punctuation changed tables since the last cut: the next cut is made even
    /// without input, so that the changes are committed.
    punctuated: bool,
    /// Fetched records done with, and where they go to be freed (see [`Spent`]).
    spent: Vec<Message>,
    returns: Option<Arc<Spent>>,
    /// Unit tests: runs after the queue was drained and before the task chooses, where a
    /// hand-over may come.
    #[cfg(test)]
    between: Option<Box<dyn FnMut() + Send>>,
}

/// Done records handed back to the poll thread at a time.
const SPENT_BATCH: usize = 256;

impl StreamCore {
    pub(crate) fn new(ctx: Arc<TaskContext>, rx: mpsc::Receiver<Input>, commit_interval: Duration) -> Self {
        let several = ctx.sources.len() > 1;
        let sources = ctx
            .sources
            .iter()
            .enumerate()
            .map(|(index, topic)| Source {
                topic: Arc::clone(topic),
                queue: VecDeque::new(),
                times: (several && ctx.source_times.get(index).is_some_and(Option::is_some)).then(VecDeque::new),
                floor: i64::MIN,
                processed: None,
            })
            .collect();
        Self {
            ctx,
            rx,
            sources,
            current: None,
            outages: 0,
            last_cut: Vec::new(),
            next_cut: Instant::now() + commit_interval,
            quiet: false,
            commit_interval,
            since_clock: 0,
            holding_since: None,
            flushes: Vec::new(),
            processed: Vec::new(),
            rounds: None,
            round_seen: 0,
            committer_told: false,
            ended: false,
            hook: None,
            punctuated: false,
            spent: Vec::new(),
            returns: None,
            #[cfg(test)]
            between: None,
        }
    }

    /// Fetched records this task is done with go back to `returns` to be freed.
    pub(crate) fn with_returns(mut self, returns: Arc<Spent>) -> Self {
        self.returns = Some(returns);
        self
    }

    /// Hands the done records back.
    fn give_back(&mut self) {
        if let Some(returns) = &self.returns {
            if !self.spent.is_empty() {
                returns.give(&mut self.spent);
                self.spent.reserve(SPENT_BATCH);
            }
        }
    }

    /// Exactly-once: the task takes part in the worker's rounds; it cuts when a round is
    /// asked for (never on its own timer), and waits for the round's transaction after.
    pub(crate) fn with_rounds(mut self, rounds: Arc<Rounds>) -> Self {
        let (member, seen) = rounds.join();
        self.rounds = Some((rounds, member));
        self.round_seen = seen;
        // The worker's committer asks for rounds at the commit interval.
        self.commit_interval = Duration::from_secs(365 * 24 * 3600);
        self.next_cut = Instant::now() + self.commit_interval;
        self
    }

    /// Whether a round was asked for that this task has not cut for yet.
    fn round_due(&self) -> bool {
        self.rounds
            .as_ref()
            .is_some_and(|(rounds, _)| rounds.interrupts() && rounds.requested() > self.round_seen)
    }

    /// Whether the task makes a cut of its own when its table cache is full (not under
    /// exactly-once in the test driver, which cuts at its barriers only).
    fn cuts_early(&self) -> bool {
        self.rounds.as_ref().is_none_or(|(rounds, _)| rounds.interrupts())
    }

    /// Work to do at each cut (see [`CutHook`]).
    pub(crate) fn set_hook(&mut self, hook: Box<dyn CutHook>) {
        self.hook = Some(hook);
    }

    /// Where the record at `offset` of source `source` came from.
    pub(crate) fn origin(&self, source: usize, offset: i64) -> Origin {
        Origin {
            topic: self
                .sources
                .get(source)
                .map_or_else(|| Arc::from("?"), |s| Arc::clone(&s.topic)),
            partition: self.ctx.partition,
            offset,
        }
    }

    /// The record being processed, with its source.
    pub(crate) fn current(&self) -> Option<(usize, &Message)> {
        self.current.as_ref().map(|(source, message)| (*source, message))
    }

    /// The task starts processing `message` of `source`.
    pub(crate) fn begin(&mut self, source: usize, message: Message) {
        self.ctx.record_started(source, &message);
        self.current = Some((source, message));
        self.outages = crate::error::outages();
    }

    /// Whether something outside the records (the schema registry) was unavailable since the
    /// current record began ([`crate::error::outages`]).
    pub(crate) fn outage_since_begin(&self) -> bool {
        crate::error::outages() != self.outages
    }

    /// [`StreamCore::begin`] for a record that happened at `time` (its timestamp, or the
    /// time its topic's extractor took from its value).
    pub(crate) fn begin_at(&mut self, source: usize, message: Message, time: Option<i64>) {
        if let Some(time) = time {
            self.ctx.observe_time(time);
        }
        self.begin(source, message);
    }

    /// The record the task was given last is done.
    fn finish_current(&mut self) {
        if let Some((source, message)) = self.current.take() {
            if let Some(source) = self.sources.get_mut(source) {
                source.processed = Some(message.offset());
            }
            if self.returns.is_some() && message.is_fetched() {
                self.spent.push(message);
                if self.spent.len() >= SPENT_BATCH {
                    self.give_back();
                }
            }
        }
    }

    /// The source whose next record comes first: the earliest timestamp among the sources
    /// with records queued (a single source needs no choice).
    fn pick(&self) -> Option<usize> {
        if let [only] = self.sources.as_slice() {
            return (!only.queue.is_empty()).then_some(0);
        }
        let mut best: Option<(usize, i64)> = None;
        for (index, source) in self.sources.iter().enumerate() {
            if let Some(message) = source.queue.front() {
                let time = match source.times.as_ref().and_then(|t| t.front()) {
                    Some(time) => *time,
                    None => message.timestamp().unwrap_or(i64::MIN),
                };
                if best.is_none_or(|(_, earliest)| time < earliest) {
                    best = Some((index, time));
                }
            }
        }
        best.map(|(index, _)| index)
    }

    /// Takes the next record of source `source` out of its queue.
    fn pop(&mut self, source: usize) -> Option<Message> {
        let source = self.sources.get_mut(source)?;
        if let Some(times) = &mut source.times {
            times.pop_front();
        }
        source.queue.pop_front()
    }

    /// Whether the task waits before taking its next record: a task with several sources
    /// takes the record with the earliest time next, so it does not run ahead while a source
    /// with nothing queued has records on the broker that it was not given yet (Kafka
    /// Streams' KIP-695, `max.task.idle.ms` = 0). It waits at most [`HOLD_BACK_LIMIT`], in
    /// case the broker's end offset is stale. `unread` has a bit per source (the first 64)
    /// that has records on the broker not handed over, read before the queue was last drained
    /// (see [`TaskContext::unread_flags`]).
    fn held_back(&mut self, unread: u64) -> bool {
        let waiting_for = self.sources.iter().enumerate().any(|(index, source)| {
            source.queue.is_empty()
                && match index {
                    0..64 => unread & (1 << index) != 0,
                    _ => self.ctx.has_unread(index),
                }
        });
        let something_queued = self.sources.iter().any(|s| !s.queue.is_empty());
        if self.sources.len() < 2 || !waiting_for || !something_queued {
            self.holding_since = None;
            return false;
        }
        let since = *self.holding_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= HOLD_BACK_LIMIT {
            tracing::debug!(
                task = &*self.ctx.name,
                partition = self.ctx.partition,
                "waited {HOLD_BACK_LIMIT:?} for records the broker has of another source; going on without them"
            );
            return false;
        }
        true
    }

    /// The next record to process and its source. The common case (records are queued and
    /// no clock check is due) is synchronous; everything else runs in a boxed future, so the
    /// future a task awaits for every record stays small (awaiting moves it, byte by byte).
    pub(crate) async fn next_message(&mut self) -> Option<(usize, Message)> {
        if let Some(found) = self.next_fast() {
            return Some(found);
        }
        loop {
            let (source, message) = Box::pin(self.next_message_slow()).await?;
            if message.offset() >= self.sources[source].floor {
                return Some((source, message));
            }
        }
    }

    /// [`StreamCore::next_message`]'s common case, synchronous: the record the task was
    /// given last is done, and the next is queued with nothing else due. `None`: the slow
    /// path decides.
    fn next_fast(&mut self) -> Option<(usize, Message)> {
        self.finish_current();
        let fast = !self.ended
            && !self.ctx.metrics.failed()
            && self.since_clock + 1 < 256
            && !self.ctx.cut_wanted.load(Ordering::Relaxed)
            && !self.round_due();
        if fast {
            if let [only] = self.sources.as_mut_slice() {
                if let Some(message) = only.queue.pop_front() {
                    self.since_clock += 1;
                    if message.offset() >= only.floor {
                        return Some((0, message));
                    }
                }
            } else if self.sources.iter().all(|s| !s.queue.is_empty()) {
                if let Some(source) = self.pick() {
                    if let Some(message) = self.pop(source) {
                        self.since_clock += 1;
                        if message.offset() >= self.sources[source].floor {
                            return Some((source, message));
                        }
                    }
                }
            }
        }
        None
    }

    /// A record taken from its queue and never begun goes back to the queue's front: work a
    /// dropped call to an agent's `next` left took it after the agent ended (see
    /// [`Home::take_core`]).
    fn put_back(&mut self, source: usize, message: Message) {
        let time_of = self.ctx.source_times.get(source).cloned().flatten();
        let Some(queued) = self.sources.get_mut(source) else {
            return;
        };
        if let Some(times) = &mut queued.times {
            let time = message
                .payload()
                .and_then(|bytes| time_of.as_ref().and_then(|time_of| time_of(bytes)))
                .or(message.timestamp())
                .unwrap_or(i64::MIN);
            times.push_front(time);
        }
        queued.queue.push_front(message);
    }

    async fn next_message_slow(&mut self) -> Option<(usize, Message)> {
        loop {
            if self.ended {
                if self.ctx.metrics.failed() {
                    // Ended at a record under `OnError::Fail` (or after a failure): closed
                    // as below, however the task ended.
                    self.stop_taking();
                }
                return None;
            }
            if self.ctx.metrics.failed() {
                // The worker failed (here or in another task): nothing from now on is
                // committed, so nothing more is taken.
                self.stop_taking();
                return None;
            }
            if self.ctx.finishing.load(Ordering::Relaxed) {
                self.finish_now().await;
                return None;
            }
            if (self.ctx.cut_wanted.swap(false, Ordering::Relaxed) && self.cuts_early()) || self.round_due() {
                self.cut(None).await;
                continue;
            }
            // Reading the clock for every record costs more than the record: look at it every
            // 256 records, and whenever the queue is empty.
            self.since_clock += 1;
            if self.since_clock >= 256 {
                self.since_clock = 0;
                self.ctx.report();
                if self.wall_clock_due() {
                    self.punctuate_wall_clock().await;
                    if self.ended {
                        return None;
                    }
                }
                if Instant::now() >= self.next_cut {
                    self.cut(None).await;
                    if self.ended {
                        return None;
                    }
                }
            }
            // With several sources, take what else has arrived before choosing among them.
            // Which sources have records on the broker not handed over is read first: a
            // source said to have none had them all put into the queue before it was said,
            // so the queue holds them now (read after, a hand-over between the two would
            // go unseen, and a later record of another source would be taken first).
            let mut unread = None;
            if self.sources.len() > 1 && self.sources.iter().any(|s| s.queue.is_empty()) {
                unread = Some(self.ctx.unread_flags());
                while let Ok(input) = self.rx.try_recv() {
                    if self.take(input).await {
                        // A flush or a finish: records handed over behind it wait for it,
                        // so no snapshot is exact here. The flags as they are now stand (the
                        // worker sends nothing behind a finish, the driver nothing behind a
                        // flush until it is answered).
                        unread = None;
                        break;
                    }
                }
                if self.ended {
                    return None;
                }
            }
            #[cfg(test)]
            if let Some(between) = &mut self.between {
                between();
            }
            if !self.processed.is_empty() && self.sources.iter().all(|s| s.queue.is_empty()) {
                for ack in self.processed.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            if !self.flushes.is_empty() && self.sources.iter().all(|s| s.queue.is_empty()) {
                let acks = std::mem::take(&mut self.flushes);
                self.cut_with(acks).await;
                continue;
            }
            let holding = self.held_back(unread.unwrap_or_else(|| self.ctx.unread_flags()));
            if !holding {
                if let Some(source) = self.pick() {
                    if let Some(message) = self.pop(source) {
                        return Some((source, message));
                    }
                }
            }
            let input = match self.rx.try_recv() {
                Ok(input) => Some(input),
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.give_back();
                    self.since_clock = 0;
                    self.ctx.report();
                    if self.wall_clock_due() {
                        self.punctuate_wall_clock().await;
                        if self.ended {
                            return None;
                        }
                    }
                    if Instant::now() >= self.next_cut {
                        self.cut(None).await;
                        if self.ended {
                            return None;
                        }
                    }
                    let wake = match (holding, self.holding_since) {
                        (true, Some(since)) => self.next_cut.min(since + HOLD_BACK_LIMIT),
                        // Nothing to cut until input comes (an idle worker's tasks sleep).
                        _ if self.quiet => Instant::now() + QUIET_WAKE,
                        _ => self.next_cut,
                    };
                    let wake = match self.wall_clock_wake() {
                        Some(due) => wake.min(due),
                        None => wake,
                    };
                    let ctx = Arc::clone(&self.ctx);
                    let rounds = self
                        .rounds
                        .as_ref()
                        .filter(|(rounds, _)| rounds.interrupts())
                        .map(|(rounds, _)| Arc::clone(rounds));
                    let seen = self.round_seen;
                    // Exactly-once: a round asked for wakes an idle task (listening before
                    // looking, so that no request is missed in between).
                    let round = async {
                        match &rounds {
                            Some(rounds) => {
                                let notified = rounds.notified();
                                tokio::pin!(notified);
                                notified.as_mut().enable();
                                if rounds.requested() > seen {
                                    return;
                                }
                                notified.await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        input = self.rx.recv() => input,
                        // The agent has ended while a dropped call to its `next` waited here:
                        // nothing is in progress, so the core goes back (see `Home`).
                        () = ctx.released() => return None,
                        _ = round => continue,
                        _ = ctx.unread_cleared(), if holding => continue,
                        _ = tokio::time::sleep_until(wake) => continue,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            match input {
                Some(input) => {
                    self.quiet = false;
                    self.take(input).await;
                }
                None => self.ended = true,
            }
        }
    }

    /// Takes one input from the queue; `true` when it was a cut or the end (the caller
    /// looks at its state again).
    async fn take(&mut self, input: Input) -> bool {
        match input {
            Input::Records(index, messages) => {
                // Input: the task is not quiet any more, however the records were taken (a
                // task with several sources also takes them while it chooses its next
                // record). Left quiet, it would sleep a minute once they are processed,
                // holding back their commit point and what its listeners send.
                self.quiet = false;
                if let Some(source) = self.sources.get_mut(index) {
                    if let (Some(times), Some(Some(time_of))) = (&mut source.times, self.ctx.source_times.get(index)) {
                        // A record whose value does not decode has no time of its own: its
                        // timestamp stands in (it goes to the dead-letter topic).
                        times.extend(messages.iter().map(|message| {
                            message
                                .payload()
                                .and_then(|bytes| time_of(bytes))
                                .or(message.timestamp())
                                .unwrap_or(i64::MIN)
                        }));
                    }
                    if source.queue.is_empty() {
                        source.queue = VecDeque::from(messages);
                    } else {
                        source.queue.extend(messages);
                    }
                }
                false
            }
            Input::StartAt(source, start) => {
                if let Some(source) = self.sources.get_mut(source) {
                    source.floor = start;
                    if source.processed.is_none() && start > 0 {
                        source.processed = Some(start - 1);
                    }
                }
                false
            }
            Input::Finish(ack) => {
                let mut acks = std::mem::take(&mut self.flushes);
                acks.push(ack);
                self.cut_with(acks).await;
                self.ended = true;
                true
            }
            Input::Interval(interval) => {
                if self.rounds.is_none() {
                    self.commit_interval = interval;
                    self.next_cut = Instant::now() + interval;
                }
                false
            }
            Input::Processed(ack) => {
                if self.sources.iter().all(|s| s.queue.is_empty()) {
                    let _ = ack.send(Ok(()));
                } else {
                    self.processed.push(ack);
                }
                false
            }
            Input::Flush(ack) => {
                if self.sources.iter().all(|s| s.queue.is_empty()) {
                    let mut acks = std::mem::take(&mut self.flushes);
                    acks.push(ack);
                    self.cut_with(acks).await;
                } else {
                    // Records queued before it come first.
                    self.flushes.push(ack);
                }
                true
            }
        }
    }

    /// Finishes at this record boundary: records not started yet are dropped (the next
    /// owner reads them again), the last cut is made and acknowledged, the stream ends.
    async fn finish_now(&mut self) {
        for source in &mut self.sources {
            source.queue.clear();
            if let Some(times) = &mut source.times {
                times.clear();
            }
        }
        for ack in self.processed.drain(..) {
            let _ = ack.send(Ok(()));
        }
        if !self.flushes.is_empty() {
            let acks = std::mem::take(&mut self.flushes);
            self.cut_with(acks).await;
        }
        loop {
            let input = match self.rx.try_recv() {
                Ok(input) => Some(input),
                Err(mpsc::error::TryRecvError::Empty) => self.rx.recv().await,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            match input {
                Some(Input::Records(..) | Input::StartAt(..) | Input::Interval(..)) => {}
                Some(Input::Processed(ack)) => {
                    let _ = ack.send(Ok(()));
                }
                Some(Input::Flush(ack)) => self.cut(Some(ack)).await,
                Some(Input::Finish(ack)) => {
                    self.cut(Some(ack)).await;
                    break;
                }
                None => break,
            }
        }
        self.ended = true;
    }

    /// The current record could not be processed: it goes to the dead-letter topic with
    /// `error` as it is.
    pub(crate) async fn reject_current(&mut self, stage: Stage, error: &str) {
        if let Some((source, message)) = self.current.take() {
            self.reject(source, message, stage, error).await;
        }
    }

    /// Whether the task holds a record it took and has not finished.
    pub(crate) fn has_current(&self) -> bool {
        self.current.is_some()
    }

    /// The task failed on the current record.
    pub(crate) async fn fail_current(&mut self, error: &str) {
        if let Some((source, message)) = self.current.take() {
            let error = format!("agent `{}` failed: {error}", self.ctx.name);
            self.reject(source, message, Stage::Processing, &error).await;
        }
    }

    /// A record that cannot be processed goes where the app says (`App::on_deserialization_error`,
    /// `App::on_processing_error`): to the dead-letter topic or nowhere, and then it counts as
    /// processed; or the worker stops before it, and the task takes no more records (what it
    /// did since its last cut is not committed: the partition's next owner meets the record
    /// again).
    pub(crate) async fn reject(&mut self, source: usize, message: Message, stage: Stage, error: &str) {
        let handler = match stage {
            Stage::Deserialization => self.ctx.on_deserialization_error,
            Stage::Processing => self.ctx.on_processing_error,
        };
        match handler {
            OnError::DeadLetter => self.dead_letter(source, message, stage, error).await,
            OnError::Continue => {
                let origin = self.origin(source, message.offset());
                tracing::warn!(
                    task = &*self.ctx.name,
                    "cannot process record {origin} ({}): {error}; skipped",
                    stage.name()
                );
                self.ctx.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                if let Some(source) = self.sources.get_mut(source) {
                    source.processed = Some(origin.offset);
                }
            }
            OnError::Fail => {
                let origin = self.origin(source, message.offset());
                self.ctx.metrics.fail(format!(
                    "task `{}` cannot process record {origin} ({}): {error}; the worker stops, as \
                     App::on_{}_error says",
                    self.ctx.name,
                    stage.name(),
                    stage.name()
                ));
                self.current = None;
                self.ended = true;
            }
        }
    }

    /// The current record cannot be read for want of something outside it (the schema
    /// registry, [`crate::DecodeError::unavailable`]): not the record's fault, so it goes to
    /// no dead-letter topic; the worker stops before it, whatever the app's error handlers
    /// say, and the record is read again when the worker (or the partition's next owner)
    /// starts.
    pub(crate) fn halt_current(&mut self, error: &str) {
        if let Some((source, message)) = self.current.take() {
            self.halt(source, &message, error);
        }
    }

    /// [`StreamCore::halt_current`] of a record taken but not begun.
    pub(crate) fn halt(&mut self, source: usize, message: &Message, error: &str) {
        let origin = self.origin(source, message.offset());
        self.ctx.metrics.fail(format!(
            "task `{}` cannot process record {origin}: {error}; the worker stops before it (the record is \
             not at fault and is processed again at the next start)",
            self.ctx.name
        ));
        self.current = None;
        self.ended = true;
    }

    /// Copies a record that cannot be processed to the dead-letter topic, unchanged, with
    /// headers naming its origin, the stage that failed and the error; it then counts as
    /// processed.
    async fn dead_letter(&mut self, source: usize, message: Message, stage: Stage, error: &str) {
        let origin = self.origin(source, message.offset());
        let dlq = Arc::clone(&self.ctx.dead_letter_topic);
        tracing::warn!(
            task = &*self.ctx.name,
            "cannot process record {origin}: {error}; copied to dead-letter topic {dlq}"
        );
        let mut headers = message.headers();
        headers.push(("streams.dlq.topic".into(), origin.topic.as_bytes().to_vec()));
        headers.push((
            "streams.dlq.partition".into(),
            origin.partition.to_string().into_bytes(),
        ));
        headers.push(("streams.dlq.offset".into(), origin.offset.to_string().into_bytes()));
        headers.push(("streams.dlq.agent".into(), self.ctx.name.as_bytes().to_vec()));
        headers.push(("streams.dlq.stage".into(), stage.name().as_bytes().to_vec()));
        headers.push(("streams.dlq.error".into(), error.as_bytes().to_vec()));
        let record = OutRecord {
            topic: dlq,
            partition: None,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: headers.into(),
            timestamp: message.timestamp(),
            changelog: false,
        };
        self.ctx.emit(record).await;
        self.ctx.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Some(source) = self.sources.get_mut(source) {
            source.processed = Some(origin.offset);
        }
    }

    /// Whether wall-clock punctuation is due on this machine's clock (under the test
    /// driver's clock it runs at the driver's cuts only, deterministically).
    fn wall_clock_due(&self) -> bool {
        let Some(hook) = &self.hook else { return false };
        self.ctx.on_machine_clock()
            && hook
                .wall_clock_due(&self.ctx)
                .is_some_and(|due| self.ctx.wall_time() >= due)
    }

    /// Runs the wall-clock punctuation that is due, between records (Kafka Streams runs it
    /// between records too, and commits nothing for it): what it sends goes out now, what
    /// it changes is committed by the next cut, which is made even without input.
    async fn punctuate_wall_clock(&mut self) {
        let Some(hook) = &mut self.hook else { return };
        let mut backlog = Vec::new();
        let ctx = Arc::clone(&self.ctx);
        let from = ctx.next_change_pass();
        hook.wall_clock(&ctx, &mut backlog);
        if ctx.metrics.failed() {
            // It stopped the worker (`OnError::Fail`): what it left to send is not sent.
            self.stop_taking();
            return;
        }
        for record in backlog {
            if let Err(error) = ctx.send_when_room(record).await {
                ctx.metrics.fail(error);
            }
        }
        if ctx.changed_since_pass(from) {
            // Tables changed: the next commit point commits them, input or not.
            self.punctuated = true;
            self.quiet = false;
        }
    }

    /// When the task must wake for wall-clock punctuation (on this machine's clock only: the
    /// test driver punctuates at its runs, deterministically).
    fn wall_clock_wake(&self) -> Option<Instant> {
        if !self.ctx.on_machine_clock() {
            return None;
        }
        let due = self.hook.as_ref()?.wall_clock_due(&self.ctx)?;
        let wait = u64::try_from(due.saturating_sub(self.ctx.wall_time())).unwrap_or(0);
        Some(Instant::now() + Duration::from_millis(wait))
    }

    /// A commit point for this partition: the changelog records of every table change since
    /// the last cut are handed to the producer, and the store writes and the source offsets
    /// go to the committer, which makes them durable in the order of ARCHITECTURE.md §1.
    pub(crate) async fn cut(&mut self, ack: Option<Ack>) {
        self.cut_with(ack.into_iter().collect()).await;
    }

    /// The worker failed: no cut is made from now on, those waiting for one hear why, and
    /// the task takes nothing more.
    fn refuse_cut(&mut self, acks: Vec<Ack>) {
        let error = self.not_committed();
        for ack in acks {
            let _ = ack.send(Err(error.clone()));
        }
        self.stop_taking();
    }

    fn not_committed(&self) -> String {
        format!(
            "not committed: the worker failed ({})",
            self.ctx.metrics.fatal().unwrap_or_default()
        )
    }

    /// The worker failed: the task takes nothing more. Its queue is closed, so that whoever
    /// hands records over is not held by a full queue (an agent may go on after its stream
    /// ends), and whatever waits in it for an answer hears why there is none (one sent
    /// while it closes is answered when the core is dropped, by its sender's error). Safe
    /// to call again.
    fn stop_taking(&mut self) {
        self.ended = true;
        // Exactly-once: no round waits for its cut (an agent may hold its stream a while),
        // and the committer aborts the open transaction now (once is enough).
        if let Some((rounds, member)) = &self.rounds {
            self.ctx.abort();
            rounds.leave(*member);
            if !self.committer_told {
                self.committer_told = true;
                self.ctx.wake_committer();
            }
        }
        self.rx.close();
        let error = self.not_committed();
        let waiting = std::mem::take(&mut self.flushes)
            .into_iter()
            .chain(self.processed.drain(..));
        for ack in waiting {
            let _ = ack.send(Err(error.clone()));
        }
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Finish(ack) | Input::Flush(ack) | Input::Processed(ack) = input {
                let _ = ack.send(Err(error.clone()));
            }
        }
    }

    /// [`StreamCore::cut`] for everyone in `acks`.
    pub(crate) async fn cut_with(&mut self, acks: Vec<Ack>) {
        if self.ctx.metrics.failed() {
            self.refuse_cut(acks);
            return;
        }
        if self.ctx.is_aborted() {
            // Exactly-once: the task's round aborted (a revoke's last cut may follow one): its
            // positions are of input processed again from the last commit, never committed.
            for ack in acks {
                let _ = ack.send(Err(
                    "not committed: the task's transaction was aborted; the partition starts again from its \
                     last committed state"
                        .into(),
                ));
            }
            self.ended = true;
            return;
        }
        self.ctx.report();
        self.next_cut = Instant::now() + self.commit_interval;
        // A cache over budget drops its clean entries first, once the stores hold them
        // (see `tables.rs`: a key the cache does not hold is read from the store).
        if let Some(through) = self.ctx.cut_to_evict() {
            if !self.ctx.written.wait_for(through).await {
                tracing::debug!(
                    task = &*self.ctx.name,
                    partition = self.ctx.partition,
                    "an earlier cut was not written; the cache keeps its entries"
                );
            }
        }
        self.ctx.evict_written();
        let positions: Vec<(Arc<str>, i64)> = self
            .sources
            .iter()
            .filter_map(|s| Some((Arc::clone(&s.topic), s.processed?)))
            .collect();
        if positions == self.last_cut && acks.is_empty() && self.rounds.is_none() && !self.punctuated {
            // Nothing since the last cut; more cuts find nothing either until input comes,
            // unless clean entries wait to leave an over-budget cache, or records wait in the
            // queues (a task holding back for another source's records, KIP-695: once it
            // goes on, what it processes needs its commit point, not a minute's sleep).
            self.quiet = !self.ctx.over_budget() && self.sources.iter().all(|s| s.queue.is_empty());
            return;
        }
        self.quiet = false;
        self.punctuated = false;
        let ctx = Arc::clone(&self.ctx);
        // TTL tables: the times of the changes, and what is past its time deleted, before
        // the hook, which sends those deletions on too; then the times of what it changed.
        let keep_ttls = |expire: bool| {
            if let Err(error) = ctx.keep_ttls(expire) {
                ctx.metrics
                    .fail(format!("task `{}`: table entries' times: {error}", ctx.name));
            }
        };
        if !positions.is_empty() {
            keep_ttls(true);
        }
        // The hook sees the changes this cut takes: none are taken before anything was
        // processed (restated entries wait for the first real cut).
        if let (Some(hook), false) = (&mut self.hook, positions.is_empty()) {
            let mut backlog = Vec::new();
            hook.before_cut(&ctx, &mut backlog);
            if ctx.metrics.failed() {
                // It stopped the worker (`OnError::Fail`): the cut is not made (see below),
                // and what it left to send is not sent.
                self.refuse_cut(acks);
                return;
            }
            for record in backlog {
                if let Err(error) = ctx.send_when_room(record).await {
                    ctx.metrics.fail(error);
                }
            }
            keep_ttls(false);
        }
        if ctx.metrics.failed() {
            // The worker failed on the way (the tables' times, a send, another task): the cut
            // is not made. Its changelog records would carry positions the group may have
            // committed already (a cut made for a punctuation, without input), and a restore
            // would take their changes as committed.
            self.refuse_cut(acks);
            return;
        }
        let mut writes: Vec<TableWrite> = Vec::new();
        let seq = ctx.next_cut();
        let stream_time = Some(ctx.stream_time()).filter(|t| *t != super::NO_TIME);
        let clocks = ctx.clocks();
        // Exactly-once: the cut goes to its round; what the agent sends from here on waits
        // for the round's answer (see `round::Gate`). Closed before the changes are taken:
        // what the agent changes meanwhile (its code may run, awaiting its stream in
        // `select!`) goes into the next cut, and so must what it sends. Nothing from here to
        // the ticket waits on this task's stream: changelog records that find the producer's
        // queue full wait for room in a task of their own, which makes the ticket (a send
        // waiting at the gate would keep this stream from being polled).
        let gate = self.rounds.is_some().then(|| {
            ctx.gate.close();
            GateHandle::new(&ctx.gate)
        });
        let mut waiting: Vec<OutRecord> = Vec::new();
        if !positions.is_empty() {
            // Every store of the partition gets the cut's positions, changed or not: a
            // store's positions say how far its state reflects the input.
            let headers: Headers =
                crate::changelog::cut_headers(&positions, ctx.partition, stream_time, &clocks).into();
            for (changelog, store, changes) in ctx.take_changes(seq) {
                let mut entries = Vec::with_capacity(changes.len());
                for (key, value, timestamp) in changes {
                    let record = OutRecord {
                        topic: changelog.clone(),
                        partition: Some(ctx.partition),
                        key: Some(key),
                        value,
                        headers: headers.clone(),
                        timestamp: Some(timestamp),
                        changelog: true,
                    };
                    // The key and value go on to the store: the sink copies them (librdkafka
                    // does anyway).
                    if gate.is_none() {
                        ctx.emit_copy(&record).await;
                    } else if !waiting.is_empty() {
                        // Behind one that waits for room: in order.
                        waiting.push(record.clone());
                    } else {
                        match ctx.sink.enqueue_copy(&record) {
                            Ok(()) => {}
                            Err(SinkError::Full(back)) => waiting.push(back),
                            Err(SinkError::Failed(error)) => ctx.metrics.fail(error),
                        }
                    }
                    entries.extend(record.key.map(|key| (key, record.value)));
                }
                writes.push(TableWrite {
                    changelog,
                    store,
                    entries,
                });
            }
        }
        let cut = Cut {
            partition: ctx.partition,
            positions: positions.clone(),
            stream_time,
            clocks,
            writes,
            acks,
            ticket: None,
            seq,
            written: Arc::clone(&ctx.written),
            stored: false,
            settled: false,
        };
        self.last_cut = positions;
        let (Some((rounds, member)), Some(gate)) = (&self.rounds, gate) else {
            ctx.commit(cut);
            return;
        };
        // Exactly-once: the cut is this task's part of a round, and nothing more is processed
        // (or sent) until the round's transaction is committed.
        let (done, finished) = tokio::sync::oneshot::channel();
        let to_round = {
            let (ctx, rounds, member) = (Arc::clone(&ctx), Arc::clone(rounds), *member);
            move |mut cut: Cut| {
                let round = rounds.request();
                cut.ticket = Some(Ticket {
                    member,
                    round,
                    gate,
                    done,
                });
                ctx.commit(cut);
                round
            }
        };
        if waiting.is_empty() {
            self.round_seen = to_round(cut);
        } else {
            let (made, ticket) = tokio::sync::oneshot::channel();
            // The task's part: dropped (its partition lost, revoked past its timeout, the
            // driver's crash), the rest of its cut is not made, as when it waited itself.
            // (An aborted task is dropped some time after `abort()` returns: what the work
            // sends meanwhile goes into a round that aborts, as those who drop a task ask
            // for with `Rounds::request_abort` first.)
            let here = Here::new();
            let (ctx, there) = (Arc::clone(&ctx), here.there());
            tokio::spawn(async move {
                let mut full = super::sink::FullQueue::new();
                // Each step while the task is there and the worker has not failed (then
                // nothing commits: the cut is not made).
                let going = || !ctx.metrics.failed();
                for mut record in waiting {
                    loop {
                        let tried = there.while_here(|| going().then(|| ctx.sink.enqueue(record)));
                        match tried.flatten() {
                            None => return,
                            Some(Ok(())) => break,
                            Some(Err(SinkError::Full(back))) => record = back,
                            Some(Err(SinkError::Failed(error))) => {
                                ctx.metrics.fail(error);
                                return;
                            }
                        }
                        full.wait().await;
                    }
                }
                if let Some(Some(round)) = there.while_here(|| going().then(|| to_round(cut))) {
                    let _ = made.send(round);
                }
            });
            // Dropped unmade (the worker failed, the runtime shuts down), the cut's ticket
            // drops too: the round is answered below as not committed.
            if let Ok(round) = ticket.await {
                self.round_seen = round;
            }
            drop(here);
        }
        // Records done with go back now: the round may take a while.
        self.give_back();
        match finished.await {
            Ok(Ok(())) => ctx.set_committed(self.last_cut.clone()),
            Ok(Err(error)) => {
                // Aborted: what this task did since the last round is gone with the
                // transaction; it stops, and the worker starts it again from the committed state.
                tracing::warn!(
                    task = &*ctx.name,
                    partition = ctx.partition,
                    "transaction aborted ({error}); the partition starts again from its last committed state"
                );
                ctx.abort();
                self.ended = true;
            }
            Err(_) => {
                // The committer is gone, or the cut was never made (the worker failed while
                // its records waited for room): the round never commits.
                ctx.abort();
                self.ended = true;
            }
        }
    }
}

/// A cut's task, while it waits for the work it handed to a task of its own (see
/// `StreamCore::cut_with`): dropped, the work stops; it waits for a step under way.
struct Here(Arc<Mutex<bool>>);

impl Here {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(true)))
    }

    /// The working side.
    fn there(&self) -> There {
        There(Arc::clone(&self.0))
    }
}

impl Drop for Here {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// The working side of a [`Here`].
struct There(Arc<Mutex<bool>>);

impl There {
    /// Runs `step` if the cut's task is still there (and keeps it from going meanwhile).
    fn while_here<T>(&self, step: impl FnOnce() -> T) -> Option<T> {
        let here = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (*here).then(step)
    }
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        if let Some((rounds, member)) = &self.rounds {
            rounds.leave(*member);
        }
        self.give_back();
    }
}

/// The core's work that a call to an agent's `next` left unfinished when it was dropped
/// (the agent awaits its stream in `select!` beside a timer): a cut waiting for room for
/// its changelog records or for its round, a dead letter waiting for room, input awaited.
/// It owns the core, and it is finished, not dropped: by the agent's next call, which
/// returns what it found, or when the agent ends.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (Box<StreamCore>, Option<(usize, Message)>)> + Send>>;

/// Where a task's core waits between runs of its agent: the core, or the work a dropped
/// call left, which holds it.
pub(crate) struct Home {
    core: Option<Box<StreamCore>>,
    pending: Option<Pending>,
    ctx: Arc<TaskContext>,
}

impl Home {
    pub(crate) fn new(core: Box<StreamCore>) -> Arc<Mutex<Home>> {
        let ctx = Arc::clone(&core.ctx);
        Arc::new(Mutex::new(Home {
            core: Some(core),
            pending: None,
            ctx,
        }))
    }

    /// Puts the core back for the agent's next run.
    pub(crate) fn put(home: &Mutex<Home>, core: Box<StreamCore>) {
        if let Ok(mut home) = home.lock() {
            home.core = Some(core);
        }
    }

    /// Takes the core once the agent's run has ended, finishing what a dropped call to its
    /// `next` left: a cut's round is waited for, a wait for input ends at once, and a record
    /// taken meanwhile goes back to its queue, for the next run.
    pub(crate) async fn take_core(home: &Mutex<Home>) -> Option<Box<StreamCore>> {
        let (core, pending, ctx) = {
            let mut home = home.lock().ok()?;
            (home.core.take(), home.pending.take(), Arc::clone(&home.ctx))
        };
        if core.is_some() {
            return core;
        }
        ctx.release(true);
        let (mut core, found) = pending?.await;
        ctx.release(false);
        if let Some((source, message)) = found {
            core.put_back(source, message);
        }
        Some(core)
    }
}

/// A task's input as its code holds it. The core outlives one run of an agent: dropping
/// the stream gives it back, so that a restarted agent continues where this one stopped.
pub struct RawStream {
    pub(crate) core: Option<Box<StreamCore>>,
    pending: Option<Pending>,
    /// A record that could not be read, for the app's deserialization handler on the way to
    /// the next (see [`RawStream::next_message`]).
    pub(crate) rejected: Option<Rejected>,
    home: Arc<Mutex<Home>>,
}

impl RawStream {
    pub(crate) fn new(home: Arc<Mutex<Home>>) -> Option<Self> {
        let (core, pending) = {
            let mut slot = home.lock().ok()?;
            (slot.core.take(), slot.pending.take())
        };
        if core.is_none() && pending.is_none() {
            return None;
        }
        Some(Self {
            core,
            pending,
            rejected: None,
            home,
        })
    }

    /// The next record to process and its source ([`StreamCore::next_message`]), after
    /// [`RawStream::rejected`] goes where the app's deserialization handler says.
    /// Cancel-safe: dropped while it waits, it leaves its work in progress to the next call,
    /// which finishes it and returns what it found.
    pub(crate) async fn next_message(&mut self) -> Option<(usize, Message)> {
        if self.pending.is_none() {
            if self.rejected.is_none() {
                if let Some(found) = self.core.as_mut()?.next_fast() {
                    return Some(found);
                }
            }
            let rejected = self.rejected.take();
            let mut core = self.core.take()?;
            self.pending = Some(Box::pin(async move {
                if let Some(Rejected { source, message, error }) = rejected {
                    core.reject(source, message, Stage::Deserialization, &error).await;
                }
                let found = core.next_message().await;
                (core, found)
            }));
        }
        let pending = self.pending.as_mut()?;
        let (core, found) = match std::panic::AssertUnwindSafe(pending).catch_unwind().await {
            Ok(done) => done,
            Err(panic) => {
                // A bug of ours: the core went with the work (the task's end says so), which
                // is not polled again.
                self.pending = None;
                std::panic::resume_unwind(panic);
            }
        };
        self.pending = None;
        self.core = Some(core);
        found
    }
}

/// A record whose key, value or time could not be read, on its way to the app's
/// deserialization handler.
pub(crate) struct Rejected {
    pub source: usize,
    pub message: Message,
    pub error: String,
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if let Ok(mut home) = self.home.lock() {
            if let Some(core) = self.core.take() {
                home.core = Some(core);
            }
            if let Some(pending) = self.pending.take() {
                home.pending = Some(pending);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::{Home, Input, Pending, StreamCore};
    use crate::message::Message;
    use crate::metrics::Metrics;
    use crate::task::run::{TaskKind, TaskSpec};
    use crate::task::sink::{FlushError, OnError, OutRecord, Sink, SinkError};
    use crate::task::{Globals, TaskContext};
    use crate::Topic;

    struct Nowhere;

    impl Sink for Nowhere {
        fn enqueue(&self, _: OutRecord) -> Result<(), SinkError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), FlushError> {
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            None
        }
    }

    fn record(offset: i64, time: i64) -> Message {
        Message::new(offset, Some(time), Some(b"k"), Some(b"1"), None)
    }

    /// A task with two sources whose first source's record is handed over (and its flag
    /// cleared) just after the task drained its queue: the task must still take that record
    /// (time 10) before the other source's (time 20), not go on because the flag says the
    /// broker has nothing more of it.
    #[tokio::test]
    async fn a_record_handed_over_while_the_task_chooses_comes_in_time_order() {
        let (a, b): (Topic<String, i64>, Topic<String, i64>) = (Topic::new("a"), Topic::new("b"));
        let (mut core, ctx, tx) = task_reading(vec![a.spec(), b.spec()]);
        tx.send(Input::Records(1, vec![record(0, 20)])).await.expect("queued");
        ctx.set_unread(0, true);
        ctx.set_unread(1, false);
        let (late, flags) = (tx.clone(), Arc::clone(&ctx));
        let mut handed = false;
        core.between = Some(Box::new(move || {
            if !std::mem::replace(&mut handed, true) {
                late.try_send(Input::Records(0, vec![record(0, 10)])).expect("queued");
                flags.set_unread(0, false);
            }
        }));
        let (source, message) = tokio::time::timeout(Duration::from_secs(10), core.next_message())
            .await
            .expect("a record within 10 s")
            .expect("a record");
        assert_eq!((source, message.timestamp()), (0, Some(10)), "the earlier record first");
    }

    /// When an agent ends with work a dropped call to its `next` left (see `Home`), that
    /// work is finished, and a record it took goes back to the front of its queue: the
    /// agent's next run takes it first, then the rest in order.
    #[tokio::test]
    async fn a_record_the_left_work_took_goes_back_to_its_queue() {
        let numbers: Topic<String, i64> = Topic::new("numbers");
        let (core, _ctx, tx) = task_reading(vec![numbers.spec()]);
        let batch = (0..3).map(|offset| record(offset, offset)).collect();
        tx.send(Input::Records(0, batch)).await.expect("queued");
        let home = Home::new(Box::new(core));
        let mut core = Home::take_core(&home).await.expect("the core");
        let left: Pending = Box::pin(async move {
            let found = core.next_message().await;
            (core, found)
        });
        home.lock().expect("home").pending = Some(left);
        let mut core = Home::take_core(&home).await.expect("the core, the work finished");
        for offset in 0..3 {
            let (_, message) = core.next_message().await.expect("a record");
            assert_eq!(message.offset(), offset);
        }
    }

    /// Exactly-once: a task whose round aborted makes no more cuts. Here it finishes (a
    /// revoke) with a flush queued before its finish: the flush's cut goes to a round that
    /// aborts, and the finish is answered "not committed" without a second cut, which would
    /// have carried the aborted run's positions into the next round.
    #[tokio::test]
    async fn a_task_whose_round_aborted_cuts_no_more() {
        let numbers: Topic<String, i64> = Topic::new("numbers");
        let (core, ctx, tx, cuts) = task_with_committer(vec![numbers.spec()]);
        let mut core = core.with_rounds(Arc::new(crate::task::round::Rounds::at_barriers()));
        tx.send(Input::Records(0, vec![record(0, 0), record(1, 1)]))
            .await
            .expect("queued");
        let (source, first) = core.next_message().await.expect("a record");
        assert_eq!(first.offset(), 0);
        core.begin(source, first);
        let (flushed, _flush_answer) = std::sync::mpsc::channel();
        let (finished, finish_answer) = std::sync::mpsc::channel();
        tx.send(Input::Flush(flushed)).await.expect("queued");
        tx.send(Input::Finish(finished)).await.expect("queued");
        ctx.request_finish();
        let task = tokio::spawn(async move {
            let next = core.next_message().await;
            (core, next.is_none())
        });
        let mut cut = tokio::task::spawn_blocking(move || {
            let cut = cuts.recv_timeout(Duration::from_secs(10)).expect("the flush's cut");
            (cut, cuts)
        })
        .await
        .expect("cut");
        assert_eq!(cut.0.positions, vec![(Arc::from("numbers"), 0)]);
        // As the committer answers an aborted round.
        for ack in std::mem::take(&mut cut.0.acks) {
            let _ = ack.send(Err("aborted".into()));
        }
        cut.0.ticket.take().expect("a ticket").answer(Err("aborted".into()));
        let (_core, ended) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends within 10 s (a second cut would wait for its round)")
            .expect("task");
        assert!(ended, "the stream ends");
        let cuts = cut.1;
        assert!(
            cuts.recv_timeout(Duration::from_millis(300)).is_err(),
            "no cut after the abort"
        );
        let answer = finish_answer.try_recv().expect("the finish is answered");
        assert!(answer.is_err_and(|error| error.contains("aborted")));
    }

    /// A sink whose queue is full until told otherwise; it counts what it takes.
    #[derive(Default)]
    struct Filling {
        room: std::sync::atomic::AtomicBool,
        took: std::sync::atomic::AtomicUsize,
    }

    impl Sink for Filling {
        fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
            use std::sync::atomic::Ordering::SeqCst;
            if !self.room.load(SeqCst) {
                return Err(SinkError::Full(record));
            }
            self.took.fetch_add(1, SeqCst);
            Ok(())
        }
        fn flush(&self) -> Result<(), FlushError> {
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            None
        }
    }

    /// Exactly-once: a task dropped (its partition lost, or revoked past its timeout) while
    /// its cut's changelog records wait for room in a task of their own: the rest of the cut
    /// is not made, once room comes, for a round it no longer takes part in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_whose_task_was_dropped_while_its_records_waited_is_not_made() {
        use std::sync::atomic::Ordering::SeqCst;
        let numbers: Topic<String, i64> = Topic::new("numbers");
        let sums: crate::table::Table<String, i64> = crate::table::Table::new("sums");
        let spec = TaskSpec {
            name: "sum".into(),
            kind: TaskKind::Agent,
            sources: vec![numbers.spec()],
            sends: Vec::new(),
            tables: vec![sums.spec()],
            dead_letter_topic: "dead-letters".into(),
            on_deserialization_error: OnError::DeadLetter,
            on_processing_error: OnError::DeadLetter,
            run: Arc::new(|_| Box::pin(async { Ok(()) })),
        };
        let table = crate::task::tables::TableState::new(
            &sums.spec(),
            "test-sums-changelog".into(),
            Arc::new(crate::store::MemoryStore::default()),
            crate::task::cache_budget::CacheBudget::per_partition(1 << 20).share(),
        );
        let sink = Arc::new(Filling::default());
        let (committer, cuts) = std::sync::mpsc::channel();
        let ctx = Arc::new(TaskContext::new(
            &spec,
            0,
            vec![table],
            Arc::clone(&sink) as Arc<dyn Sink>,
            committer,
            Arc::new(Metrics::default()),
            Globals::default(),
        ));
        let (tx, rx) = mpsc::channel(16);
        let mut core = StreamCore::new(Arc::clone(&ctx), rx, Duration::from_secs(3600))
            .with_rounds(Arc::new(crate::task::round::Rounds::at_barriers()));
        tx.send(Input::Records(0, vec![record(0, 0)])).await.expect("queued");
        let (source, first) = core.next_message().await.expect("a record");
        core.begin(source, first);
        ctx.put_at(0, b"k".to_vec(), Some(b"1".to_vec())).expect("a change");
        core.finish_current();
        let task = tokio::spawn(async move { core.cut_with(Vec::new()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            cuts.try_recv().is_err(),
            "the cut waits for room for its changelog record"
        );
        task.abort();
        let _ = task.await;
        sink.room.store(true, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.took.load(SeqCst), 0, "nothing is sent for the dropped task");
        assert!(
            cuts.try_recv().is_err(),
            "no cut of the dropped task reaches the committer"
        );
        drop(tx);
    }

    /// A task of an agent reading `sources`; its context and its input's sender.
    fn task_reading(sources: Vec<crate::spec::TopicSpec>) -> (StreamCore, Arc<TaskContext>, mpsc::Sender<Input>) {
        let (core, ctx, tx, _cuts) = task_with_committer(sources);
        (core, ctx, tx)
    }

    /// [`task_reading`], with the committer's end of the task's cuts.
    fn task_with_committer(
        sources: Vec<crate::spec::TopicSpec>,
    ) -> (
        StreamCore,
        Arc<TaskContext>,
        mpsc::Sender<Input>,
        std::sync::mpsc::Receiver<crate::task::commit::Cut>,
    ) {
        let spec = TaskSpec {
            name: "join".into(),
            kind: TaskKind::Agent,
            sources,
            sends: Vec::new(),
            tables: Vec::new(),
            dead_letter_topic: "dead-letters".into(),
            on_deserialization_error: OnError::DeadLetter,
            on_processing_error: OnError::DeadLetter,
            run: Arc::new(|_| Box::pin(async { Ok(()) })),
        };
        let (committer, cuts) = std::sync::mpsc::channel();
        let ctx = Arc::new(TaskContext::new(
            &spec,
            0,
            Vec::new(),
            Arc::new(Nowhere),
            committer,
            Arc::new(Metrics::default()),
            Globals::default(),
        ));
        let (tx, rx) = mpsc::channel(16);
        let core = StreamCore::new(Arc::clone(&ctx), rx, Duration::from_secs(3600));
        (core, ctx, tx, cuts)
    }
}
