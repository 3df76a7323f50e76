use streams_core::prelude::*;

#[record]
#[derive(Clone)]
pub struct View {
    pub user: String,
    pub page: String,
}

const VIEWS: Topic<(), View> = Topic::new("views");
const USERS: Topic<String, String> = Topic::new("users");
const USERS_STORE: Table<String, String> = Table::new("users-store");
const OUT: Topic<String, String> = Topic::new("out");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        let users = builder.table(USERS, USERS_STORE);
        // Re-keyed by user but not repartitioned: its records are not where the table's are.
        builder
            .stream(VIEWS)
            .select_key(|_, view| view.user.clone())
            .join(&users, |_, view, region| format!("{} {region}", view.page))
            .to(OUT);
    });
}
