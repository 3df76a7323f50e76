//! [`Processor`]: a pipeline operation written by hand (Kafka Streams' Processor API), with
//! its own state per task and punctuation on stream time and on the wall clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::node::{at_time, failed_without_a_record, guarded, Cx, Fanout, Node, Outcome, Tick};
use crate::codec::Key;
use crate::task::{TaskContext, NO_TIME};

/// An operation of a pipeline written by hand: it sees each record and forwards any number
/// of records, with new keys and values if it likes (Kafka Streams' `process`). Each task of
/// the sub-topology has its own instance (made by the factory given to
/// [`KStream::process`](super::KStream::process)), so `&mut self` is per partition.
///
/// With [`Processor::punctuation`], [`Processor::punctuate`] runs each time the task's stream
/// time passes a multiple of that interval (Kafka Streams' `STREAM_TIME` punctuation): after
/// the record that moved it there, or at the next commit point. With
/// [`Processor::wall_clock_punctuation`], [`Processor::punctuate_wall_clock`] runs each time
/// the wall clock passes a multiple of that interval, records or not (Kafka Streams'
/// `WALL_CLOCK_TIME` punctuation).
///
/// An instance's fields live in memory only: after a restart or a rebalance the new
/// instance starts empty (keep what must survive in an aggregation's table).
///
/// ```
/// use std::time::Duration;
/// use streams_core::dsl::{Forward, Processor};
/// use streams_core::prelude::*;
///
/// /// Sums each key's values and sends the sums every minute of stream time.
/// #[derive(Default)]
/// struct MinuteSums(std::collections::BTreeMap<String, i64>);
///
/// impl Processor<String, i64> for MinuteSums {
///     type Key = String;
///     type Value = i64;
///     fn process(&mut self, key: String, value: i64, _: &mut Forward<'_, '_, String, i64>) {
///         *self.0.entry(key).or_default() += value;
///     }
///     fn punctuation(&self) -> Option<Duration> {
///         Some(Duration::from_secs(60))
///     }
///     fn punctuate(&mut self, _stream_time: i64, out: &mut Forward<'_, '_, String, i64>) {
///         for (key, sum) in std::mem::take(&mut self.0) {
///             out.forward(key, sum);
///         }
///     }
/// }
///
/// const AMOUNTS: Topic<String, i64> = Topic::new("amounts");
/// const SUMS: Topic<String, i64> = Topic::new("minute-sums");
///
/// let app = App::new("sums").pipeline("sums", |builder| {
///     builder.stream(AMOUNTS).process("minute-sums", MinuteSums::default).to(SUMS);
/// });
/// # assert!(app.pipelines()[0].errors.is_empty());
/// ```
pub trait Processor<K, V>: Send + 'static {
    /// Key of the records it forwards.
    type Key: Key;
    /// Value of the records it forwards.
    type Value: Send + Sync + 'static;

    /// Handles one record; `out.forward(key, value)` sends records on, with the record's
    /// event time.
    fn process(&mut self, key: K, value: V, out: &mut Forward<'_, '_, Self::Key, Self::Value>);

    /// How often [`Processor::punctuate`] runs, in stream time (`None`, the default: never).
    fn punctuation(&self) -> Option<Duration> {
        None
    }

    /// Runs when the task's stream time passes a multiple of [`Processor::punctuation`];
    /// what it forwards carries `stream_time`.
    fn punctuate(&mut self, stream_time: i64, out: &mut Forward<'_, '_, Self::Key, Self::Value>) {
        let _ = (stream_time, out);
    }
    /// How often [`Processor::punctuate_wall_clock`] runs, on the wall clock (`None`, the
    /// default: never). Kafka Streams' `WALL_CLOCK_TIME` punctuation.
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        None
    }

    /// Runs when the wall clock passes a multiple of [`Processor::wall_clock_punctuation`]
    /// (`wall_time`: ms since the epoch), whether records come or not; runs it missed
    /// (the task was busy or not running) are not made up. What it forwards carries the
    /// task's stream time (see the README on why not the wall time).
    fn punctuate_wall_clock(&mut self, wall_time: i64, out: &mut Forward<'_, '_, Self::Key, Self::Value>) {
        let _ = (wall_time, out);
    }
}

