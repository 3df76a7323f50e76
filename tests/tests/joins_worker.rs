//! The `page_views` example as users run it: its inputs produced before the worker starts,
//! on the embedded broker with 4 partitions for the views and users and 2 for the ads; the
//! worker takes the records of both sides of each join in timestamp order, so the results
//! are those of the inputs' event times, whichever fetch arrives first.

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::{EmbeddedBroker, Record};
use streams_tests::page_views::{AdEvent, Attributed, PageView, User};
use streams_tests::{create_app_topics, example_binary, produce_at, read_all, Child};

const BASE: i64 = 1_764_000_000_000;

#[test]
fn page_views_joins_inputs_produced_before_it_starts() {
    streams_core::init_logging("error");
    let broker = EmbeddedBroker::start().expect("broker");
    for (topic, partitions) in [("users", 4), ("page-views", 4), ("ad-impressions", 2), ("ad-clicks", 2)] {
        broker.create_topic(topic, partitions).expect("topic");
    }
    create_app_topics(&broker, &streams_tests::page_views::app());
    let bootstrap = broker.bootstrap_servers().to_string();

    // Users u0..u49 in regions r0..r4 at BASE; u0..u9 move at BASE + 2500; u10 is deleted at
    // BASE + 3000; u50..u59 never have a row. Views at odd times, every user in turn.
    let mut rows: Vec<(String, Option<Vec<u8>>, i64)> = (0..50)
        .map(|u| {
            (
                format!("u{u}"),
                Some(json(&User {
                    region: format!("r{}", u % 5),
                })),
                BASE,
            )
        })
        .collect();
    rows.extend((0..10).map(|u| {
        (
            format!("u{u}"),
            Some(json(&User { region: "moved".into() })),
            BASE + 2500,
        )
    }));
    rows.push(("u10".into(), None, BASE + 3000));
    let views: Vec<(String, Option<Vec<u8>>, i64)> = (0..3000i64)
        .map(|i| {
            let ts = BASE + 1000 + 2 * i + 1;
            (
                format!("u{}", i % 60),
                Some(json(&PageView {
                    page: format!("/{i}"),
                    ts,
                })),
                ts,
            )
        })
        .collect();
    let region_at = |user: usize, ts: i64| -> String {
        match user {
            0..=9 if ts > BASE + 2500 => "moved".into(),
            10 if ts > BASE + 3000 => "unknown".into(),
            0..=49 => format!("r{}", user % 5),
            _ => "unknown".into(),
        }
    };
    let mut truth: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..3000i64 {
        *truth
            .entry(region_at((i % 60) as usize, BASE + 1000 + 2 * i + 1))
            .or_default() += 1;
    }
    // Views go first: only time order makes them meet the rows they need.
    produce_at(&bootstrap, "page-views", &views);
    produce_at(&bootstrap, "users", &rows);

    // Ads: impressions and clicks of 20 ads, 7 s and 11 s apart.
    let impressions: Vec<(String, i64, String)> = (0..400i64)
        .map(|i| (format!("a{}", i % 20), BASE + 7_000 * i, format!("v{i}")))
        .collect();
    let clicks: Vec<(String, i64, String)> = (0..300i64)
        .map(|i| (format!("a{}", i % 20), BASE + 11_000 * i + 500, format!("c{i}")))
        .collect();
    let events = |list: &[(String, i64, String)]| -> Vec<(String, Option<Vec<u8>>, i64)> {
        list.iter()
            .map(|(ad, ts, user)| {
                (
                    ad.clone(),
                    Some(json(&AdEvent {
                        user: user.clone(),
                        ts: *ts,
                    })),
                    *ts,
                )
            })
            .collect()
    };
    produce_at(&bootstrap, "ad-clicks", &events(&clicks));
    produce_at(&bootstrap, "ad-impressions", &events(&impressions));
    let mut pairs: Vec<(String, Attributed)> = Vec::new();
    for (ad, click_ts, user) in &clicks {
        for (other, impression_ts, _) in &impressions {
            if ad == other && (click_ts - impression_ts).abs() <= 30_000 {
                let attributed = Attributed {
                    impression_ts: *impression_ts,
                    click_ts: *click_ts,
                    user: user.clone(),
                };
                pairs.push((ad.clone(), attributed));
            }
        }
    }
    assert!(pairs.len() > 50, "the model has pairs: {}", pairs.len());

    let dir = tempfile::tempdir().expect("tempdir");
    let mut worker = Child::spawn(
        &example_binary("page_views"),
        &[
            "worker",
            "-l",
            "info",
            "--broker",
            &bootstrap,
            "--data-dir",
            dir.path().to_str().expect("utf8"),
            "--idle-exit",
            "4",
        ],
    );
    assert_eq!(
        worker.wait(Duration::from_secs(240)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );

    let mut counted: BTreeMap<String, i64> = BTreeMap::new();
    for record in read_all(&bootstrap, "views-per-region") {
        let region = String::from_utf8(record.key.expect("key")).expect("utf8");
        let count: i64 = serde_json::from_slice(&record.value.expect("value")).expect("a JSON number");
        counted.insert(region, count);
    }
    assert_eq!(counted, truth, "views per region, as of each view's time");

    let mut got: Vec<(String, Attributed)> = read_all(&bootstrap, "ad-clicks-attributed")
        .into_iter()
        .map(|record| {
            let ad = String::from_utf8(record.key.expect("key")).expect("utf8");
            (
                ad,
                serde_json::from_slice(&record.value.expect("value")).expect("Attributed"),
            )
        })
        .collect();
    let key = |(ad, a): &(String, Attributed)| (ad.clone(), a.impression_ts, a.click_ts);
    got.sort_by_key(key);
    pairs.sort_by_key(key);
    assert_eq!(got.len(), pairs.len());
    assert_eq!(got, pairs, "one record per matching (impression, click) pair");
}

/// A record as JSON bytes.
fn json<T: Record>(value: &T) -> Vec<u8> {
    value.encode().expect("json")
}
