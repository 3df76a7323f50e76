//! Exactly-once against Kafka's real behaviour, proven through the test driver, whose
//! transactions behave as Kafka's do where the embedded broker's do not: a committed
//! transaction's markers written after its offsets (its records invisible to read_committed
//! readers until then), aborted records never read, delivery failures and commits whose
//! outcome is unknown injected on demand, the group's generation checked at commit.

use std::time::Duration;

use streams_core::app::ProcessingGuarantee;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;

const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
const SUMS: Table<String, i64> = Table::new("sums");
const TOTALS: Topic<String, i64> = Topic::new("totals").partitions(1);

#[agent(topic = NUMBERS, tables = [SUMS], sends = [TOTALS])]
async fn sum(mut numbers: Stream<String, i64>) -> Result<()> {
    while let Some(event) = numbers.next_event().await {
        let total = SUMS.update(&event.key, |s| *s += event.value).await?;
        TOTALS.send(&event.key, &total).await?;
    }
    Ok(())
}

fn app() -> App {
    App::new("txn")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .agent(sum)
}

/// KAFKA-10167: the previous owner's last round has committed — the group's offsets include
/// it — but its markers are not yet written on the changelog. A restore that stopped at the
/// last stable offset would miss the round's changes, and the new owner would start after the
/// round without them. The restore reads to the end, waiting for the markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_waits_for_the_markers_of_a_committed_round() {
    let mut driver = TestDriver::new(app()).expect("driver");
    driver.marker_latency(Duration::from_millis(300));
    for _ in 0..100 {
        driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    }
    // Processed, not committed: the hand-over's last round commits the changes, and worker-2
    // restores while that round's markers are pending.
    driver.process().await.expect("process");
    driver.move_partition("numbers", 0, "worker-2").await.expect("move");
    driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&SUMS).expect("table")["k"], 101);
    let totals: Vec<i64> = driver
        .records(&TOTALS)
        .expect("totals")
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        totals,
        (1..=101).collect::<Vec<i64>>(),
        "read committed: each total once, in order"
    );
}
