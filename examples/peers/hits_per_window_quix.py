"""`hits_per_window` in Quix Streams: the peer `make bench` measures against (case (q)).

The pipeline of examples/hits_per_window.rs: the seed's hits re-keyed by user (through a
repartition topic when the input has more than one partition: Quix Streams re-keys a
one-partition input, as (f)'s is, in place), then per user tumbling minutes (60 s, 10 s
grace) with their record count and hits, and sessions (30 s inactivity gap, 10 s grace)
with their record count, each sent once when its window closes. Event time is the record's
`timestamp` field (seconds, as a float).

Windows close by Quix Streams' rules, which differ from Kafka Streams' (and (f)'s). Its
default closes a key's windows at that key's next record past their end and grace, where
(f) closes them as the partition's stream time passes;
`final(closing_strategy="partition")` does that here, at several times the CPU (one run:
2,172 µs per input against 362). A session takes the records within one gap, as (f)'s, but
closes a gap later (last record + 2 gaps + grace) and ends at its last record + 1 ms. The
benchmark checks the minutes only.
Settings from the environment: `QUIX_BROKER`, `QUIX_STATE_DIR`.

Run: python hits_per_window_quix.py
"""
import os

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum


def event_time(value, headers, timestamp, timestamp_type):
    return int(round(value["timestamp"] * 1000))


app = Application(
    broker_address=os.environ.get("QUIX_BROKER", "localhost:9092"),
    consumer_group="quix_hits_per_window",
    auto_offset_reset="earliest",
    state_dir=os.environ.get("QUIX_STATE_DIR", "state"),
)
hits = app.topic("hit_count", value_deserializer="json", timestamp_extractor=event_time)
minutes_out = app.topic("hits-per-minute", key_serializer="str", value_serializer="json")
sessions_out = app.topic("user-sessions", key_serializer="str", value_serializer="json")

by_user = app.dataframe(hits).group_by("userId", key_serializer="str", key_deserializer="str")
minutes = by_user.tumbling_window(duration_ms=60_000, grace_ms=10_000, name="minutes")
minutes = minutes.agg(count=Count(), hits=Sum("hits")).final()
minutes.to_topic(minutes_out)
sessions = by_user.session_window(inactivity_gap_ms=30_000, grace_ms=10_000, name="sessions")
sessions = sessions.agg(count=Count()).final()
sessions.to_topic(sessions_out)

if __name__ == "__main__":
    # The benchmark counts from when the input partition is held: say so (Quix Streams logs
    # its assignment at debug level only).
    assign = app._on_assign

    def on_assign(consumer, partitions):
        assign(consumer, partitions)
        if partitions:
            print("partitions assigned", flush=True)

    app._on_assign = on_assign
    app.run()
