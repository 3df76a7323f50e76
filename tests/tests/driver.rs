//! The test driver: the app's real agents, no broker. The hit counter, the dead-letter path,
//! agents that fail or panic, and every stream operation (`next`, `next_event`, `origin`).

use std::time::Duration;

use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_examples::seed;
use streams_tests::hit_counter::{app, HitCount, COUNT_TOPIC, HIT_COUNT, MAJOR_COUNT};

fn hit(hits: i64, user: &str) -> HitCount {
    HitCount {
        hits,
        timestamp: 1.0,
        user_id: user.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_counter_counts_exactly() {
    let records = seed::hits(42, 10_000);
    let expected = seed::expected_counts(&records);
    let mut driver = TestDriver::with_partitions(app(), &[("hit_count", 4)]).expect("driver");
    for record in &records {
        driver.pipe_raw("hit_count", None, Some(record.to_string().as_bytes()));
    }
    driver.run().await.expect("run");

    assert_eq!(driver.table(&MAJOR_COUNT).expect("table"), expected);
    let major = driver.records(&COUNT_TOPIC).expect("count_topic");
    assert_eq!(major.len() as i64, expected.values().sum::<i64>());
    assert!(major.iter().all(|(user, hit)| *user == hit.user_id && hit.hits > 20));
    // Keyed by user: every user's hits are in one partition of count_topic.
    for user in expected.keys() {
        let partitions: std::collections::BTreeSet<i32> = driver
            .raw_records("count_topic")
            .iter()
            .filter(|r| r.key.as_deref() == Some(user.as_bytes()))
            .map(|r| r.partition)
            .collect();
        assert_eq!(partitions.len(), 1, "{user} in {partitions:?}");
    }
    for partition in 0..4 {
        let len = driver
            .raw_records("hit_count")
            .iter()
            .filter(|r| r.partition == partition)
            .count() as i64;
        assert_eq!(
            driver.committed("hit_count", partition),
            Some(len),
            "hit_count[{partition}] committed"
        );
    }
    // The changelog holds every user's latest count.
    let changelog = driver.raw_records("hit_counter-major-count-changelog");
    for (user, count) in &expected {
        let last = changelog
            .iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(user.as_bytes()))
            .expect("in changelog");
        assert_eq!(last.value.as_deref(), Some(count.to_string().as_bytes()));
        let cut = last.cut().expect("the cut's header");
        assert_eq!(cut.sources.len(), 1, "{cut:?}");
        assert_eq!(cut.sources[0].0, "count_topic");
        assert_eq!(last.headers.len(), 1, "one header: {:?}", last.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic() {
    let mut driver = TestDriver::with_partitions(app(), &[("hit_count", 2)]).expect("driver");
    driver.pipe(&HIT_COUNT, &(), &hit(30, "ann")).expect("pipe");
    let bad: [&[u8]; 4] = [
        b"{\"hits\": ",
        b"{\"hits\": \"x\", \"timestamp\": 1, \"userId\": \"a\"}",
        b"{\"hits\": 1}",
        b"",
    ];
    for value in bad {
        driver.pipe_raw("hit_count", Some(b"bad"), Some(value));
    }
    driver.pipe(&HIT_COUNT, &(), &hit(40, "ann")).expect("pipe");
    driver.run().await.expect("run");

    assert_eq!(driver.table(&MAJOR_COUNT).expect("table").get("ann"), Some(&2));
    let dead = driver.dead_letters("find_major_hits");
    assert_eq!(dead.len(), 4);
    for record in &dead {
        assert_eq!(record.key.as_deref(), Some(b"bad".as_slice()));
        assert!(
            bad.contains(&record.value.as_deref().unwrap_or_default()),
            "value unchanged"
        );
        assert_eq!(record.header("streams.dlq.topic"), Some("hit_count"));
        assert_eq!(record.header("streams.dlq.agent"), Some("find_major_hits"));
        assert!(record.header("streams.dlq.offset").is_some());
        assert!(!record.header("streams.dlq.error").unwrap_or_default().is_empty());
    }
    let errors: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.error")).collect();
    assert!(errors.iter().any(|e| e.contains("empty value")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("missing field")), "{errors:?}");
    assert_eq!(
        driver
            .metrics()
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Order {
    id: u32,
    amount: i64,
}

const ORDERS: Topic<String, Order> = Topic::new("orders");
const UNDECLARED: Topic<String, Order> = Topic::new("undeclared");
const TOTALS: Table<String, i64> = Table::new("totals");

/// Fails on negative amounts, panics on zero, sends to a topic it did not declare for id 99.
#[agent(topic = ORDERS, tables = [TOTALS])]
async fn picky(mut orders: Stream<String, Order>) -> Result<(), String> {
    while let Some(event) = orders.next_event().await {
        let order = event.value;
        if order.amount < 0 {
            return Err(format!("negative amount in order {}", order.id));
        }
        assert!(order.amount != 0, "order {} has no amount", order.id);
        if order.id == 99 {
            UNDECLARED.send(&event.key, &order).await.map_err(|e| e.to_string())?;
        }
        TOTALS
            .update(&event.key, |t| *t += order.amount)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_agents_lose_one_record_not_the_partition() {
    let mut driver = TestDriver::with_partitions(App::new("shop").agent(picky), &[("orders", 1)]).expect("driver");
    let amounts = [10, -5, 20, 0, 30];
    for (id, amount) in amounts.iter().enumerate() {
        driver
            .pipe(
                &ORDERS,
                &"eve".to_string(),
                &Order {
                    id: id as u32,
                    amount: *amount,
                },
            )
            .expect("pipe");
    }
    driver
        .pipe(&ORDERS, &"eve".to_string(), &Order { id: 99, amount: 1 })
        .expect("pipe");
    driver.run().await.expect("run");

    assert_eq!(driver.table(&TOTALS).expect("table").get("eve"), Some(&60));
    let dead = driver.dead_letters("picky");
    let errors: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.error")).collect();
    assert_eq!(dead.len(), 3, "{errors:?}");
    assert!(errors[0].contains("negative amount in order 1"), "{errors:?}");
    assert!(errors[1].contains("panic: order 3 has no amount"), "{errors:?}");
    assert!(errors[2].contains("without declaring it"), "{errors:?}");
    assert_eq!(dead[0].header("streams.dlq.offset"), Some("1"));
    assert_eq!(driver.committed("orders", 0), Some(6));
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Ping {
    n: u32,
}

const PINGS: Topic<u64, Ping> = Topic::new("pings").partitions(2);
const SEEN: Topic<String, String> = Topic::new("seen");

/// Reports each record's key, origin and timestamp.
#[agent(topic = PINGS, sends = [SEEN])]
async fn describe(mut pings: Stream<u64, Ping>) -> Result<()> {
    while let Some(event) = pings.next_event().await {
        let origin = pings.origin().expect("origin of the current record");
        assert_eq!(origin, event.origin);
        let line = format!(
            "{} {} @{} t={:?}",
            event.key, event.value.n, event.origin, event.timestamp
        );
        SEEN.send(&event.key.to_string(), &line).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_key_origin_and_time() {
    let mut driver = TestDriver::new(App::new("ping").agent(describe)).expect("driver");
    assert_eq!(driver.partitions("pings"), 2);
    let (partition, offset) = driver.pipe(&PINGS, &7, &Ping { n: 1 }).expect("pipe");
    driver.advance_time(Duration::from_secs(5));
    driver.pipe(&PINGS, &7, &Ping { n: 2 }).expect("pipe");
    driver.run().await.expect("run");
    let seen: Vec<String> = driver
        .records(&SEEN)
        .expect("seen")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        seen,
        vec![
            format!("7 1 @pings[{partition}]@{offset} t=Some(0)"),
            format!("7 2 @pings[{partition}]@{} t=Some(5000)", offset + 1),
        ]
    );
}

const USERS: Topic<String, i64> = Topic::new("users").partitions(1);
const PER_USER: Table<String, i64> = Table::new("per-user");

#[agent(topic = USERS, tables = [PER_USER])]
async fn count_users(mut users: Stream<String, i64>) -> Result<()> {
    while let Some(event) = users.next_event().await {
        PER_USER.update(&event.key, |n| *n += event.value).await?;
    }
    Ok(())
}

/// Runs `count_users` on 40,000 keys, twice each; returns the table and the number of
/// distinct cuts (source offsets) its changelog shows.
async fn count_many_keys(app: App) -> (std::collections::BTreeMap<String, i64>, usize, Option<i64>) {
    const KEYS: usize = 40_000;
    let mut driver = TestDriver::new(app.agent(count_users)).expect("driver");
    for round in 0..2 {
        for i in 0..KEYS {
            driver
                .pipe(&USERS, &format!("user-{i:06}"), &(round + 1))
                .expect("pipe");
        }
    }
    driver.run().await.expect("run");
    let cuts: std::collections::BTreeSet<String> = driver
        .raw_records("keys-per-user-changelog")
        .iter()
        .filter_map(|r| Some(r.cut()?.sources.first()?.2.to_string()))
        .collect();
    (
        driver.table(&PER_USER).expect("table"),
        cuts.len(),
        driver.committed("users", 0),
    )
}

/// A commit interval that touches more keys than a partition's table cache holds (1 MiB by
/// default) commits early instead of growing: the changelog shows several cuts within one
/// run, and nothing is lost or counted twice. A larger `App::table_cache_bytes` holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_commit_early_and_stay_exact() {
    let (table, cuts, committed) = count_many_keys(App::new("keys")).await;
    assert_eq!(table.len(), 40_000);
    assert!(table.values().all(|&n| n == 3), "every key counted 1 + 2");
    assert!(cuts >= 4, "expected early cuts, the changelog shows {cuts} cut(s)");
    assert_eq!(committed, Some(80_000));

    let (table, cuts, _) = count_many_keys(App::new("keys").table_cache_bytes(64 << 20)).await;
    assert_eq!(table.len(), 40_000);
    assert_eq!(cuts, 1, "a 64 MiB cache holds 40,000 keys until the run's one cut");
}

type Grid = std::collections::BTreeMap<(i32, i32), i64>;
const CELLS: Topic<String, i64> = Topic::new("cells").partitions(1);
/// JSON cannot encode a map with tuple keys unless it is empty: updates can fail to encode.
const GRIDS: Table<String, Grid> = Table::new("grids");

#[agent(topic = CELLS, tables = [GRIDS])]
async fn fill(mut cells: Stream<String, i64>) -> Result<()> {
    while let Some(event) = cells.next_event().await {
        GRIDS
            .update(&event.key, |grid| {
                if event.value > 0 {
                    grid.insert((1, 2), event.value);
                }
            })
            .await?;
    }
    Ok(())
}

/// An update whose value cannot be encoded fails that record (dead-letter topic) and leaves
/// the stored value as it was, for cached and uncached keys alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_cannot_be_encoded_changes_nothing() {
    let mut driver = TestDriver::new(App::new("grid").agent(fill)).expect("driver");
    for value in [0, 1, 0] {
        driver.pipe(&CELLS, &"a".to_string(), &value).expect("pipe");
    }
    driver.pipe(&CELLS, &"b".to_string(), &5).expect("pipe");
    driver.run().await.expect("run");

    let grids = driver.table(&GRIDS).expect("table");
    assert_eq!(
        grids.get("a"),
        Some(&Grid::new()),
        "the failed update left `a` as it was"
    );
    assert_eq!(grids.get("b"), None, "a first update that fails stores nothing");
    let dead: Vec<String> = driver
        .dead_letters("fill")
        .iter()
        .filter_map(|r| r.header("streams.dlq.offset").map(str::to_string))
        .collect();
    assert_eq!(dead, vec!["1", "3"]);
}

const LOOKUPS: Topic<String, i64> = Topic::new("lookups").partitions(1);
const SEEN_KEYS: Table<String, i64> = Table::new("seen-keys");

#[agent(topic = LOOKUPS, tables = [SEEN_KEYS])]
async fn look_up(mut lookups: Stream<String, i64>) -> Result<()> {
    while let Some(event) = lookups.next_event().await {
        if event.origin.offset == 0 {
            SEEN_KEYS.set(&"first".to_string(), 1).await?;
        }
        SEEN_KEYS.get(&event.key).await?;
    }
    Ok(())
}

/// Reads fill the table cache too: once reads pass the budget while a change waits, the
/// partition commits early (the change reaches the changelog long before the run's end) and
/// the cache starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_cache_budget_commit_waiting_changes_early() {
    const KEYS: usize = 40_000;
    let mut driver = TestDriver::new(App::new("reads").agent(look_up)).expect("driver");
    for i in 0..KEYS {
        driver.pipe(&LOOKUPS, &format!("user-{i:06}"), &0).expect("pipe");
    }
    driver.run().await.expect("run");
    let changelog = driver.raw_records("reads-seen-keys-changelog");
    assert_eq!(changelog.len(), 1, "one change: {changelog:?}");
    let committed_at: i64 = changelog[0]
        .cut()
        .and_then(|cut| Some(cut.sources.first()?.2))
        .expect("the cut's source offset");
    assert!(
        committed_at < (KEYS / 2) as i64,
        "the change waited in the cache until offset {committed_at}"
    );
}

#[record]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    country: String,
    city: String,
}

const VISITS: Topic<String, Place> = Topic::new("visits").partitions(2);
const BY_CITY: Topic<Json<Place>, String> = Topic::new("visits-by-city").partitions(2).internal();
const PER_CITY: Table<Json<Place>, i64> = Table::new("visits-per-city");
const PER_COUNTRY_AND_USER: Table<(String, String), i64> = Table::new("visits-per-country-and-user");
const BY_COUNTRY: Topic<(String, String), String> = Topic::new("visits-by-country").partitions(2).internal();

/// Re-keys visits by place (a JSON key) and by (country, user) (a tuple key); borrowed
/// `&str` keys where the key is a `String`.
#[agent(topic = VISITS, sends = [BY_CITY, BY_COUNTRY])]
async fn route_visits(mut visits: Stream<String, Place>) -> Result<()> {
    while let Some(event) = visits.next_event().await {
        let user: &str = &event.key;
        BY_CITY.send(&Json(event.value.clone()), &user.to_string()).await?;
        BY_COUNTRY
            .send(&(event.value.country.clone(), user.to_string()), &event.value.city)
            .await?;
    }
    Ok(())
}

#[agent(topic = BY_CITY, tables = [PER_CITY])]
async fn count_cities(mut visits: Stream<Json<Place>, String>) -> Result<()> {
    while let Some(event) = visits.next_event().await {
        PER_CITY.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

#[agent(topic = BY_COUNTRY, tables = [PER_COUNTRY_AND_USER])]
async fn count_countries(mut visits: Stream<(String, String), String>) -> Result<()> {
    while let Some(event) = visits.next_event().await {
        PER_COUNTRY_AND_USER.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

/// Composite keys: a `#[record]` type as a JSON key and a tuple key, through internal
/// topics and tables; `&str` where a `String` key is expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_and_borrowed_keys() {
    let app = App::new("visits")
        .agent(route_visits)
        .agent(count_cities)
        .agent(count_countries);
    let mut driver = TestDriver::new(app).expect("driver");
    let place = |country: &str, city: &str| Place {
        country: country.into(),
        city: city.into(),
    };
    for (user, visit) in [
        ("ann", place("fr", "Lyon")),
        ("bob", place("fr", "Lyon")),
        ("ann", place("fr", "Paris")),
        ("ann", place("it", "Rome")),
    ] {
        driver.pipe(&VISITS, user, &visit).expect("pipe a &str key");
    }
    driver.run().await.expect("run");
    let cities = driver.table(&PER_CITY).expect("table");
    assert_eq!(cities[&Json(place("fr", "Lyon"))], 2);
    assert_eq!(cities[&Json(place("it", "Rome"))], 1);
    let countries = driver.table(&PER_COUNTRY_AND_USER).expect("table");
    assert_eq!(countries[&("fr".to_string(), "ann".to_string())], 2);
    assert_eq!(countries[&("fr".to_string(), "bob".to_string())], 1);
    assert_eq!(countries.len(), 3);
    // The same key always lands in the same partition: the table agrees with the topic.
    let raw = driver.raw_records("visits-by-city");
    let lyon: std::collections::BTreeSet<i32> = raw
        .iter()
        .filter(|r| r.key.as_deref() == Some(br#"{"country":"fr","city":"Lyon"}"#.as_slice()))
        .map(|r| r.partition)
        .collect();
    assert_eq!(lyon.len(), 1);
}

/// A table no agent of the app uses, and an internal topic no agent reads, are refused
/// with a message naming them (they stay empty otherwise, silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_internal_topics_nobody_uses_are_refused() {
    let driver = TestDriver::new(App::new("visits").agent(route_visits).agent(count_cities))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        driver.contains("internal topic `visits-by-country` is sent to by `route_visits` but no agent"),
        "{driver}"
    );
    let driver = TestDriver::new(App::new("ping").agent(describe)).expect("driver");
    let error = driver.table(&PER_CITY).expect_err("not a table of the app").to_string();
    assert!(
        error.contains("table `visits-per-city` is not used by any agent of app `ping` (agents: describe)"),
        "{error}"
    );
}

const TALLIES: Topic<String, i64> = Topic::new("tallies").partitions(1);
const TALLY: Table<String, i64> = Table::new("tally");
const ECHO: Topic<String, i64> = Topic::new("echo");

/// Borrowed keys in the agent API: `&str` for `String` keys in `send`, `get`, `set`,
/// `update` and `delete`.
#[agent(topic = TALLIES, sends = [ECHO], tables = [TALLY])]
async fn tally(mut tallies: Stream<String, i64>) -> Result<()> {
    while let Some(n) = tallies.next().await {
        TALLY.update("all", |t| *t += n).await?;
        let total = TALLY.get("all").await?;
        TALLY.set("last", n).await?;
        TALLY.delete("never").await?;
        ECHO.send("total", &total).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_keys_in_sends_and_tables() {
    let mut driver = TestDriver::new(App::new("tally").agent(tally)).expect("driver");
    for n in [1, 2, 3] {
        driver.pipe(&TALLIES, "n", &n).expect("pipe");
    }
    driver.run().await.expect("run");
    let table = driver.table(&TALLY).expect("table");
    assert_eq!((table["all"], table["last"], table.get("never")), (6, 3, None));
    let echoed: Vec<(String, i64)> = driver.records(&ECHO).expect("echo");
    assert_eq!(echoed.last(), Some(&("total".to_string(), 6)));
}

const WORDS: Topic<String, String> = Topic::new("words").partitions(1);
const ECHOES: Topic<String, String> = Topic::new("echoes");

#[agent(topic = WORDS, sends = [ECHOES])]
async fn echo(mut words: Stream<String, String>) -> Result<()> {
    while let Some(event) = words.next_event().await {
        ECHOES.send(&event.key, &event.value).await?;
    }
    Ok(())
}

/// An output topic's records come back in the order they were produced, whatever partitions
/// they went to (`echoes` has the app's default partition count, the input one partition);
/// `records_by_partition` gives them as each partition's consumer reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_in_the_order_they_were_produced() {
    let mut driver = TestDriver::new(App::new("echo").agent(echo)).expect("driver");
    let words: Vec<String> = (0..40).map(|n| format!("word-{n}")).collect();
    for word in &words {
        driver.pipe(&WORDS, word, word).expect("pipe");
    }
    driver.run().await.expect("run");
    let got: Vec<String> = driver
        .records(&ECHOES)
        .expect("echoes")
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert_eq!(got, words);
    let partitions: std::collections::BTreeSet<i32> =
        driver.raw_records("echoes").iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "the keys spread over partitions: {partitions:?}");
    let by_partition: Vec<String> = driver
        .records_by_partition(&ECHOES)
        .expect("echoes")
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert_ne!(by_partition, words, "partition by partition is another order");
    let mut sorted = by_partition;
    sorted.sort();
    let mut expected = words.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}
