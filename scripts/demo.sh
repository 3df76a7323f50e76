#!/usr/bin/env bash
# The seed's demo with no Kafka installed: host the embedded broker, produce the seed's
# random records, run the hit counter worker until it is idle, print the per-user counts.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
port="${DEMO_PORT:-19092}"
count="${DEMO_COUNT:-10000}"
data="$(mktemp -d)"
broker_log="$data/broker.log"

"$bin/hit_counter" broker --port "$port" --partitions 4 >"$broker_log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "== embedded broker on 127.0.0.1:$port"

echo "== producing $count seed records to hit_count"
"$bin/hit_producer" --broker "127.0.0.1:$port" --count "$count" --seed 1

echo "== hit_counter worker -l info (stops after 3 s without records)"
"$bin/hit_counter" worker -l info --broker "127.0.0.1:$port" --data-dir "$data" --idle-exit 3

echo "== per-user counts of major hits (table major-count)"
"$bin/hit_counter" table major-count --data-dir "$data"
