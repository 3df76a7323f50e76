// Every kind of join, each side keyed by a different type, the joiners' closures without
// annotations and reading fields of the values: the first error of each is the key types,
// on the other side's argument (not "type annotations needed" on a closure parameter).
use streams_core::prelude::*;

#[record]
#[derive(Clone, Default)]
pub struct Order {
    pub product: String,
    pub amount: i64,
}

#[record]
#[derive(Clone, Default)]
pub struct Payment {
    pub amount: i64,
}

const ORDERS: Topic<String, Order> = Topic::new("orders");
const PAYMENTS: Topic<u64, Payment> = Topic::new("payments");
const PAYMENTS_STORE: Table<u64, Payment> = Table::new("payments-store");
const ORDERS_STORE: Table<String, Order> = Table::new("orders-store");
const PAID: Table<String, i64> = Table::new("paid");
const OUT: Topic<String, i64> = Topic::new("out");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        let window = JoinWindows::of_time_difference_without_grace(Duration::from_secs(600));
        let payments = builder.stream(PAYMENTS);
        builder
            .stream(ORDERS)
            .join_windowed(payments, "inner", window, |_, order, payment| order.amount - payment.amount)
            .to(OUT);
        let payments = builder.stream(PAYMENTS);
        builder
            .stream(ORDERS)
            .left_join_windowed(payments, "left", window, |_, order, payment| {
                order.amount - payment.map_or(0, |p| p.amount)
            })
            .to(OUT);
        let payments = builder.stream(PAYMENTS);
        builder
            .stream(ORDERS)
            .outer_join_windowed(payments, "outer", window, |_, order, payment| {
                order.map_or(0, |o| o.amount) - payment.map_or(0, |p| p.amount)
            })
            .to(OUT);
        let paid = builder.table(PAYMENTS, PAYMENTS_STORE);
        builder
            .stream(ORDERS)
            .join(&paid, |_, order, payment| order.amount - payment.amount)
            .to(OUT);
        builder
            .stream(ORDERS)
            .left_join(&paid, |_, order, payment| order.amount - payment.map_or(0, |p| p.amount))
            .to(OUT);
        let orders = builder.table(ORDERS, ORDERS_STORE);
        let _ = orders.join(&paid, PAID, |_, order, payment| order.amount - payment.amount);
        let _ = orders.left_join(&paid, PAID, |_, order, payment| order.amount - payment.map_or(0, |p| p.amount));
        let _ = orders.outer_join(&paid, PAID, |_, order, payment| {
            order.map_or(0, |o| o.amount) - payment.map_or(0, |p| p.amount)
        });
    });
}
