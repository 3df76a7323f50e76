//! Records taken from librdkafka together, put into their partitions' batches (the poll
//! thread's side of a hand-over): in order, each batch with only its own partition's
//! records.
//!
//! A take holds runs of one partition's records (librdkafka queues a fetch's records
//! partition by partition). A run's batch is looked up once, by its first record's topic
//! name; the records after it in the run are known by their topic handle's address and
//! their partition, and room is made for the run at once (grown a record at a time, a batch
//! was copied over as it doubled).

use crate::message::RawMessage;

/// Batches of records by topic and partition, in the order first seen.
pub(crate) type Batches<T> = Vec<(String, i32, Vec<T>)>;

/// A record, or a consumer error, as a take holds it.
pub(crate) trait Taken {
    /// Whether it is a record (not a consumer error).
    fn is_record(&self) -> bool;
    /// The address of its topic's handle: for two records of one client alive at the same
    /// time, equal only when they are of one topic (see [`RawMessage::topic_address`]).
    fn topic_address(&self) -> usize;
    /// Its topic's name.
    fn topic(&self) -> &str;
    /// Its partition.
    fn partition(&self) -> i32;
}

impl Taken for RawMessage {
    fn is_record(&self) -> bool {
        self.error().is_none()
    }

    fn topic_address(&self) -> usize {
        RawMessage::topic_address(self)
    }

    fn topic(&self) -> &str {
        RawMessage::topic(self)
    }

    fn partition(&self) -> i32 {
        RawMessage::partition(self)
    }
}

/// Puts the records of `taken` (leaving it empty) into their batches in `pending`, in order,
/// each made by `keep`; what is not a record goes to `skip`. Returns how many records there
/// were.
pub(crate) fn into_batches<M: Taken, T>(
    pending: &mut Batches<T>,
    taken: &mut Vec<M>,
    mut skip: impl FnMut(M),
    mut keep: impl FnMut(M) -> T,
) -> usize {
    let mut records = 0;
    // The batch of the record before, with its topic's address and its partition. Every
    // record of the take was alive when it began (each holds its topic's handle), so two of
    // its records of different topics never share an address.
    let mut last: Option<(usize, usize, i32)> = None;
    let mut messages = taken.drain(..);
    while let Some(message) = messages.next() {
        if !message.is_record() {
            skip(message);
            continue;
        }
        records += 1;
        let (address, partition) = (message.topic_address(), message.partition());
        let index = match last {
            Some((index, topic, p)) if topic == address && p == partition => index,
            _ => {
                let index = batch_of(pending, message.topic(), partition);
                let run = messages
                    .as_slice()
                    .iter()
                    .take_while(|next| next.topic_address() == address && next.partition() == partition)
                    .count();
                pending[index].2.reserve(run + 1);
                index
            }
        };
        last = Some((index, address, partition));
        pending[index].2.push(keep(message));
    }
    records
}

/// The index of `topic[partition]`'s batch among the pending ones, added if missing.
pub(crate) fn batch_of<T>(pending: &mut Batches<T>, topic: &str, partition: i32) -> usize {
    match pending.iter().position(|(t, p, _)| *p == partition && t == topic) {
        Some(index) => index,
        None => {
            pending.push((topic.to_string(), partition, Vec::new()));
            pending.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{into_batches, Batches, Taken};
    use proptest::prelude::*;

    /// A record or error of a take: its topic (one of three names), the address of its
    /// topic's handle, its partition and its place in the take.
    #[derive(Debug, Clone)]
    struct Fake {
        record: bool,
        topic: &'static str,
        address: usize,
        partition: i32,
        id: usize,
    }

    impl Taken for Fake {
        fn is_record(&self) -> bool {
            self.record
        }
        fn topic_address(&self) -> usize {
            self.address
        }
        fn topic(&self) -> &str {
            self.topic
        }
        fn partition(&self) -> i32 {
            self.partition
        }
    }

    const TOPICS: [&str; 3] = ["a", "b", "a.b"];

    /// Takes as librdkafka hands them over: runs of one partition's records (1 to 5, runs
    /// side by side of one partition making longer ones), partitions of one number in
    /// several topics, errors after a run or inside it (a partition's end, of the run's
    /// partition or another), and in some longer runs a second handle for a name (one
    /// client makes one per name; another's would differ).
    fn take() -> impl Strategy<Value = Vec<Fake>> {
        let run = (0..3usize, 0..3i32, 1..6usize, any::<bool>(), 0..10u8);
        proptest::collection::vec(run, 0..12).prop_map(|runs| {
            let mut take = Vec::new();
            for (topic, partition, length, other_handle, error) in runs {
                for at in 0..length {
                    if error == 9 && at == length / 2 {
                        // An error inside a run (another partition's end).
                        take.push(Fake {
                            record: false,
                            topic: TOPICS[topic],
                            address: 16 * (topic + 1),
                            partition: partition + 1,
                            id: take.len(),
                        });
                    }
                    take.push(Fake {
                        record: true,
                        topic: TOPICS[topic],
                        address: 16 * (topic + 1) + usize::from(other_handle && length > 3),
                        partition,
                        id: take.len(),
                    });
                }
                if error < 3 {
                    take.push(Fake {
                        record: false,
                        topic: TOPICS[topic],
                        address: 16 * (topic + 1),
                        partition: partition + i32::from(error == 0),
                        id: take.len(),
                    });
                }
            }
            take
        })
    }

    proptest! {
        /// Whatever a take holds, and whatever batches are pending from takes before it,
        /// each record ends in its own topic's and partition's batch, after what was there,
        /// in the take's order; errors go aside; the count is the records'.
        #[test]
        fn each_record_goes_to_its_partitions_batch_in_order(
            takes in proptest::collection::vec(take(), 1..4),
        ) {
            let mut pending: Batches<usize> = Vec::new();
            let mut model: Batches<usize> = Vec::new();
            for (n, take) in takes.into_iter().enumerate() {
                // Ids apart from the takes before's.
                let take: Vec<Fake> = take.into_iter().map(|fake| Fake { id: fake.id + 1000 * n, ..fake }).collect();
                let records = take.iter().filter(|m| m.record).count();
                let errors: Vec<usize> = take.iter().filter(|m| !m.record).map(|m| m.id).collect();
                // The model: a linear search by name and partition, a batch added at the end.
                for fake in take.iter().filter(|m| m.record) {
                    match model.iter_mut().find(|(t, p, _)| t.as_str() == fake.topic && *p == fake.partition) {
                        Some((_, _, batch)) => batch.push(fake.id),
                        None => model.push((fake.topic.to_string(), fake.partition, vec![fake.id])),
                    }
                }
                let mut taken = take;
                let mut skipped = Vec::new();
                let counted = into_batches(&mut pending, &mut taken, |m| skipped.push(m.id), |m| m.id);
                prop_assert_eq!(counted, records);
                prop_assert!(taken.is_empty());
                prop_assert_eq!(skipped, errors);
                prop_assert_eq!(&pending, &model);
            }
        }
    }
}
