use streams_core::prelude::*;

#[record]
#[derive(Clone)]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<String, Hit> = Topic::new("hits");
const LAST_USER: Table<String, String> = Table::new("last-user");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        // The stream's values are `Hit`; the table keeps `String`s.
        builder
            .stream(HITS)
            .group_by_key()
            .reduce(LAST_USER, |_, latest| latest);
    });
}
