//! Global tables on a worker (the embedded broker): filled from their topic before the worker
//! processes anything, kept current while it runs, read again after a restart only from where
//! the store's checkpoint ends; records that do not decode go to the dead-letter topic once.

use std::time::Duration;

use streams_core::prelude::*;
use streams_core::{EmbeddedBroker, Worker};
use streams_tests::fx::{app, CONVERTED, DEAD_LETTERS, NUMBERS, RATES};
use streams_tests::{
    create_app_topics, produce, produce_raw, read_all, record_count, wait_until, worker_options, Child, Logged, Raw,
};

fn json(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// The converted values, in the order of their partitions and offsets.
fn converted(bootstrap: &str) -> Vec<(String, i64)> {
    read_all(bootstrap, CONVERTED.name())
        .into_iter()
        .map(|read| {
            let key = String::from_utf8(read.key.unwrap_or_default()).expect("utf8 key");
            let value = serde_json::from_slice(&read.value.unwrap_or_default()).expect("a number");
            (key, value)
        })
        .collect()
}

/// The value converted for `key`, once there is one.
fn wait_for(bootstrap: &str, key: &str) -> i64 {
    let probe = bootstrap.to_string();
    wait_until(&format!("the conversion of `{key}`"), Duration::from_secs(60), || {
        converted(&probe).iter().any(|(k, _)| k == key)
    });
    let all = converted(bootstrap);
    let values: Vec<i64> = all.iter().filter(|(k, _)| k == key).map(|(_, v)| *v).collect();
    assert_eq!(values.len(), 1, "`{key}` converted once: {all:?}");
    values[0]
}

fn rate(bootstrap: &str, value: i64) {
    produce(bootstrap, RATES.name(), &[(Some("eur".into()), json(value))]);
}

fn bad_rate(bootstrap: &str, partition: i32, key: &str) {
    produce_raw(
        bootstrap,
        RATES.name(),
        &[Raw {
            partition,
            key: key.into(),
            value: "not a rate".into(),
            headers: Vec::new(),
        }],
    );
}

fn number(bootstrap: &str, key: &str, value: i64) {
    produce(bootstrap, NUMBERS.name(), &[(Some(key.into()), json(value))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_table_is_filled_first_followed_and_read_on_from_its_checkpoint() {
    let logged = Logged::start();
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("dir");

    // Before the worker: a rate, a rate that does not decode, a number. The number is
    // converted with the rate only if the table is filled before the worker processes it.
    rate(&bootstrap, 2);
    bad_rate(&bootstrap, 1, "gbp");
    number(&bootstrap, "a", 21);
    let worker = Worker::start(app(), worker_options(dir.path(), &broker))
        .await
        .expect("worker");
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(wait_for(&b, "a"), 42, "the rate in the topic before the start");
        wait_until("the dead letter", Duration::from_secs(60), || {
            record_count(&b, DEAD_LETTERS) == 1
        });
        let dead = read_all(&b, DEAD_LETTERS);
        assert_eq!(dead[0].key.as_deref(), Some(b"gbp".as_slice()));
        assert_eq!(dead[0].value.as_deref(), Some(b"not a rate".as_slice()));
        assert_eq!(dead[0].headers["streams.dlq.topic"], "rates");
        assert_eq!(dead[0].headers["streams.dlq.partition"], "1");
        let at = read_all(&b, RATES.name())
            .into_iter()
            .find(|r| r.key.as_deref() == Some(b"gbp".as_slice()))
            .map(|r| r.offset.to_string());
        assert_eq!(Some(&dead[0].headers["streams.dlq.offset"]), at.as_ref());
        assert_eq!(dead[0].headers["streams.dlq.table"], "rates-table");
        assert_eq!(dead[0].headers["streams.dlq.stage"], "deserialization");

        // While it runs: a new rate reaches the copy (a number at a time until one sees
        // it), and the copy never goes back; a bad record then is a dead letter too.
        rate(&b, 3);
        bad_rate(&b, 0, "chf");
        let mut sent = 0;
        let mut seen = 0;
        while seen != 30 {
            assert!(sent < 600, "the new rate never reached the global table");
            let key = format!("b{sent}");
            number(&b, &key, 10);
            sent += 1;
            seen = wait_for(&b, &key);
            assert!(seen == 20 || seen == 30, "{key}: {seen}");
        }
        for i in 0..5 {
            let key = format!("c{i}");
            number(&b, &key, 10);
            assert_eq!(wait_for(&b, &key), 30, "after the new rate was seen");
        }
        wait_until("the second dead letter", Duration::from_secs(60), || {
            record_count(&b, DEAD_LETTERS) == 2
        });
    })
    .await
    .expect("first run");
    worker.stop().await.expect("stop");

    // While no worker runs: a new rate and a number. The restart reads the new rate before
    // the number, and not the bad records again (the checkpoint counts them as done).
    rate(&bootstrap, 5);
    number(&bootstrap, "d", 7);
    let worker = Worker::start(app(), worker_options(dir.path(), &broker))
        .await
        .expect("worker again");
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            wait_for(&b, "d"),
            35,
            "the rate sent while stopped, read before processing"
        );
        number(&b, "e", 1);
        assert_eq!(wait_for(&b, "e"), 5);
        let dead = read_all(&b, DEAD_LETTERS);
        let mut keys: Vec<_> = dead.iter().map(|r| r.key.clone().unwrap_or_default()).collect();
        keys.sort();
        assert_eq!(keys, vec![b"chf".to_vec(), b"gbp".to_vec()], "each bad record once");
    })
    .await
    .expect("second run");
    worker.stop().await.expect("stop again");

    // Its consumer reads to the partitions' ends (to know when the table is filled); an end
    // reached is no error to report, each time a record brings the copy up to date.
    let ends: Vec<String> = logged
        .lines()
        .into_iter()
        .filter(|line| line.contains("PartitionEOF") || line.contains("end of partition"))
        .collect();
    assert!(ends.is_empty(), "ends of partitions logged: {ends:#?}");
}

