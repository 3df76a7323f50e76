//! Joins: page views enriched with their user's region and counted per region, and ad
//! clicks attributed to the impressions shown shortly before or after them.
//!
//! Two pipelines:
//!
//! - `regions`: `users` (key: user id, UTF-8; value `{"region": "<name>"}`; a record without
//!   a value deletes the user) read as a table; each record of `page-views` (key: user id;
//!   value `{"page": "<path>", "ts": <ms>}`, event time from `ts`) is left-joined with it —
//!   a view of a user not in the table counts for region `"unknown"` — re-keyed by region
//!   through `page_views-by-region-repartition` and counted; every change of a count goes to
//!   `views-per-region` (key: region, UTF-8; value: the count as a JSON number).
//! - `attribution`: `ad-impressions` and `ad-clicks` (key: ad id; value `{"user": "<id>",
//!   "ts": <ms>}`, event time from `ts`) joined within 30 s of each other (10 s grace) to
//!   `ad-clicks-attributed`: key ad id, value `{"impression_ts": <ms>, "click_ts": <ms>,
//!   "user": "<id of the user who clicked>"}`, one record per matching pair.
//!
//! The topics of each join must have the same partition count (the worker refuses to start
//! otherwise, naming both); the example declares none.
//!
//! ```text
//! cargo run --example page_views -- broker --port 9092 &
//! cargo run --example page_views -- send users '{"region": "emea"}' --key u1 --broker localhost:9092
//! cargo run --example page_views -- send page-views '{"page": "/", "ts": 1764000000000}' --key u1 --broker localhost:9092
//! cargo run --example page_views -- worker -l info --broker localhost:9092
//! cargo run --example page_views -- tail views-per-region --from-beginning --broker localhost:9092
//! ```
use std::time::Duration;

use streams_core::prelude::*;

/// A user's row in `users`.
#[record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub region: String,
}

/// A record of `page-views`.
#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageView {
    pub page: String,
    pub ts: i64,
}

/// A record of `ad-impressions` or `ad-clicks`.
#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdEvent {
    pub user: String,
    pub ts: i64,
}

/// A record of `ad-clicks-attributed`: a click and an impression of the same ad within 30 s.
#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributed {
    pub impression_ts: i64,
    pub click_ts: i64,
    pub user: String,
}

/// Users and their regions, by user id; event time is the record's timestamp.
pub const USERS: Topic<String, User> = Topic::new("users");
/// Page views by user id; event time is `ts`.
pub const PAGE_VIEWS: Topic<String, PageView> = Topic::new("page-views").event_time(|view| view.ts);
/// The count of views per region, at every change.
pub const VIEWS_PER_REGION: Topic<String, i64> = Topic::new("views-per-region");
/// Ad impressions by ad id; event time is `ts`.
pub const AD_IMPRESSIONS: Topic<String, AdEvent> = Topic::new("ad-impressions").event_time(|event| event.ts);
/// Ad clicks by ad id; event time is `ts`.
pub const AD_CLICKS: Topic<String, AdEvent> = Topic::new("ad-clicks").event_time(|event| event.ts);
/// Each click with each impression of its ad within 30 s.
pub const AD_CLICKS_ATTRIBUTED: Topic<String, Attributed> = Topic::new("ad-clicks-attributed");

/// The `users` topic as a table.
pub const USERS_STORE: Table<String, User> = Table::new("users-store");
/// Views per region.
pub const REGION_COUNTS: Table<String, i64> = Table::new("views-per-region-store");

/// The region a view of a user counts for: the user's, or `"unknown"`.
pub fn region_of(user: Option<&User>) -> String {
    user.map_or_else(|| "unknown".to_string(), |user| user.region.clone())
}

/// Clicks meet impressions within 30 s of each other; records up to 10 s late still count.
pub fn attribution_window() -> JoinWindows {
    JoinWindows::of_time_difference_and_grace(Duration::from_secs(30), Duration::from_secs(10))
}

/// The app: id `page_views`, two pipelines.
pub fn app() -> App {
    App::new("page_views")
        .pipeline("regions", |builder| {
            let users = builder.table(USERS, USERS_STORE);
            builder
                .stream(PAGE_VIEWS)
                .left_join(&users, |_, _, user| region_of(user))
                .group_by("by-region", |_, region| region.clone())
                .count(REGION_COUNTS)
                .to_stream()
                .to(VIEWS_PER_REGION);
        })
        .pipeline("attribution", |builder| {
            let impressions = builder.stream(AD_IMPRESSIONS);
            builder
                .stream(AD_CLICKS)
                .join_windowed(
                    impressions,
                    "click-impression",
                    attribution_window(),
                    |_, click, impression| Attributed {
                        impression_ts: impression.ts,
                        click_ts: click.ts,
                        user: click.user.clone(),
                    },
                )
                .to(AD_CLICKS_ATTRIBUTED);
        })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}
