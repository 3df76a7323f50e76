use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const BY_USER: Topic<String, Hit> = Topic::new("by-user");
const COUNTS: Table<String, i64> = Table::new("counts");

#[agent(topic = BY_USER, tables = [COUNT])]
async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        COUNTS.update(&hit.user, |n| *n += 1).await?;
    }
    Ok(())
}

fn main() {
    let _ = App::new("app").agent(count);
}
