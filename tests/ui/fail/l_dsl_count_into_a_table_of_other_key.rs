use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");
const PER_HITS: Table<i64, i64> = Table::new("per-hits");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        // Grouped by user (a `String`), counted into a table keyed by `i64`.
        builder
            .stream(HITS)
            .group_by("by-user", |_, hit| hit.user.clone())
            .count(PER_HITS);
    });
}
