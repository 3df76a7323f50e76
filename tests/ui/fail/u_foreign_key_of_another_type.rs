use streams_core::prelude::*;

#[record]
#[derive(Clone, Default)]
pub struct Order {
    pub customer_id: String,
    pub amount: i64,
}

#[record]
#[derive(Clone, Default)]
pub struct Customer {
    pub name: String,
}

const ORDERS: Topic<String, Order> = Topic::new("orders");
const CUSTOMERS: Topic<u64, Customer> = Topic::new("customers");
const ORDERS_STORE: Table<String, Order> = Table::new("orders-store");
const CUSTOMERS_STORE: Table<u64, Customer> = Table::new("customers-store");
const NAMED: Table<String, String> = Table::new("named");
const NAMED_BY_CUSTOMER: Table<u64, String> = Table::new("named-by-customer");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        let orders = builder.table(ORDERS, ORDERS_STORE);
        let customers = builder.table(CUSTOMERS, CUSTOMERS_STORE);
        // The customers are keyed by `u64`: a foreign key taken as a `String` names none.
        orders.join_foreign(
            &customers,
            "order-customer",
            |order| Some(order.customer_id.clone()),
            NAMED,
            |_, order, customer| format!("{} {}", order.amount, customer.name),
        );
        // The result is keyed like the left table (`String`), not like the right one.
        orders.join_foreign(
            &customers,
            "order-customer-2",
            |order| order.customer_id.parse::<u64>().ok(),
            NAMED_BY_CUSTOMER,
            |_, order, customer| format!("{} {}", order.amount, customer.name),
        );
    });
}
