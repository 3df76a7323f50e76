//! `APP tail TOPIC`: a topic's records as they arrive, decoded with the app's types.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::app::App;
use crate::topic::TopicCodecs;
use crate::{Error, Result};

/// How to tail.
pub(crate) struct Tail {
    pub from_beginning: bool,
    pub limit: Option<u64>,
    pub exit_at_end: bool,
}

/// One record as text: `topic[partition]@offset key=… value=…`, then its headers.
fn show(codecs: Option<&TopicCodecs>, topic: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> String {
    let key = match (message.key(), codecs) {
        (None, _) => "-".to_string(),
        (Some(key), Some(codecs)) => match codecs.check_key(Some(key)) {
            Ok(()) => codecs.show_key(key),
            Err(error) => format!(
                "{} (not a key of the topic's type: {error})",
                String::from_utf8_lossy(key)
            ),
        },
        (Some(key), None) => String::from_utf8_lossy(key).into_owned(),
    };
    let value = match (message.payload(), codecs) {
        (None, _) => "(no value)".to_string(),
        (Some(value), Some(codecs)) => match codecs.check_value(value) {
            Ok(()) => String::from_utf8_lossy(value).into_owned(),
            Err(error) => format!(
                "{} (not a value of the topic's type: {error})",
                String::from_utf8_lossy(value)
            ),
        },
        (Some(value), None) => String::from_utf8_lossy(value).into_owned(),
    };
    let mut out = format!(
        "{topic}[{}]@{} key={key} value={value}",
        message.partition(),
        message.offset()
    );
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            out.push_str(&format!(
                "\n    {} = {}",
                header.key,
                String::from_utf8_lossy(header.value.unwrap_or_default())
            ));
        }
    }
    out
}

/// Prints `topic`'s records until `limit`, the end (with `exit_at_end`) or Ctrl-C.
pub(crate) fn tail(app: &App, broker: &str, topic: &str, how: Tail) -> Result<()> {
    let topics = app.topics();
    let codecs = topics.iter().find(|t| t.name == topic).map(|t| t.codecs);
    let consumer: BaseConsumer = crate::broker::client_config(broker, &[])
        .set("group.id", format!("{}-tail", app.id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create()
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
    while how.limit.is_none_or(|limit| shown < limit) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                println!("{}", show(codecs.as_ref(), topic, &message));
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
