use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");
const PER_USER: Table<String, i64> = Table::new("per-user");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        // The key changed: grouping by it needs a named repartition topic first.
        builder
            .stream(HITS)
            .select_key(|_, hit| hit.user.clone())
            .group_by_key()
            .count(PER_USER);
    });
}
