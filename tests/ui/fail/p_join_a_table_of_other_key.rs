use streams_core::prelude::*;

#[record]
#[derive(Clone)]
pub struct View {
    pub page: String,
}

const VIEWS: Topic<String, View> = Topic::new("views");
const REGIONS: Topic<u64, String> = Topic::new("regions");
const REGIONS_STORE: Table<u64, String> = Table::new("regions-store");
const OUT: Topic<String, String> = Topic::new("out");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        // A stream keyed by `String` joined with a table keyed by `u64`: not co-partitioned.
        let regions = builder.table(REGIONS, REGIONS_STORE);
        builder
            .stream(VIEWS)
            .join(&regions, |_, view, region| format!("{} {region}", view.page))
            .to(OUT);
    });
}
