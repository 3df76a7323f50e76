//! The system test's app (like Kafka Streams' smoke test): orders counted per user, summed per
//! product through a repartition topic, counted per user in windows of event time, and
//! enriched with their user's region from a table — every kind of state the library keeps,
//! in one app, so that workers killed and restarted at random points can be checked against
//! a verifier that knows nothing of the library (`tests/tests/smoke.rs`).
//!
//! - `smoke-users` (key: user id; value: the region as a JSON string), read as a table.
//! - `smoke-orders` (key: user id; value `{"id": n, "user": "<id>", "product": "<id>",
//!   "amount": n, "time": <ms>}`, event time from `time`).
//! - `smoke-user-counts`: every change of the count of orders per user.
//! - `smoke-product-amounts`: every change of the amount per product (re-keyed through
//!   `smoke-by-product-repartition`).
//! - `smoke-user-windows`: every change of the count per user and 10 s window (5 s grace).
//! - `smoke-user-sessions`: every change of the count per user and session (500 ms gap, 5 s
//!   grace); a session merged into another after it was sent is deleted (a tombstone).
//! - `smoke-user-sliding`: the count per user and sliding window (100 ms time difference, 5 s
//!   grace), sent when the window closes (`emit_final`; at-least-once may send it again
//!   after a crash).
//! - `smoke-enriched`: each order with its user's region (`"?"` for a user not in the table).
//!
//! ```text
//! cargo run --example smoke -- worker --broker localhost:9092
//! ```
use std::time::Duration;

use streams_core::prelude::*;

/// An order.
#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: u64,
    pub user: String,
    pub product: String,
    pub amount: i64,
    pub time: i64,
}

/// An order with its user's region.
#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enriched {
    pub id: u64,
    pub region: String,
}

pub const USERS: Topic<String, String> = Topic::new("smoke-users");
pub const ORDERS: Topic<String, Order> = Topic::new("smoke-orders").event_time(|order| order.time);
pub const USER_COUNTS: Topic<String, i64> = Topic::new("smoke-user-counts");
pub const PRODUCT_AMOUNTS: Topic<String, i64> = Topic::new("smoke-product-amounts");
pub const USER_WINDOWS: Topic<Windowed<String>, i64> = Topic::new("smoke-user-windows");
pub const USER_SESSIONS: Topic<Windowed<String>, i64> = Topic::new("smoke-user-sessions");
pub const USER_SLIDING: Topic<Windowed<String>, i64> = Topic::new("smoke-user-sliding");
pub const ENRICHED: Topic<String, Enriched> = Topic::new("smoke-enriched");

pub const USERS_STORE: Table<String, String> = Table::new("users");
pub const ORDERS_PER_USER: Table<String, i64> = Table::new("orders-per-user");
pub const AMOUNT_PER_PRODUCT: Table<String, i64> = Table::new("amount-per-product");
pub const ORDERS_PER_WINDOW: WindowedTable<String, i64> = WindowedTable::new("orders-per-window");
pub const ORDERS_PER_SESSION: WindowedTable<String, i64> = WindowedTable::new("orders-per-session");
pub const ORDERS_PER_SLIDE: WindowedTable<String, i64> = WindowedTable::new("orders-per-slide");

/// Window size and grace of `smoke-user-windows`.
pub const WINDOW: Duration = Duration::from_secs(10);
pub const GRACE: Duration = Duration::from_secs(5);
/// The inactivity gap of `smoke-user-sessions`, and the time difference of
/// `smoke-user-sliding` (both with [`GRACE`]).
pub const SESSION_GAP: Duration = Duration::from_millis(500);
pub const SLIDE: Duration = Duration::from_millis(100);

pub fn app() -> App {
    App::new("smoke").pipeline("smoke", |builder| {
        let users = builder.table(USERS, USERS_STORE);
        let orders = builder.stream(ORDERS);
        orders
            .clone()
            .group_by_key()
            .count(ORDERS_PER_USER)
            .to_stream()
            .to(USER_COUNTS);
        orders
            .clone()
            .group_by("by-product", |_, order| order.product.clone())
            .aggregate(AMOUNT_PER_PRODUCT, || 0, |_, order, total| total + order.amount)
            .to_stream()
            .to(PRODUCT_AMOUNTS);
        orders
            .clone()
            .group_by_key()
            .windowed_by(TimeWindows::of(WINDOW).grace(GRACE))
            .count(ORDERS_PER_WINDOW)
            .to_stream()
            .to(USER_WINDOWS);
        orders
            .clone()
            .group_by_key()
            .windowed_by(SessionWindows::with_inactivity_gap(SESSION_GAP).grace(GRACE))
            .count(ORDERS_PER_SESSION)
            .to(USER_SESSIONS);
        orders
            .clone()
            .group_by_key()
            .windowed_by(SlidingWindows::with_time_difference(SLIDE).grace(GRACE))
            .emit_final()
            .count(ORDERS_PER_SLIDE)
            .to_stream()
            .to(USER_SLIDING);
        orders
            .left_join(&users, |_, order, region| Enriched {
                id: order.id,
                region: region.cloned().unwrap_or_else(|| "?".into()),
            })
            .to(ENRICHED);
    })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}