/// Where a [`Processor`] sends its records.
pub struct Forward<'a, 'c, K, V> {
    cx: &'a mut Cx<'c>,
    next: &'a Fanout<K, V>,
    outcome: Outcome,
}

impl<K, V> Forward<'_, '_, K, V> {
    /// Sends a record on.
    pub fn forward(&mut self, key: K, value: V) {
        let outcome = guarded(|| self.next.push(self.cx, key, value));
        self.outcome = std::mem::replace(&mut self.outcome, Ok(())).and(outcome);
    }

    /// The event time (ms) of the record being processed (what forwarded records carry).
    pub fn timestamp(&self) -> i64 {
        self.cx.timestamp
    }

    /// The task's stream time (ms): the largest event time it has processed.
    pub fn stream_time(&self) -> i64 {
        self.cx.ctx.stream_time()
    }
}

/// A processor that keeps each record's key (Kafka Streams' `processValues` with a
/// `FixedKeyProcessor`): it forwards values only, under the key of the record it is
/// processing — or, from [`ValueProcessor::punctuate`], under a key it was given before and
/// kept ([`ForwardValues::keep`]). The types prove the keys unchanged, so the stream stays
/// partitioned as it was: `group_by_key` and joins follow without a repartition topic
/// (`KStream::process`, which may change keys, makes the stream re-keyed).
///
/// ```
/// use streams_core::dsl::{ForwardKept, ForwardValues, Kept, ValueProcessor};
/// use streams_core::prelude::*;
///
/// /// Each key's running total, and the keys seen, repeated every second of stream time.
/// #[derive(Default)]
/// struct Totals(std::collections::BTreeMap<String, (Kept<String>, i64)>);
///
/// impl ValueProcessor<String, i64> for Totals {
///     type Value = i64;
///     fn process(&mut self, key: &String, value: i64, out: &mut ForwardValues<'_, '_, '_, String, i64>) {
///         let kept = out.keep();
///         let entry = self.0.entry(key.clone()).or_insert((kept, 0));
///         entry.1 += value;
///         out.forward(entry.1);
///     }
///     fn punctuation(&self) -> Option<std::time::Duration> {
///         Some(std::time::Duration::from_secs(1))
///     }
///     fn punctuate(&mut self, _stream_time: i64, out: &mut ForwardKept<'_, '_, '_, String, i64>) {
///         for (kept, total) in self.0.values() {
///             out.forward(kept, *total);
///         }
///     }
/// }
///
/// const AMOUNTS: Topic<String, i64> = Topic::new("amounts");
/// const TOTALS: Table<String, i64> = Table::new("latest-totals");
///
/// let app = App::new("totals").pipeline("totals", |builder| {
///     builder
///         .stream(AMOUNTS)
///         .process_values("totals", Totals::default)
///         .group_by_key() // no repartition topic: the keys are the input's
///         .reduce(TOTALS, |_, latest| latest);
/// });
/// assert_eq!(app.tasks().len(), 1);
/// ```
pub trait ValueProcessor<K, V>: Send + 'static {
    /// Value of the records it forwards.
    type Value: Send + Sync + 'static;

    /// Handles one record; `out.forward(value)` sends a value on under the record's key,
    /// with its event time.
    fn process(&mut self, key: &K, value: V, out: &mut ForwardValues<'_, '_, '_, K, Self::Value>);

    /// How often [`ValueProcessor::punctuate`] runs, in stream time (`None`, the default:
    /// never).
    fn punctuation(&self) -> Option<Duration> {
        None
    }

    /// Runs when the task's stream time passes a multiple of
    /// [`ValueProcessor::punctuation`]; it forwards under keys it kept, with `stream_time`.
    fn punctuate(&mut self, stream_time: i64, out: &mut ForwardKept<'_, '_, '_, K, Self::Value>) {
        let _ = (stream_time, out);
    }
    /// How often [`ValueProcessor::punctuate_wall_clock`] runs, on the wall clock (`None`,
    /// the default: never).
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        None
    }

    /// Runs when the wall clock passes a multiple of
    /// [`ValueProcessor::wall_clock_punctuation`], as [`Processor::punctuate_wall_clock`]
    /// does; it forwards under keys it kept.
    fn punctuate_wall_clock(&mut self, wall_time: i64, out: &mut ForwardKept<'_, '_, '_, K, Self::Value>) {
        let _ = (wall_time, out);
    }
}

