//! The seed's hits in windows of event time: per user, hits per minute and sessions, each
//! sent once, when its window closes.
//!
//! Event time is the record's `timestamp` field (seconds since the epoch, as a float), not
//! the Kafka timestamp. The hits of `hit_count` go by user through the repartition topic
//! `hits_per_window-by-user-repartition`, then into two windowed aggregations:
//!
//! - tumbling windows of 60 s with 10 s grace → topic `hits-per-minute`: key `userId`, value
//!   `{"start": <ms>, "end": <ms>, "count": <records>, "hits": <sum of hits>}`;
//! - sessions with a 30 s inactivity gap and 10 s grace → topic `user-sessions`: key
//!   `userId`, value `{"start": <ms of the first record>, "end": <ms of the last record>,
//!   "count": <records>}`.
//!
//! ```text
//! cargo run --example hits_per_window -- broker --port 9092 &
//! cargo run --example hit_producer -- --broker localhost:9092 --count 10000
//! cargo run --example hits_per_window -- worker -l info --broker localhost:9092
//! cargo run --example hits_per_window -- tail hits-per-minute --broker localhost:9092
//! ```
use std::time::Duration;

use streams_core::prelude::*;

/// A page-hit report, as the seed's producer writes it.
#[record]
#[derive(Debug, Clone, PartialEq)]
pub struct HitCount {
    pub hits: i64,
    pub timestamp: f64,
    #[serde(rename = "userId")]
    pub user_id: String,
}

/// Records and hits of one user in one window.
#[record]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: i64,
    pub hits: i64,
}

/// What `hits-per-minute` carries: one user's minute.
#[record]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteHits {
    pub start: i64,
    pub end: i64,
    pub count: i64,
    pub hits: i64,
}

/// What `user-sessions` carries: one user's session, from its first record to its last.
#[record]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSession {
    pub start: i64,
    pub end: i64,
    pub count: i64,
}

/// The seed's input topic; event time is each record's `timestamp` (seconds, as a float).
pub const HIT_COUNT: Topic<(), HitCount> =
    Topic::new("hit_count").event_time(|hit| (hit.timestamp * 1000.0).round() as i64);
/// Hits per user and minute, final results only.
pub const HITS_PER_MINUTE: Topic<String, MinuteHits> = Topic::new("hits-per-minute");
/// Sessions per user, final results only.
pub const USER_SESSIONS: Topic<String, UserSession> = Topic::new("user-sessions");
/// The minutes' totals while they are open.
pub const MINUTE_TOTALS: WindowedTable<String, Totals> = WindowedTable::new("minute-totals");
/// The sessions' record counts while they are open.
pub const SESSION_COUNTS: WindowedTable<String, i64> = WindowedTable::new("session-counts");

/// Tumbling windows of a minute; records up to 10 s late still count.
pub fn minutes() -> TimeWindows {
    TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(10))
}

/// Sessions that end after 30 s without hits; records up to 10 s late still count.
pub fn sessions() -> SessionWindows {
    SessionWindows::with_inactivity_gap(Duration::from_secs(30)).grace(Duration::from_secs(10))
}

/// The app: id `hits_per_window`, one pipeline.
pub fn app() -> App {
    App::new("hits_per_window").pipeline("windows", |builder| {
        let by_user = builder
            .stream(HIT_COUNT)
            .select_key(|_, hit| hit.user_id.clone())
            .repartition("by-user");
        by_user
            .clone()
            .group_by_key()
            .windowed_by(minutes())
            .emit_final()
            .aggregate(MINUTE_TOTALS, Totals::default, |_, hit, totals| Totals {
                count: totals.count + 1,
                hits: totals.hits + hit.hits,
            })
            .to_stream()
            .map(|minute, totals| {
                let value = MinuteHits {
                    start: minute.window.start,
                    end: minute.window.end,
                    count: totals.count,
                    hits: totals.hits,
                };
                (minute.key, value)
            })
            .to(HITS_PER_MINUTE);
        by_user
            .group_by_key()
            .windowed_by(sessions())
            .emit_final()
            .count(SESSION_COUNTS)
            .to_stream()
            .map(|session, count| {
                let value = UserSession {
                    start: session.window.start,
                    end: session.window.end,
                    count,
                };
                (session.key, value)
            })
            .to(USER_SESSIONS);
    })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}
