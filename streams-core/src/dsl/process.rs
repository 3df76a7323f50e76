//! [`Processor`]: a pipeline operation written by hand (Kafka Streams' Processor API), with
//! its own state per task and punctuation on stream time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::node::{guarded, Cx, Fanout, Node, Outcome, Tick};
use crate::codec::Key;
use crate::task::NO_TIME;

/// An operation of a pipeline written by hand: it sees each record and forwards any number
/// of records, with new keys and values if it likes (Kafka Streams' `process`). Each task of
/// the sub-topology has its own instance (made by the factory given to
/// [`KStream::process`](super::KStream::process)), so `&mut self` is per partition.
///
/// With [`Processor::punctuation`], [`Processor::punctuate`] runs each time the task's stream
/// time passes a multiple of that interval (Kafka Streams' `STREAM_TIME` punctuation): after
/// the record that moved it there, or at the next commit point.
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

/// What a task keeps for a processor: its instance and when it punctuates next.
struct Instance<P> {
    processor: P,
    next_punctuation: Option<i64>,
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
        let punctuated = self.maybe_punctuate(cx, &mut instance);
        cx.ctx.put_local(self.id, instance);
        outcome.and(punctuated)
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
        cx.ctx.put_local(self.id, instance);
        outcome
    }
}