/// With `OnError::Fail`, a global table's record that does not decode stops the worker, and
/// stays unread: the worker started again stops again (the table's checkpoint does not pass
/// it), as Kafka Streams' `LogAndFailExceptionHandler` leaves the record for the next start.
/// The record is in the topic before the first start, or comes while the worker runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_tables_bad_record_stops_the_worker_at_every_start_with_fail() {
    Logged::start();
    let app = || app().on_deserialization_error(OnError::Fail);
    let stops = |start: &str, ended: streams_core::Result<_>| {
        let error = ended
            .err()
            .unwrap_or_else(|| panic!("{start}: the worker stops"))
            .to_string();
        assert!(
            error.contains("global table `rates-table`") && error.contains("rates[1]@"),
            "{start}: {error}"
        );
    };
    for while_running in [false, true] {
        let broker = EmbeddedBroker::start().expect("broker");
        create_app_topics(&broker, &app());
        let bootstrap = broker.bootstrap_servers().to_string();
        let dir = tempfile::tempdir().expect("dir");
        rate(&bootstrap, 2);
        if !while_running {
            bad_rate(&bootstrap, 1, "gbp");
        }
        rate(&bootstrap, 3);
        number(&bootstrap, "a", 21);
        let mut starts = vec!["the first start", "the second start"];
        if while_running {
            let worker = Worker::start(app(), worker_options(dir.path(), &broker))
                .await
                .expect("a worker without the bad record");
            let b = bootstrap.clone();
            tokio::task::spawn_blocking(move || {
                assert_eq!(wait_for(&b, "a"), 63);
                bad_rate(&b, 1, "gbp");
            })
            .await
            .expect("first conversion");
            let ended = tokio::time::timeout(Duration::from_secs(60), worker.wait())
                .await
                .expect("the worker stops at the bad record that came while it ran");
            stops("the bad record while running", ended);
            starts = vec!["the start after it"];
        }
        for start in starts {
            let ended = match Worker::start(app(), worker_options(dir.path(), &broker)).await {
                Err(error) => Err(error),
                Ok(worker) => tokio::time::timeout(Duration::from_secs(60), worker.wait())
                    .await
                    .unwrap_or_else(|_| panic!("{start} went on past the bad record")),
            };
            stops(start, ended);
        }
    }
}

/// A bad record that comes while the worker runs is dead-lettered once, even when nothing
/// comes after it before the worker is killed: the table's position past it is written
/// within a moment, as after any other record, not only with the next record that decodes.
#[test]
fn a_dead_letter_is_sent_once_though_the_worker_is_killed_after_it() {
    Logged::start();
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().to_str().expect("utf8").to_string();
    let worker = || {
        Child::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_fx")),
            &["worker", "--broker", &bootstrap, "--data-dir", &data_dir, "--no-web"],
        )
    };
    rate(&bootstrap, 2);
    number(&bootstrap, "a", 21);
    let mut first = worker();
    assert_eq!(wait_for(&bootstrap, "a"), 42);
    bad_rate(&bootstrap, 1, "gbp");
    wait_until("the dead letter", Duration::from_secs(60), || {
        record_count(&bootstrap, DEAD_LETTERS) == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    first.process.kill().expect("kill");
    let _ = first.process.wait();

    let mut second = worker();
    number(&bootstrap, "b", 1);
    assert_eq!(wait_for(&bootstrap, "b"), 2, "{}", second.output());
    assert_eq!(
        record_count(&bootstrap, DEAD_LETTERS),
        1,
        "the bad record was dead-lettered again after the restart"
    );
    second.terminate();
    assert_eq!(second.wait(Duration::from_secs(60)), Some(0), "{}", second.output());
}

/// A worker whose second global table cannot be filled (a bad record under `OnError::Fail`)
/// does not start, and leaves nothing running: the first table's thread stops and closes its
/// store, so a worker started again in the same process opens it and stops at the same
/// record, not at a store still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_second_global_table_cannot_fill_leaves_the_first_closed() {
    const FEES: Topic<String, i64> = Topic::new("fees").partitions(1);
    const FEES_TABLE: Table<String, i64> = Table::new("fees-table");
    Logged::start();
    let app = || {
        App::new("fx2")
            .on_deserialization_error(OnError::Fail)
            .pipeline("convert", |builder| {
                let rates = builder.global_table(RATES, streams_tests::fx::RATES_TABLE);
                let fees = builder.global_table(FEES, FEES_TABLE);
                builder
                    .stream(NUMBERS)
                    .join_global(&rates, |_, _| "eur".to_string(), |_, n, rate| n * rate)
                    .join_global(&fees, |_, _| "eur".to_string(), |_, n, fee| n + fee)
                    .to(CONVERTED);
            })
    };
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("dir");
    rate(&bootstrap, 2);
    produce_raw(
        &bootstrap,
        FEES.name(),
        &[Raw {
            partition: 0,
            key: "eur".into(),
            value: "not a fee".into(),
            headers: Vec::new(),
        }],
    );
    for start in ["first", "second"] {
        let error = match Worker::start(app(), worker_options(dir.path(), &broker)).await {
            Err(error) => error.to_string(),
            Ok(worker) => {
                let _ = worker.stop().await;
                panic!("the {start} start went on past the bad fee");
            }
        };
        assert!(
            error.contains("global table `fees-table`") && error.contains("fees[0]@0"),
            "{start} start: {error}"
        );
    }
}
