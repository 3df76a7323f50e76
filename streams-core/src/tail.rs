//! `APP tail TOPIC`: a topic's records as they arrive, decoded with the app's types.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use std::io::Write;

use crate::app::App;
use crate::spec::KeyDisplay;
use crate::topic::TopicCodecs;
use crate::{Error, Result};

/// How to tail.
pub(crate) struct Tail {
    pub from_beginning: bool,
    pub limit: Option<u64>,
    pub exit_at_end: bool,
}

/// How a topic's keys and values are shown: with the app's types where it knows the topic.
enum Shown {
    /// A topic the app reads or sends to.
    Topic(TopicCodecs),
    /// A table's changelog (keys of the table's type, values JSON).
    Changelog(KeyDisplay),
    /// A dead-letter topic (keys of its task's first source's type, values as they came).
    DeadLetters(TopicCodecs),
    /// A topic the app does not know: text.
    Text,
}

impl Shown {
    fn of(app: &App, topic: &str) -> Self {
        if let Some(spec) = app.topics().into_iter().find(|t| t.name == topic) {
            return Shown::Topic(spec.codecs);
        }
        if let Some((table, _)) = app
            .tables()
            .into_iter()
            .find(|(table, _)| table.changelog_topic(app.id()) == topic)
        {
            return Shown::Changelog(table.show_key);
        }
        match app
            .tasks()
            .into_iter()
            .find(|task| task.dead_letter_topic == topic)
            .and_then(|task| task.sources.into_iter().next())
        {
            Some(source) => Shown::DeadLetters(source.codecs),
            None => Shown::Text,
        }
    }

    fn key(&self, key: &[u8]) -> String {
        let codecs = match self {
            Shown::Topic(codecs) | Shown::DeadLetters(codecs) => codecs,
            Shown::Changelog(show) => return printable(&(show.0)(key)),
            Shown::Text => return printable(&String::from_utf8_lossy(key)),
        };
        match codecs.check_key(Some(key)) {
            Ok(()) => printable(&codecs.show_key(key)),
            Err(error) => format!(
                "{} (not a key of the topic's type: {error})",
                printable(&String::from_utf8_lossy(key))
            ),
        }
    }

    fn value(&self, value: &[u8]) -> String {
        let text = printable(&String::from_utf8_lossy(value));
        match self {
            Shown::Topic(codecs) => match codecs.check_value(value) {
                Ok(()) => text,
                Err(error) => format!("{text} (not a value of the topic's type: {error})"),
            },
            _ => text,
        }
    }
}

/// Text with control characters escaped, so that what a record holds cannot drive the
/// terminal.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One record as text: `topic[partition]@offset key=… value=…`, then its headers.
fn show(shown: &Shown, topic: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> String {
    let key = message.key().map_or_else(|| "-".to_string(), |key| shown.key(key));
    let value = message
        .payload()
        .map_or_else(|| "(no value)".to_string(), |value| shown.value(value));
    let mut out = format!(
        "{topic}[{}]@{} key={key} value={value}",
        message.partition(),
        message.offset()
    );
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            out.push_str(&format!(
                "\n    {} = {}",
                printable(header.key),
                printable(&String::from_utf8_lossy(header.value.unwrap_or_default()))
            ));
        }
    }
    out
}

/// The tail consumer's context: reaching a partition's end is how a tail ends, not an
/// error to report (librdkafka reports it as one too).
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!("tail: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Prints `topic`'s records until `limit`, the end (with `exit_at_end`) or Ctrl-C.
pub(crate) fn tail(app: &App, broker: &str, config: &[(String, String)], topic: &str, how: Tail) -> Result<()> {
    let shown_as = Shown::of(app, topic);
    let consumer: BaseConsumer<Quiet> = crate::broker::client_config(broker, config)
        .set("group.id", format!("{}-tail", app.id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create_with_context(Quiet)
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("reading the metadata of {topic}"), e))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::Config(format!("topic `{topic}` does not exist on {broker}")))?;
    let mut list = TopicPartitionList::new();
    let start = if how.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, start)
            .map_err(|e| Error::kafka("tail", e))?;
    }
    consumer.assign(&list).map_err(|e| Error::kafka("tail", e))?;
    let mut shown = 0u64;
    let mut at_end = std::collections::BTreeSet::new();
    let stdout = std::io::stdout();
    while how.limit.is_none_or(|limit| shown < limit) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                let line = show(&shown_as, topic, &message);
                // A reader that went away (`tail … | head`) ends the tail, quietly.
                if writeln!(stdout.lock(), "{line}").is_err() {
                    return Ok(());
                }
                shown += 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
                if how.exit_at_end && at_end.len() == partitions as usize {
                    break;
                }
            }
            Some(Err(error)) => tracing::warn!("tail of {topic}: {error}"),
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    const READINGS: Topic<u64, f64> = Topic::new("readings");
    const RAW: Topic<u64, f64> = Topic::new("raw-readings");
    const LAST: Table<(String, u32), f64> = Table::new("last");

    #[agent(topic = READINGS, tables = [])]
    async fn ignore(mut readings: Stream<u64, f64>) {
        while readings.next().await.is_some() {}
    }

    fn app() -> App {
        App::new("probe").agent(ignore).pipeline("last", |builder| {
            builder
                .stream(RAW)
                .map(|id, celsius| (("probe".to_string(), id as u32), celsius))
                .repartition("by-probe")
                .group_by_key()
                .reduce(LAST, |_, latest| latest);
        })
    }

    #[test]
    fn keys_show_with_the_apps_types() {
        let app = app();
        assert!(app.validate().is_ok());
        let topic = Shown::of(&app, "readings");
        assert_eq!(topic.key(&42u64.to_be_bytes()), "42");
        assert!(topic.key(b"x").contains("not a key of the topic's type"));
        assert!(topic.value(b"nope").contains("not a value of the topic's type"));
        let key = ("probe".to_string(), 7u32).encode_key().unwrap_or_default();
        assert_eq!(Shown::of(&app, "probe-last-changelog").key(&key), "(probe, 7)");
        assert_eq!(Shown::of(&app, "probe-ignore-dlq").key(&7u64.to_be_bytes()), "7");
        assert_eq!(Shown::of(&app, "elsewhere").key(b"a\x1b[31mred"), "a\\u{1b}[31mred");
    }
}
