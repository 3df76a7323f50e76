use streams_core::prelude::*;

#[record]
#[derive(Clone, Default)]
pub struct Activity {
    pub clicks: i64,
    pub spent: i64,
}

const CLICKS: Topic<String, String> = Topic::new("clicks");
const PURCHASES: Topic<u64, i64> = Topic::new("purchases");
const VISITS: Topic<String, i64> = Topic::new("visits");
const ACTIVITY: Table<String, Activity> = Table::new("activity");
const BY_ID: Table<u64, Activity> = Table::new("activity-by-id");
const TOTALS: Table<String, i64> = Table::new("totals");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        let clicks = builder.stream(CLICKS).group_by_key();
        let purchases = builder.stream(PURCHASES).group_by_key();
        let visits = builder.stream(VISITS).group_by_key();
        // The purchases are keyed by `u64`, the clicks by `String`: not one aggregate.
        clicks
            .cogroup(|_, _, mut activity: Activity| {
                activity.clicks += 1;
                activity
            })
            .cogroup(purchases, |_, amount, mut activity| {
                activity.spent += amount;
                activity
            })
            .aggregate(ACTIVITY, Activity::default);
        // The aggregate goes into a table of its key and value types.
        visits
            .cogroup(|_, _, mut activity: Activity| {
                activity.clicks += 1;
                activity
            })
            .aggregate(BY_ID, Activity::default);
        builder
            .stream(Topic::<String, i64>::new("other"))
            .group_by_key()
            .cogroup(|_, n, total: i64| total + n)
            .aggregate(TOTALS, || "zero");
    });
}