/// A key a [`ValueProcessor`] was given, kept to forward under later (from
/// [`ValueProcessor::punctuate`]); only [`ForwardValues::keep`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kept<K>(K);

impl<K> Kept<K> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.0
    }
}

/// Where a [`ValueProcessor`] sends values while it processes a record: under its key.
pub struct ForwardValues<'k, 'a, 'c, K, V> {
    key: &'k K,
    out: &'k mut Forward<'a, 'c, K, V>,
}

impl<K: Clone, V> ForwardValues<'_, '_, '_, K, V> {
    /// Sends a value on under the record's key.
    pub fn forward(&mut self, value: V) {
        self.out.forward(self.key.clone(), value);
    }

    /// The record's key, kept to forward under from [`ValueProcessor::punctuate`].
    pub fn keep(&self) -> Kept<K> {
        Kept(self.key.clone())
    }

    /// The event time (ms) of the record being processed.
    pub fn timestamp(&self) -> i64 {
        self.out.timestamp()
    }

    /// The task's stream time (ms).
    pub fn stream_time(&self) -> i64 {
        self.out.stream_time()
    }
}

/// Where a [`ValueProcessor`] sends values when it punctuates: under keys it kept.
pub struct ForwardKept<'k, 'a, 'c, K, V> {
    out: &'k mut Forward<'a, 'c, K, V>,
}

impl<K: Clone, V> ForwardKept<'_, '_, '_, K, V> {
    /// Sends a value on under a kept key.
    pub fn forward(&mut self, key: &Kept<K>, value: V) {
        self.out.forward(key.0.clone(), value);
    }
}

/// A [`ValueProcessor`] as a [`Processor`] whose keys are its input's.
pub(crate) struct KeyKept<VP, K, V>(pub(crate) VP, pub(crate) std::marker::PhantomData<fn(K, V)>);

impl<VP, K, V> Processor<K, V> for KeyKept<VP, K, V>
where
    VP: ValueProcessor<K, V>,
    K: Key,
    V: 'static,
{
    type Key = K;
    type Value = VP::Value;

    fn process(&mut self, key: K, value: V, out: &mut Forward<'_, '_, K, VP::Value>) {
        let mut values = ForwardValues { key: &key, out };
        self.0.process(&key, value, &mut values);
    }

    fn punctuation(&self) -> Option<Duration> {
        self.0.punctuation()
    }

    fn punctuate(&mut self, stream_time: i64, out: &mut Forward<'_, '_, K, VP::Value>) {
        self.0.punctuate(stream_time, &mut ForwardKept { out });
    }

    fn wall_clock_punctuation(&self) -> Option<Duration> {
        self.0.wall_clock_punctuation()
    }

    fn punctuate_wall_clock(&mut self, wall_time: i64, out: &mut Forward<'_, '_, K, VP::Value>) {
        self.0.punctuate_wall_clock(wall_time, &mut ForwardKept { out });
    }
}

/// What a task keeps for a processor: its instance and when it punctuates next, on stream
/// time and on the wall clock.
struct Instance<P> {
    processor: P,
    next_punctuation: Option<i64>,
    next_wall_clock: Option<i64>,
    /// Whether its wall-clock interval was asked for (at its first record or commit point).
    asked: bool,
}

/// Ids of processor nodes: what a task's instances are kept under.
static IDS: AtomicUsize = AtomicUsize::new(0);

