//! A foreign-key join: orders enriched with their customer's name and tier.
//!
//! - `orders` (key: order id, UTF-8; value `{"customer_id": "<id>", "amount": <integer>}`; a
//!   record without a value deletes the order) and `customers` (key: customer id, UTF-8;
//!   value `{"name": "<name>", "tier": "<tier>"}`; a record without a value deletes the
//!   customer) are read as tables.
//! - Each order is joined with the customer its `customer_id` names (an inner join: an order
//!   whose customer is missing has no result). Every change of a result goes to
//!   `orders-enriched`: key order id, value `{"customer_id", "amount", "name", "tier"}`, and a
//!   tombstone when an order no longer has a result (the order was deleted, its customer was
//!   deleted, or its `customer_id` moved to a customer that does not exist).
//! - The latest record of each key of `orders-enriched` is the join of the latest orders and
//!   customers. The two topics need not have the same partition count: the join goes through
//!   `order_enrichment-order-customer-subscription-registration-topic` (partitioned like
//!   `customers`) and `order_enrichment-order-customer-subscription-response-topic`
//!   (partitioned like `orders`), as Kafka Streams' foreign-key joins do.
//!
//! ```text
//! cargo run --example order_enrichment -- broker --port 9092 &
//! cargo run --example order_enrichment -- send customers '{"name": "Ada", "tier": "gold"}' --key c1 --broker localhost:9092
//! cargo run --example order_enrichment -- send orders '{"customer_id": "c1", "amount": 30}' --key o1 --broker localhost:9092
//! cargo run --example order_enrichment -- worker -l info --broker localhost:9092
//! cargo run --example order_enrichment -- tail orders-enriched --from-beginning --broker localhost:9092
//! ```
use streams_core::prelude::*;

/// A record of `orders`.
#[record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    pub customer_id: String,
    pub amount: i64,
}

/// A record of `customers`.
#[record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customer {
    pub name: String,
    pub tier: String,
}

/// A record of `orders-enriched`.
#[record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrichedOrder {
    pub customer_id: String,
    pub amount: i64,
    pub name: String,
    pub tier: String,
}

/// Orders by order id.
pub const ORDERS: Topic<String, Order> = Topic::new("orders");
/// Customers by customer id.
pub const CUSTOMERS: Topic<String, Customer> = Topic::new("customers");
/// Each order with its customer, at every change; tombstones for orders without a result.
pub const ORDERS_ENRICHED: Topic<String, EnrichedOrder> = Topic::new("orders-enriched");

/// The `orders` topic as a table.
pub const ORDERS_STORE: Table<String, Order> = Table::new("orders-store");
/// The `customers` topic as a table.
pub const CUSTOMERS_STORE: Table<String, Customer> = Table::new("customers-store");
/// The join's result.
pub const ENRICHED_STORE: Table<String, EnrichedOrder> = Table::new("orders-enriched-store");

/// An order with its customer.
pub fn enrich(order: &Order, customer: &Customer) -> EnrichedOrder {
    EnrichedOrder {
        customer_id: order.customer_id.clone(),
        amount: order.amount,
        name: customer.name.clone(),
        tier: customer.tier.clone(),
    }
}

/// The app: id `order_enrichment`.
pub fn app() -> App {
    App::new("order_enrichment").pipeline("enrich", |builder| {
        let orders = builder.table(ORDERS, ORDERS_STORE);
        let customers = builder.table(CUSTOMERS, CUSTOMERS_STORE);
        orders
            .join_foreign(
                &customers,
                "order-customer",
                |order| Some(order.customer_id.clone()),
                ENRICHED_STORE,
                |_, order, customer| enrich(order, customer),
            )
            .to(ORDERS_ENRICHED);
    })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}
