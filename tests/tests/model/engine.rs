//! The same pipelines on the real engine, through the test driver: the app built from a
//! generated [`Pipeline`], its input piped in segments, each followed by a commit, a clean
//! move of a partition to another worker, or a crash of one.

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::app::ProcessingGuarantee;
use streams_core::dsl::{JoinWindows, KGroupedStream, KStream, KTable, Keyed, StreamsBuilder};
use streams_core::prelude::*;
use streams_core::testing::TestDriver;

use super::reference::{joined, rekey, Agg, JoinKind, Pipeline, Rec, Step, Terminal, WindowKind, Windows};

pub const APP: &str = "model";
pub const INPUT: &str = "in";
pub const SIDE: &str = "side";
pub const REPARTITION: &str = "model-rekey-repartition";

const AGG: Table<String, i64> = Table::new("agg");
const SIDE_STORE: Table<String, i64> = Table::new("side-store");
const JOINED: Table<String, i64> = Table::new("joined");
const WIN: WindowedTable<String, i64> = WindowedTable::new("win");
const OUT: Topic<String, i64> = Topic::new("out");
const OUT_WINDOWS: Topic<Windowed<String>, i64> = Topic::new("out-windows");

/// Which stage of the pipeline an action hits: the one reading the input, or the one after
/// the re-key (the same without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Input,
    Rekeyed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A run: everything processed and committed.
    Commit,
    /// A run, then the partition moves to another worker (a clean handover).
    Move { stage: Stage, partition: i32, owner: u8 },
    /// Everything processed but not committed (commits failing meanwhile, when
    /// `commits_fail`), then the partition's task is killed and another worker takes it.
    Crash {
        stage: Stage,
        partition: i32,
        owner: u8,
        commits_fail: bool,
        /// Killed while writing the cut of what it processed, after this many of the
        /// cut's stores (`None`: killed before that cut).
        torn: Option<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    pub cache_bytes: usize,
    pub ack_latency_ms: u64,
    pub batch: usize,
    /// Tasks also cut on a timer this often (ms), as a worker's do.
    pub commit_interval_ms: Option<u64>,
    pub exactly_once: bool,
    /// Exactly-once: a transaction's markers written this long (ms) after its commit.
    pub marker_latency_ms: u64,
    /// Exactly-once: the first commits time out, having committed (`true`) or not.
    pub commit_timeouts: Option<bool>,
    /// The producer's queue is full this long (ms) from the first changelog record of a cut
    /// after each segment's input (a segment without a cut leaves it to the next): the cut,
    /// and what the tasks send meanwhile, wait for room.
    pub full_queue_ms: u64,
}

/// What the engine produced.
#[derive(Debug, Default)]
pub struct Actual {
    pub agg: BTreeMap<String, i64>,
    pub side: BTreeMap<String, i64>,
    pub joined: BTreeMap<String, i64>,
    pub windows: BTreeMap<(String, i64, i64), i64>,
    /// `out`: per key, the values in the order they were sent.
    pub out: BTreeMap<String, Vec<i64>>,
    /// `out-windows`: per window, the values in the order they were sent.
    pub out_windows: BTreeMap<(String, i64, i64), Vec<i64>>,
    pub late: u64,
    /// Input records processed again after crashes of the input stage, by (partition,
    /// offset), with how many times.
    pub reprocessed: BTreeMap<(i32, i64), usize>,
}

