//! Changelogs: every table change is a record on `{app}-{table}-changelog` (key: the table
//! key, value: the JSON value, no value: deleted), carrying in headers the source
//! topic/partition/offset that produced it. A store is restored from its changelog, starting
//! after its checkpoint and skipping changes made by input the group never committed
//! (ARCHITECTURE.md §3), so a crash between a changelog write and an offset commit cannot
//! count twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::store::{Checkpoint, StateStore};
use crate::{Error, Result};

/// Header naming the topic of the record that caused a change.
pub const SOURCE_TOPIC: &str = "streams.source.topic";
/// Header naming the partition of the record that caused a change.
pub const SOURCE_PARTITION: &str = "streams.source.partition";
/// Header naming the offset of the record that caused a change.
pub const SOURCE_OFFSET: &str = "streams.source.offset";

pub(crate) fn source_headers(topic: &str, partition: i32, offset: i64) -> Vec<(String, Vec<u8>)> {
    vec![
        (SOURCE_TOPIC.to_string(), topic.as_bytes().to_vec()),
        (SOURCE_PARTITION.to_string(), partition.to_string().into_bytes()),
        (SOURCE_OFFSET.to_string(), offset.to_string().into_bytes()),
    ]
}

fn source_offset(message: &BorrowedMessage<'_>) -> Option<i64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == SOURCE_OFFSET)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

const BATCH: usize = 10_000;

/// Shows how a restore goes: a progress bar when stderr is a terminal, else a log line
/// (records restored / total and the rate) every two seconds.
struct Progress {
    label: String,
    total: u64,
    began: Instant,
    logged: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(topic: &str, partition: i32, total: u64) -> Self {
        use std::io::IsTerminal;
        let label = format!("{topic}[{partition}]");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "restoring {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
            );
            if let Ok(style) = style {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            bar
        });
        Self {
            label,
            total,
            began: Instant::now(),
            logged: Instant::now(),
            bar,
        }
    }

    fn at(&mut self, position: u64) {
        if let Some(bar) = &self.bar {
            if position.is_multiple_of(1024) {
                bar.set_position(position);
            }
        } else if self.logged.elapsed() >= Duration::from_secs(2) {
            self.logged = Instant::now();
            let rate = position as f64 / self.began.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "restoring {}: {position}/{} records ({rate:.0}/s)",
                self.label,
                self.total
            );
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Reads changelog partitions into stores. One per worker; not a member of any group.
pub(crate) struct Restorer {
    consumer: BaseConsumer,
}

impl Restorer {
    pub(crate) fn new(config: &ClientConfig) -> Result<Self> {
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            .set("group.id", "streams-restore")
            .set("isolation.level", "read_committed");
        let consumer = config
            .create()
            .map_err(|e| Error::kafka("creating the restore consumer", e))?;
        Ok(Self { consumer })
    }

    /// The partition's watermarks, retried until the broker answers; `None` when cancelled.
    fn watermarks(&self, topic: &str, partition: i32, cancel: &AtomicBool) -> Option<(i64, i64)> {
        let mut attempt = 0u32;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            match self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
            {
                Ok(marks) => return Some(marks),
                Err(error) => {
                    attempt += 1;
                    let wait = Duration::from_millis(200 * u64::from(attempt.min(25)));
                    tracing::warn!(
                        "restore of {topic}[{partition}]: cannot read its end offset ({error}); retrying in {wait:?}"
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Restores `store` from `topic[partition]`, from its checkpoint to the end. Changes
    /// whose source offset is at or past `skip_from` are not applied (their input was never
    /// committed and will be processed again). Stops early when `cancel` is set, keeping what
    /// it applied with its checkpoint. Returns the number of records applied.
    pub(crate) fn restore(
        &self,
        store: &dyn StateStore,
        topic: &str,
        partition: i32,
        skip_from: Option<i64>,
        cancel: &AtomicBool,
    ) -> Result<u64> {
        let checkpoint = store.checkpoint()?;
        let Some((low, high)) = self.watermarks(topic, partition, cancel) else {
            return Ok(0);
        };
        let start = checkpoint.changelog_offset.map_or(low, |offset| (offset + 1).max(low));
        if start >= high {
            tracing::debug!(
                "{topic}[{partition}]: store is up to date (checkpoint {:?})",
                checkpoint.changelog_offset
            );
            return Ok(0);
        }
        let total = high - start;
        tracing::info!("restoring {topic}[{partition}]: {total} records from offset {start}");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| Error::kafka("restore", e))?;
        self.consumer.assign(&list).map_err(|e| Error::kafka("restore", e))?;
        let began = Instant::now();
        let mut last_progress = Instant::now();
        let mut progress = Progress::new(topic, partition, total as u64);
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(BATCH.min(total as usize));
        let mut last = start - 1;
        let mut applied = 0u64;
        let mut skipped = 0u64;
        let mut cancelled = false;
        while last < high - 1 {
            if cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break;
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last = message.offset();
                    last_progress = Instant::now();
                    progress.at((last - start + 1) as u64);
                    let from_uncommitted =
                        matches!((skip_from, source_offset(&message)), (Some(limit), Some(source)) if source >= limit);
                    if from_uncommitted {
                        skipped += 1;
                        continue;
                    }
                    let Some(key) = message.key() else { continue };
                    batch.push((key.to_vec(), message.payload().map(<[u8]>::to_vec)));
                    applied += 1;
                    if batch.len() >= BATCH {
                        let checkpoint = Checkpoint {
                            changelog_offset: Some(last),
                            source_offset: None,
                        };
                        store.write(&batch, checkpoint)?;
                        batch.clear();
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => tracing::warn!("restore of {topic}[{partition}]: {error}"),
                None => {
                    if last_progress.elapsed() > Duration::from_secs(10) {
                        tracing::warn!(
                            "restore of {topic}[{partition}] waiting: at offset {} of {high}; the broker is not sending records",
                            last + 1
                        );
                        last_progress = Instant::now();
                    }
                }
            }
        }
        // Read to the end: the checkpoint is the end (records past `last` may have been
        // compacted away). Cancelled: only what was read.
        let end = if cancelled { last } else { last.max(high - 1) };
        if end >= start {
            let checkpoint = Checkpoint {
                changelog_offset: Some(end),
                source_offset: None,
            };
            store.write(&batch, checkpoint)?;
        }
        progress.done();
        self.consumer.unassign().map_err(|e| Error::kafka("restore", e))?;
        if cancelled {
            tracing::info!(
                "restore of {topic}[{partition}] stopped (partition revoked): {applied} records applied; \
                 a restore here resumes from offset {}",
                end.max(start - 1) + 1
            );
            return Ok(applied);
        }
        let seconds = began.elapsed().as_secs_f64();
        tracing::info!(
            "restored {topic}[{partition}]: {applied} records applied, {skipped} from uncommitted input skipped, in {seconds:.2}s ({:.0} records/s)",
            (applied + skipped) as f64 / seconds.max(1e-9)
        );
        Ok(applied)
    }
}
