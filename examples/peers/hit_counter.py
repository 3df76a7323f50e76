"""The seed's Faust hit counter, as the migration test (tests/tests/faust.rs) and the
benchmark's case (p) run it.

The seed's app (blog-kafka-faust-hit-counter.md), with the one fix our Rust port makes: it
sends to `count_topic` keyed by user, so that each user's hits meet in one partition at any
partition count. Settings come from the environment: the broker, the web port, the data
directory and the internal topics' partitions; the table lives in memory, so that every
start restores it from its changelog (the seed's RocksDB store was not tried in the
benchmark). `GET /counts/` shows the table.

Run: faust -A hit_counter worker -l info   (in this folder)
"""
import os

import faust

app = faust.App(
    "hit_counter",
    broker=os.environ.get("FAUST_BROKER", "kafka://localhost:9092"),
    store="memory://",
    datadir=os.environ.get("FAUST_DATADIR", "hit_counter-data"),
    topic_partitions=int(os.environ.get("FAUST_PARTITIONS", "1")),
    web_bind="127.0.0.1",
    web_port=int(os.environ.get("FAUST_WEB_PORT", "6066")),
)


class hitCount(faust.Record, validation=True):
    hits: int
    timestamp: float
    userId: str


hit_topic = app.topic("hit_count", value_type=hitCount)
count_topic = app.topic("count_topic", internal=True, value_type=hitCount)
hits_table = app.Table("major-count", key_type=str, value_type=int, default=int)


@app.agent(hit_topic)
async def count_hits(counts):
    async for count in counts:
        if count.hits > 20:
            await count_topic.send(key=count.userId, value=count)


@app.agent(count_topic)
async def increment_count(counts):
    async for count in counts:
        hits_table[count.userId] += 1


@app.page("/counts/")
async def counts(web, request):
    return web.json(dict(hits_table.items()))