fn ms(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

fn steps(mut stream: KStream<String, i64, Keyed>, steps: &[Step]) -> KStream<String, i64, Keyed> {
    for step in steps.iter().copied() {
        stream = match step {
            Step::Filter { modulus, drop } => stream.filter(move |_, v| v.rem_euclid(modulus) != drop),
            Step::MapValues { mul, add } => stream.map_values(move |_, v| v * mul + add),
            Step::FlatMap { copies } => stream.flat_map_values(move |_, v| (0..copies).map(move |i| v + i)),
        };
    }
    stream
}

fn aggregate(grouped: KGroupedStream<String, i64>, agg: Agg) -> KTable<String, i64> {
    match agg {
        Agg::Count => grouped.count(AGG),
        Agg::Sum => grouped.reduce(AGG, |a, b| a + b),
        Agg::Max => grouped.reduce(AGG, |a, b| a.max(b)),
        Agg::Latest => grouped.reduce(AGG, |_, b| b),
    }
}

/// Emit-final or not, then a count or a sum: the same calls on time windows and sessions.
macro_rules! aggregate_windows {
    ($stream:expr, $windows:expr) => {{
        let mut stream = $stream;
        if $windows.emit_final {
            stream = stream.emit_final();
        }
        if $windows.agg == Agg::Sum {
            stream.reduce(WIN, |a, b| a + b)
        } else {
            stream.count(WIN)
        }
    }};
}

fn windowed(grouped: KGroupedStream<String, i64>, windows: Windows) -> KTable<Windowed<String>, i64> {
    match windows.kind {
        WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => {
            let advance = match windows.kind {
                WindowKind::Hopping { advance, .. } => advance,
                _ => size,
            };
            let mut spec = TimeWindows::of(ms(size))
                .advance_by(ms(advance))
                .grace(ms(windows.grace));
            if let Some(longer) = windows.keep_longer {
                spec = spec.retention(ms(size + windows.grace + longer));
            }
            aggregate_windows!(grouped.windowed_by(spec), windows)
        }
        WindowKind::Session { gap } => {
            let mut spec = SessionWindows::with_inactivity_gap(ms(gap)).grace(ms(windows.grace));
            if let Some(longer) = windows.keep_longer {
                spec = spec.retention(ms(gap + windows.grace + longer));
            }
            aggregate_windows!(grouped.windowed_by(spec), windows)
        }
        // Sliding windows leave the table when they close: no retention of their own.
        WindowKind::Sliding { difference } => {
            let spec = SlidingWindows::with_time_difference(ms(difference)).grace(ms(windows.grace));
            aggregate_windows!(grouped.windowed_by(spec), windows)
        }
    }
}

fn build(builder: &StreamsBuilder, pipeline: &Pipeline, partitions: i32) {
    let input: Topic<String, i64> = Topic::new(INPUT).partitions(partitions);
    let side: Topic<String, i64> = Topic::new(SIDE).partitions(partitions);
    // The side topic first: the sources' order is fixed (records never tie on time anyway).
    let side_table = match pipeline.terminal {
        Terminal::StreamTable { .. } | Terminal::TableTable { .. } => Some(builder.table(side, SIDE_STORE)),
        _ => None,
    };
    let mut stream = steps(builder.stream(input), &pipeline.pre);
    if let Some(buckets) = pipeline.rekey {
        stream = steps(
            stream.select_key(move |_, v| rekey(*v, buckets)).repartition("rekey"),
            &pipeline.post,
        );
    }
    match pipeline.terminal {
        Terminal::Aggregate(agg) => aggregate(stream.group_by_key(), agg).to_stream().to(OUT),
        Terminal::Windowed(windows) => windowed(stream.group_by_key(), windows).to_stream().to(OUT_WINDOWS),
        Terminal::StreamTable { left } => {
            let table = side_table.expect("side table");
            if left {
                stream
                    .left_join(&table, |_, v, row| joined(Some(*v), row.copied()))
                    .to(OUT);
            } else {
                stream.join(&table, |_, v, row| joined(Some(*v), Some(*row))).to(OUT);
            }
        }
        Terminal::TableTable { agg, kind } => {
            let left = aggregate(stream.group_by_key(), agg);
            let right = side_table.expect("side table");
            let result = match kind {
                JoinKind::Inner => left.join(&right, JOINED, |_, l, r| joined(Some(*l), Some(*r))),
                JoinKind::Left => left.left_join(&right, JOINED, |_, l, r| joined(Some(*l), r.copied())),
                JoinKind::Outer => left.outer_join(&right, JOINED, |_, l, r| joined(l.copied(), r.copied())),
            };
            result.to_stream().to(OUT);
        }
        Terminal::StreamStream {
            kind,
            before,
            after,
            grace,
        } => {
            let other = builder.stream(side);
            let windows = JoinWindows::of_time_difference_and_grace(ms(after), ms(grace)).before(ms(before));
            let joined_stream = match kind {
                JoinKind::Inner => stream.join_windowed(other, "pair", windows, |_, a, b| joined(Some(*a), Some(*b))),
                JoinKind::Left => {
                    stream.left_join_windowed(other, "pair", windows, |_, a, b| joined(Some(*a), b.copied()))
                }
                JoinKind::Outer => {
                    stream.outer_join_windowed(other, "pair", windows, |_, a, b| joined(a.copied(), b.copied()))
                }
            };
            joined_stream.to(OUT);
        }
    }
}

pub fn app(pipeline: &Pipeline, partitions: i32, knobs: &Knobs) -> App {
    let pipeline = pipeline.clone();
    let mut app = App::new(APP).table_cache_bytes(knobs.cache_bytes);
    if knobs.exactly_once {
        app = app.processing_guarantee(ProcessingGuarantee::ExactlyOnce);
    }
    app.pipeline("model", move |builder| build(builder, &pipeline, partitions))
}

fn owner(n: u8) -> String {
    format!("worker-{n}")
}

/// Runs the segments (input records, side records, and what follows them) on the engine.
pub async fn run(
    pipeline: &Pipeline,
    partitions: i32,
    knobs: &Knobs,
    segments: &[(Vec<Rec>, Vec<Rec>, Action)],
) -> Result<Actual> {
    let mut driver = TestDriver::new(app(pipeline, partitions, knobs))?;
    driver.ack_latency(Duration::from_millis(knobs.ack_latency_ms));
    driver.batch_size(knobs.batch);
    if let Some(ms) = knobs.commit_interval_ms {
        driver.commit_interval(Duration::from_millis(ms)).await;
    }
    driver.marker_latency(Duration::from_millis(knobs.marker_latency_ms));
    if let Some(committed) = knobs.commit_timeouts {
        driver.time_out_commits(2, committed);
    }
    let input: Topic<String, i64> = Topic::new(INPUT).partitions(partitions);
    let side: Topic<String, i64> = Topic::new(SIDE).partitions(partitions);
    let mut reprocessed: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for (records, side_records, action) in segments {
        if knobs.full_queue_ms > 0 {
            driver.full_queue_at_next_cut(Duration::from_millis(knobs.full_queue_ms));
        }
        for r in records {
            let (partition, offset) = driver.pipe_at(&input, &r.key, &r.value.unwrap_or(0), r.ts)?;
            ends.insert(partition, offset + 1);
        }
        for r in side_records {
            match r.value {
                Some(value) => {
                    driver.pipe_at(&side, &r.key, &value, r.ts)?;
                }
                None => {
                    driver.pipe_raw_at(SIDE, Some(r.key.as_bytes()), None, r.ts);
                }
            }
        }
        match *action {
            Action::Commit => driver.run().await?,
            Action::Move {
                stage,
                partition,
                owner: n,
            } => {
                driver.run().await?;
                let topic = stage_topic(pipeline, stage);
                driver.move_partition(topic, partition % partitions, &owner(n)).await?;
            }
            Action::Crash {
                stage,
                partition,
                owner: n,
                commits_fail,
                torn,
            } => {
                driver.fail_commits(commits_fail);
                driver.process().await?;
                let partition = partition % partitions;
                let topic = stage_topic(pipeline, stage);
                if topic == INPUT && pipeline.rekey.is_some() && !knobs.exactly_once {
                    // What the input stage sent since its commit is sent again.
                    let from = driver.committed(INPUT, partition).unwrap_or(0);
                    for offset in from..ends.get(&partition).copied().unwrap_or(0) {
                        *reprocessed.entry((partition, offset)).or_default() += 1;
                    }
                }
                match torn {
                    Some(stores) => {
                        driver
                            .crash_partition_while_writing(topic, partition, &owner(n), usize::from(stores))
                            .await?
                    }
                    None => driver.crash_partition(topic, partition, &owner(n)).await?,
                }
                driver.fail_commits(false);
            }
        }
    }
    driver.run().await?;
    let mut actual = Actual {
        reprocessed,
        late: driver.metrics().late.load(std::sync::atomic::Ordering::Relaxed),
        ..Actual::default()
    };
    match pipeline.terminal {
        Terminal::Aggregate(_) => actual.agg = driver.table(&AGG)?.into_iter().collect(),
        Terminal::TableTable { .. } => {
            actual.agg = driver.table(&AGG)?.into_iter().collect();
            actual.side = driver.table(&SIDE_STORE)?.into_iter().collect();
            actual.joined = driver.table(&JOINED)?.into_iter().collect();
        }
        Terminal::StreamTable { .. } => actual.side = driver.table(&SIDE_STORE)?.into_iter().collect(),
        Terminal::Windowed(_) => {
            for (window, value) in driver.windowed_table(&WIN)? {
                actual
                    .windows
                    .insert((window.key, window.window.start, window.window.end), value);
            }
            for (window, value) in driver.records(&OUT_WINDOWS)? {
                actual
                    .out_windows
                    .entry((window.key, window.window.start, window.window.end))
                    .or_default()
                    .push(value);
            }
        }
        Terminal::StreamStream { .. } => {}
    }
    for (key, value) in driver.records(&OUT)? {
        actual.out.entry(key).or_default().push(value);
    }
    Ok(actual)
}

/// The topic whose partition names a task of `stage`.
fn stage_topic(pipeline: &Pipeline, stage: Stage) -> &'static str {
    match (stage, pipeline.rekey) {
        (Stage::Rekeyed, Some(_)) => REPARTITION,
        _ => INPUT,
    }
}