/// A processor at work in a pipeline, on records with keys `K` and values `V`.
pub(crate) struct ProcessNode<P: Processor<K, V>, F, K, V> {
    id: usize,
    make: F,
    next: Arc<Fanout<P::Key, P::Value>>,
    _types: std::marker::PhantomData<fn(K, V) -> P>,
}

impl<P: Processor<K, V>, F, K, V> ProcessNode<P, F, K, V> {
    pub(crate) fn new(make: F, next: Arc<Fanout<P::Key, P::Value>>) -> Self {
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            make,
            next,
            _types: std::marker::PhantomData,
        }
    }
}

fn next_multiple(time: i64, every: i64) -> i64 {
    time.div_euclid(every).saturating_add(1).saturating_mul(every)
}

impl<P, F, K, V> ProcessNode<P, F, K, V>
where
    P: Processor<K, V>,
    F: Fn() -> P + Send + Sync + 'static,
{
    fn instance(&self, cx: &Cx<'_>) -> Box<Instance<P>> {
        cx.ctx.take_local::<Instance<P>>(self.id).unwrap_or_else(|| {
            Box::new(Instance {
                processor: (self.make)(),
                next_punctuation: None,
                next_wall_clock: None,
                asked: false,
            })
        })
    }

    /// Punctuates when stream time has passed the next multiple of the interval.
    fn maybe_punctuate(&self, cx: &mut Cx<'_>, instance: &mut Instance<P>) -> Outcome {
        let Some(every) = instance.processor.punctuation() else {
            return Ok(());
        };
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
        let now = cx.ctx.stream_time();
        if now == NO_TIME {
            return Ok(());
        }
        match instance.next_punctuation {
            None => instance.next_punctuation = Some(next_multiple(now, every)),
            Some(due) if now >= due => {
                instance.next_punctuation = Some(next_multiple(now, every));
                let before = cx.timestamp;
                cx.timestamp = now;
                let mut out = Forward {
                    cx,
                    next: &self.next,
                    outcome: Ok(()),
                };
                let punctuated = guarded(|| {
                    instance.processor.punctuate(now, &mut out);
                    Ok(())
                });
                let outcome = punctuated.and(out.outcome);
                cx.timestamp = before;
                return outcome;
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl<P, F, K, V> ProcessNode<P, F, K, V>
where
    P: Processor<K, V>,
    F: Fn() -> P + Send + Sync + 'static,
{
    /// Punctuates when the wall clock has passed the next multiple of the interval; the
    /// first is scheduled when the instance first looks (at its first record).
    fn maybe_punctuate_wall_clock(&self, cx: &mut Cx<'_>, instance: &mut Instance<P>) -> Outcome {
        let now = cx.ctx.wall_time();
        match instance.next_wall_clock {
            Some(due) if now >= due => {}
            None if !instance.asked => return self.schedule_wall_clock(cx, instance),
            _ => return Ok(()),
        }
        // Asked again at each run: an interval that becomes `None` (or a method that
        // panics) stops it, rather than leaving a time that has passed due.
        instance.next_wall_clock = None;
        let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instance.processor.wall_clock_punctuation()
        }));
        let every = match asked {
            Ok(Some(every)) => every,
            Ok(None) => return Ok(()),
            Err(panic) => {
                return Err(format!(
                    "wall_clock_punctuation panicked: {}; no more wall-clock punctuation",
                    crate::error::panic_text(&*panic)
                ))
            }
        };
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
        instance.next_wall_clock = Some(next_multiple(now, every));
        // What it forwards carries the task's stream time: event time, as everything
        // downstream measures it.
        let stream_time = cx.ctx.stream_time();
        let time = if stream_time == NO_TIME {
            cx.timestamp
        } else {
            stream_time
        };
        at_time(cx, time, |cx| {
            let mut out = Forward {
                cx,
                next: &self.next,
                outcome: Ok(()),
            };
            let punctuated = guarded(|| {
                instance.processor.punctuate_wall_clock(now, &mut out);
                Ok(())
            });
            punctuated.and(out.outcome)
        })
    }
}

impl<P, F, K, V> ProcessNode<P, F, K, V>
where
    P: Processor<K, V>,
    F: Fn() -> P + Send + Sync + 'static,
{
    /// Schedules the first wall-clock punctuation, once per instance (at its first record or
    /// commit point): the next multiple of its interval. A `wall_clock_punctuation` that
    /// panics leaves none scheduled, and says so.
    fn schedule_wall_clock(&self, cx: &Cx<'_>, instance: &mut Instance<P>) -> Outcome {
        instance.asked = true;
        let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instance.processor.wall_clock_punctuation()
        }));
        match asked {
            Ok(Some(every)) => {
                let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
                instance.next_wall_clock = Some(next_multiple(cx.ctx.wall_time(), every));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(panic) => Err(format!(
                "wall_clock_punctuation panicked: {}; no wall-clock punctuation",
                crate::error::panic_text(&*panic)
            )),
        }
    }
}

