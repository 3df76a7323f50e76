//! Timers: work an app does on the wall clock rather than on records — Faust's
//! `@app.timer(interval)` and `@app.crontab(pattern)`. A timer runs on every worker of the
//! app (like Faust's timers without `on_leader`), and may send to the topics it declares,
//! with `Topic::send` as an agent does.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::agent::AgentResult;
use crate::codec::Key;
use crate::task::TaskContext;
use crate::topic::{Topic, TopicSpec};

/// One firing of a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// When it was due, in milliseconds since the epoch (wall clock; in the test driver,
    /// the driver's clock). What it sends carries this time.
    pub time: i64,
}

type TimerFn = Arc<dyn Fn(Tick) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
enum Schedule {
    /// Every so many milliseconds from the worker's start.
    Every(i64),
    /// At the times a cron pattern gives, in UTC (or why the pattern is no good).
    Cron(String, Result<Box<croner::Cron>, String>),
}

/// A timer: a name, a schedule, the topics it sends to, and the work.
///
/// ```
/// use std::time::Duration;
/// use streams_core::prelude::*;
/// use streams_core::timer::{Tick, Timer};
///
/// const HEARTBEATS: Topic<String, i64> = Topic::new("heartbeats");
///
/// let app = App::new("clock")
///     .timer(
///         Timer::every("heartbeat", Duration::from_secs(10), |tick: Tick| async move {
///             HEARTBEATS.send("clock", &tick.time).await
///         })
///         .sends(HEARTBEATS),
///     )
///     .timer(Timer::cron("hourly", "0 * * * *", |tick: Tick| async move {
///         println!("top of the hour: {}", tick.time);
///     }));
/// assert_eq!(app.timers().len(), 2);
/// ```
#[derive(Clone)]
pub struct Timer {
    name: String,
    schedule: Schedule,
    pub(crate) sends: Vec<TopicSpec>,
    run: TimerFn,
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("name", &self.name)
            .field("schedule", &self.describe())
            .finish_non_exhaustive()
    }
}

fn boxed<F, Fut>(work: F) -> TimerFn
where
    F: Fn(Tick) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: AgentResult,
{
    Arc::new(move |tick| {
        let fut = work(tick);
        Box::pin(async move { fut.await.into_agent_result() })
    })
}

impl Timer {
    /// Runs `work` every `interval` (Faust's `@app.timer`), the first time one interval
    /// after the worker starts. A run that takes longer than the interval skips the times
    /// it missed. `work` may return `()` or `Result<(), E>` with `E: Display`; an error is
    /// logged, and the timer goes on.
    pub fn every<F, Fut>(name: &str, interval: Duration, work: F) -> Self
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: AgentResult,
    {
        Self {
            name: name.to_string(),
            schedule: Schedule::Every(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX)),
            sends: Vec::new(),
            run: boxed(work),
        }
    }

    /// Runs `work` at the times of a cron pattern (`minute hour day-of-month month
    /// day-of-week`, in UTC; Faust's `@app.crontab`), e.g. `"*/5 * * * *"` every five
    /// minutes. A pattern that does not parse stops the app at start, naming it.
    pub fn cron<F, Fut>(name: &str, pattern: &str, work: F) -> Self
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: AgentResult,
    {
        let parsed = croner::Cron::from_str(pattern).map(Box::new).map_err(|e| e.to_string());
        Self {
            name: name.to_string(),
            schedule: Schedule::Cron(pattern.to_string(), parsed),
            sends: Vec::new(),
            run: boxed(work),
        }
    }

    /// Lets the timer send to `topic` (`TOPIC.send(..)` inside it).
    pub fn sends<K: Key, V: Send + Sync + 'static>(mut self, topic: Topic<K, V>) -> Self {
        self.sends.push(topic.spec());
        self
    }

    /// The timer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule as text: `every 10s` or `cron "0 * * * *" (UTC)`.
    pub fn describe(&self) -> String {
        match &self.schedule {
            Schedule::Every(ms) => format!("every {:?}", Duration::from_millis(u64::try_from(*ms).unwrap_or(0))),
            Schedule::Cron(pattern, _) => format!("cron \"{pattern}\" (UTC)"),
        }
    }

    /// What is wrong with the timer, if anything.
    pub(crate) fn check(&self) -> Option<String> {
        match &self.schedule {
            Schedule::Every(ms) if *ms <= 0 => {
                Some(format!("timer `{}` needs an interval of at least 1 ms", self.name))
            }
            Schedule::Cron(pattern, Err(error)) => {
                Some(format!("timer `{}`: cron pattern \"{pattern}\": {error}", self.name))
            }
            _ => None,
        }
    }

    /// The first time after `after` (ms) it is due; for an interval timer, `after` is its
    /// last due time (or its start).
    pub(crate) fn next_after(&self, after: i64) -> Option<i64> {
        match &self.schedule {
            Schedule::Every(ms) => after.checked_add((*ms).max(1)),
            Schedule::Cron(_, Ok(cron)) => {
                // Cron times are whole seconds: the next one after `after` is the next one
                // after its second (croner keeps a fraction it is given).
                let after = chrono::DateTime::from_timestamp(after.div_euclid(1000), 0)?;
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(next.timestamp_millis())
            }
            Schedule::Cron(_, Err(_)) => None,
        }
    }

    /// The first due time after `last` that is not before `now` (missed ones are skipped).
    pub(crate) fn next_due(&self, last: i64, now: i64) -> Option<i64> {
        let mut next = self.next_after(last)?;
        if next < now {
            next = match &self.schedule {
                Schedule::Every(ms) => {
                    let ms = (*ms).max(1);
                    next + (now - next).div_euclid(ms) * ms + if (now - next) % ms == 0 { 0 } else { ms }
                }
                Schedule::Cron(..) => self.next_after(now - 1)?,
            };
        }
        Some(next)
    }

    /// Runs the work for `tick` in `ctx` (its sends go where the context's do); a panic is
    /// an error like any other.
    pub(crate) async fn fire(&self, ctx: Arc<TaskContext>, tick: Tick) -> Result<(), String> {
        ctx.observe_time(tick.time);
        let work = (self.run)(tick);
        let outcome = std::panic::AssertUnwindSafe(ctx.scope(work)).catch_unwind().await;
        match outcome {
            Ok(result) => result,
            Err(panic) => Err(format!("panic: {}", crate::error::panic_text(&*panic))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron_patterns_give_their_next_times() {
        let every = Timer::every("t", Duration::from_secs(10), |_| async {});
        assert_eq!(every.next_after(0), Some(10_000));
        assert_eq!(every.next_due(0, 35_000), Some(40_000), "missed times are skipped");
        assert_eq!(every.next_due(0, 30_000), Some(30_000));
        let cron = Timer::cron("c", "*/5 * * * *", |_| async {});
        assert_eq!(cron.check(), None);
        assert_eq!(cron.next_after(0), Some(300_000));
        assert_eq!(cron.next_after(300_000), Some(600_000));
        assert_eq!(cron.next_due(0, 1_000_000), Some(1_200_000));
        assert_eq!(
            cron.next_after(299_999),
            Some(300_000),
            "a fraction of a second is not carried"
        );
        assert_eq!(cron.next_after(300_500), Some(600_000));
        let bad = Timer::cron("bad", "every minute", |_| async {});
        assert!(bad
            .check()
            .is_some_and(|e| e.contains("bad") && e.contains("every minute")));
        assert_eq!(bad.next_after(0), None);
        assert!(Timer::every("zero", Duration::ZERO, |_| async {}).check().is_some());
        assert_eq!(every.describe(), "every 10s");
    }
}
