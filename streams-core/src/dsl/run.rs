//! A sub-topology of a pipeline as a task: the loop that takes its records, one at a time,
//! down its nodes, and the work it does at each cut (sending its tables' changes on).

use std::sync::Arc;

use super::node::{
    change_failed_in, failed_without_a_record, guarded, stop_unavailable, ChangeListener, Cx, SourceNode, TableSlot,
    Tick,
};
use crate::task::input::{CutHook, RawStream, Stage};
use crate::task::run::RunFn;
use crate::task::sink::OutRecord;
use crate::task::TaskContext;

/// What runs in the tasks of one sub-topology.
pub(crate) struct SubTopology {
    /// One node per source topic, in the order of the task's sources.
    pub(crate) sources: Vec<Arc<dyn SourceNode>>,
    /// The tables whose changes go on at each cut, in the order they were declared (a
    /// change can lead to a change of a later table).
    pub(crate) listeners: Vec<(TableSlot, Arc<dyn ChangeListener>)>,
    /// What runs at each cut after the listeners (windowed aggregations closing windows).
    pub(crate) ticks: Vec<Arc<dyn Tick>>,
}

/// The task's code for a sub-topology.
pub(crate) fn run_fn(sub: Arc<SubTopology>) -> RunFn {
    Arc::new(move |raw: RawStream| Box::pin(run(raw, Arc::clone(&sub))))
}

async fn run(mut raw: RawStream, sub: Arc<SubTopology>) -> Result<(), String> {
    let Some(core) = raw.core.as_mut() else {
        return Ok(());
    };
    if !sub.listeners.is_empty() || !sub.ticks.is_empty() {
        core.set_hook(Box::new(Changes(Arc::clone(&sub))));
    }
    let ctx = Arc::clone(&core.ctx);
    let mut backlog: Vec<OutRecord> = Vec::new();
    while let Some((source, message)) = core.next_message().await {
        // The source node observes the record's time (its timestamp or its value's).
        let timestamp = ctx.event_time();
        core.begin(source, message);
        let outcome = match (core.current(), sub.sources.get(source)) {
            (Some((_, message)), Some(node)) => {
                let mut cx = Cx {
                    ctx: &ctx,
                    timestamp,
                    backlog: &mut backlog,
                    decoded: false,
                    unavailable: false,
                    outages: crate::error::outages(),
                };
                let outcome = guarded(|| node.push_message(&mut cx, message));
                let stage = if cx.decoded {
                    Stage::Processing
                } else {
                    Stage::Deserialization
                };
                outcome.map_err(|error| (stage, error, cx.outage()))
            }
            _ => Ok(()),
        };
        if let Err((stage, error, unavailable)) = outcome {
            if unavailable {
                core.halt_current(&error);
            } else {
                core.reject_current(stage, &error).await;
            }
            if core.ended {
                // Stopped at the record: nothing it made goes out.
                backlog.clear();
            }
        }
        if ctx.metrics.failed() {
            // The worker stops (a punctuation the record set off failed under `OnError::Fail`,
            // or another task failed): nothing from here on is committed, and what waits for
            // room in the producer is not sent (what it took already goes out).
            backlog.clear();
        }
        for record in backlog.drain(..) {
            if let Err(error) = ctx.send_when_room(record).await {
                ctx.metrics.fail(error);
            }
        }
    }
    Ok(())
}

/// At each cut, the changes of the sub-topology's tables go on (coalesced per key since the
/// last cut, like Kafka Streams' record cache), each with the time of the record that made it.
/// Then the ticks run (windows close, suppressions send keys on); what they change in tables
/// goes to those tables' listeners in another pass, and so on until nothing changes (at most
/// [`PASSES`] passes, the last delivering only: ticks still due then run at the next cut).
struct Changes(Arc<SubTopology>);

/// Passes of listeners and ticks at one cut.
const PASSES: usize = 8;

impl Changes {
    /// Hands the changes made in change pass `from` or later to the listeners.
    fn deliver(&self, ctx: &Arc<TaskContext>, backlog: &mut Vec<OutRecord>, from: u64) {
        for (slot, listener) in &self.0.listeners {
            let Ok(index) = slot.get() else { continue };
            let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>, i64)> = Vec::new();
            let mut table_name = "";
            if let Some(table) = ctx.tables().get(index) {
                table_name = table.name;
                table.for_each_change(from, &mut |key, value, timestamp| {
                    changes.push((key.to_vec(), value.map(<[u8]>::to_vec), timestamp));
                });
            }
            for (key, value, timestamp) in changes {
                if ctx.metrics.fatal().is_some() {
                    // The worker stops: nothing more is committed, so nothing more is sent.
                    return;
                }
                ctx.set_event_time(timestamp);
                let mut cx = Cx {
                    ctx,
                    timestamp,
                    backlog,
                    decoded: true,
                    unavailable: false,
                    outages: crate::error::outages(),
                };
                let outcome = guarded(|| listener.change(&mut cx, &key, value.as_deref()));
                if let Err(error) = outcome {
                    change_failed_in(&mut cx, table_name, key, value, timestamp, &error);
                }
            }
        }
    }
}

impl CutHook for Changes {
    fn wall_clock_due(&self, ctx: &Arc<TaskContext>) -> Option<i64> {
        self.0.ticks.iter().filter_map(|tick| tick.wall_clock_due(ctx)).min()
    }

    fn wall_clock(&mut self, ctx: &Arc<TaskContext>, backlog: &mut Vec<OutRecord>) {
        let before = ctx.event_time();
        for tick in &self.0.ticks {
            if ctx.metrics.failed() {
                // The worker stops: what the rest would do goes nowhere.
                break;
            }
            let mut cx = Cx {
                ctx,
                timestamp: before,
                backlog,
                decoded: true,
                unavailable: false,
                outages: crate::error::outages(),
            };
            match guarded(|| tick.wall_clock(&mut cx)) {
                Err(error) if cx.outage() => stop_unavailable(ctx, &error),
                Err(error) => failed_without_a_record(ctx, "a wall-clock punctuation", &error),
                Ok(()) => {}
            }
        }
        ctx.set_event_time(before);
    }

    fn before_cut(&mut self, ctx: &Arc<TaskContext>, backlog: &mut Vec<OutRecord>) {
        let before = ctx.event_time();
        let mut from = 0;
        for pass in 1..=PASSES {
            self.deliver(ctx, backlog, from);
            // What the listeners were given is seen: changes from now on are of a new pass
            // (a table entry made and deleted within one pass leaves no trace, see
            // `TaskContext::put_new_at`).
            let next = ctx.next_change_pass();
            // The last pass only delivers: every change made goes on before the cut.
            if self.0.ticks.is_empty() || pass == PASSES {
                break;
            }
            from = next;
            for tick in &self.0.ticks {
                if ctx.metrics.failed() {
                    // The worker stops: the cut is not made (see `StreamCore::cut_with`).
                    ctx.set_event_time(before);
                    return;
                }
                ctx.set_event_time(before);
                let mut cx = Cx {
                    ctx,
                    timestamp: before,
                    backlog,
                    decoded: true,
                    unavailable: false,
                    outages: crate::error::outages(),
                };
                match guarded(|| tick.tick(&mut cx)) {
                    Err(error) if cx.outage() => stop_unavailable(ctx, &error),
                    Err(error) => failed_without_a_record(ctx, "at a commit point", &error),
                    Ok(()) => {}
                }
            }
            if !ctx.changed_since_pass(from) {
                break;
            }
        }
        ctx.set_event_time(before);
    }
}
