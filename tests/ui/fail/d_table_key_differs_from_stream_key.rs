use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const BY_USER: Topic<String, Hit> = Topic::new("by-user");
const COUNTS: Table<u64, i64> = Table::new("counts");

#[agent(topic = BY_USER, tables = [COUNTS])]
async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        COUNTS.update(&(hit.hits as u64), |n| *n += 1).await?;
    }
    Ok(())
}

fn main() {
    let _ = App::new("app").agent(count);
}
