use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");
const TOTALS: Topic<String, i64> = Topic::new("totals");

#[agent(topic = HITS, sends = [TOTALS])]
async fn forward(mut hits: Stream<(), Hit>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        TOTALS.send(&hit.user, &hit).await?;
    }
    Ok(())
}

fn main() {
    let _ = App::new("app").agent(forward);
}
