//! The app's timers on a worker: each runs on its own tokio task, on the wall clock, until
//! the worker stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::task::{wall_clock_ms, TaskContext};
use crate::timer::{Tick, Timer};

/// Runs `timer` until `stop` is set: sleeps until it is due, runs it, logs what fails.
pub(crate) async fn run(timer: Timer, ctx: Arc<TaskContext>, stop: Arc<AtomicBool>) {
    let mut last = wall_clock_ms();
    loop {
        let Some(due) = timer.next_due(last, wall_clock_ms()) else {
            tracing::warn!(
                "timer `{}` ({}) has no next time; it stops",
                timer.name(),
                timer.describe()
            );
            return;
        };
        // Sleep in short steps, so that a stopping worker does not wait for a long timer.
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let left = due - wall_clock_ms();
            if left <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(left.clamp(1, 250) as u64)).await;
        }
        if let Err(error) = timer.fire(Arc::clone(&ctx), Tick { time: due }).await {
            tracing::warn!("timer `{}` failed at {due}: {error}", timer.name());
        }
        last = due;
    }
}
