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
        // A repartition topic is named by the app: its name must not change with the code.
        builder
            .stream(HITS)
            .group_by(|_, hit: &Hit| hit.user.clone())
            .count(PER_USER);
    });
}