impl<P, F, K, V> Node<K, V> for ProcessNode<P, F, K, V>
where
    P: Processor<K, V>,
    F: Fn() -> P + Send + Sync + 'static,
    K: Send + 'static,
    V: Send + 'static,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let mut instance = self.instance(cx);
        let mut out = Forward {
            cx,
            next: &self.next,
            outcome: Ok(()),
        };
        let processed = guarded(|| {
            instance.processor.process(key, value, &mut out);
            Ok(())
        });
        let outcome = processed.and(out.outcome);
        // What the punctuation finds unavailable is told apart from what the record did.
        let (unavailable, outages) = (cx.unavailable, crate::error::outages());
        let punctuated = self.maybe_punctuate(cx, &mut instance);
        let punctuation_outage = (cx.unavailable && !unavailable) || crate::error::outages() != outages;
        // Wall-clock punctuation is scheduled at the first record and runs from the task's
        // loop (between records, looked at every 256 records and when idle), not here.
        let scheduled = if instance.asked {
            Ok(())
        } else {
            self.schedule_wall_clock(cx, &mut instance)
        };
        cx.ctx.put_local(self.id, instance);
        // The record set the punctuation off, but was processed: what failed in it is not
        // the record's doing, and the record does not go to the dead-letter topic for it
        // (Kafka Streams punctuates apart from the record too). Something outside that was
        // unavailable stops the worker before the record, which is read again.
        match punctuated {
            Err(error) if punctuation_outage => return outcome.and(Err(error)),
            Err(error) => failed_without_a_record(cx.ctx, "a punctuation", &error),
            Ok(()) => {}
        }
        if let Err(error) = scheduled {
            failed_without_a_record(cx.ctx, "a wall-clock punctuation", &error);
        }
        outcome
    }
}

impl<P, F, K, V> Tick for ProcessNode<P, F, K, V>
where
    P: Processor<K, V>,
    F: Fn() -> P + Send + Sync + 'static,
    K: Send + 'static,
    V: Send + 'static,
{
    fn tick(&self, cx: &mut Cx<'_>) -> Outcome {
        let mut instance = self.instance(cx);
        let outcome = self.maybe_punctuate(cx, &mut instance);
        let on_wall_clock = self.maybe_punctuate_wall_clock(cx, &mut instance);
        cx.ctx.put_local(self.id, instance);
        outcome.and(on_wall_clock)
    }

    fn wall_clock_due(&self, ctx: &Arc<TaskContext>) -> Option<i64> {
        let instance = ctx.take_local::<Instance<P>>(self.id)?;
        let due = instance.next_wall_clock;
        ctx.put_local(self.id, instance);
        due
    }

    fn wall_clock(&self, cx: &mut Cx<'_>) -> Outcome {
        let mut instance = self.instance(cx);
        let outcome = guarded(|| self.maybe_punctuate_wall_clock(cx, &mut instance));
        cx.ctx.put_local(self.id, instance);
        outcome
    }
}
