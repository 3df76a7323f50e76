use std::time::Duration;

use streams_core::prelude::*;

const ORDERS: Topic<String, i64> = Topic::new("orders");
const PRICES: Topic<String, i64> = Topic::new("prices");
const PRICE_STORE: Table<String, i64> = Table::new("prices-store");
const TOTALS: Topic<String, i64> = Topic::new("order-totals");

fn main() {
    let _ = App::new("shop").pipeline("totals", |builder| {
        // A grace period holds orders back for late prices: only a versioned table keeps
        // the price of an order's time.
        let prices = builder.table(PRICES, PRICE_STORE);
        builder
            .stream(ORDERS)
            .join_with_grace(&prices, "order-price", Duration::from_secs(10), |_, quantity, price| {
                quantity * price
            })
            .to(TOTALS);
    });
}
