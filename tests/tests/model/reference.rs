//! The reference model: a small, plain interpreter of the pipelines the harness generates,
//! with the library's documented semantics (Kafka Streams' where they agree) and none of its
//! machinery — no caches, no cuts, no threads, no stores, no changelogs. Each task (a
//! sub-topology on one partition) is a loop over its records in the order it takes them.

use std::collections::{BTreeMap, BTreeSet};

use streams_core::testing::kafka_partition;

/// Stream time before a task has seen a record.
pub const NO_TIME: i64 = i64::MIN;

/// A record of an input topic: `value: None` is a tombstone (only on a topic read as a
/// table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: String,
    pub value: Option<i64>,
    pub ts: i64,
}

/// A stateless step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Drops the records whose value is `drop` modulo `modulus`.
    Filter { modulus: i64, drop: i64 },
    /// `value * mul + add`.
    MapValues { mul: i64, add: i64 },
    /// `copies` records: `value`, `value + 1`, ….
    FlatMap { copies: i64 },
}

impl Step {
    pub fn apply(self, value: i64) -> Vec<i64> {
        match self {
            Step::Filter { modulus, drop } => {
                if value.rem_euclid(modulus) == drop {
                    vec![]
                } else {
                    vec![value]
                }
            }
            Step::MapValues { mul, add } => vec![value * mul + add],
            Step::FlatMap { copies } => (0..copies).map(|i| value + i).collect(),
        }
    }
}

/// Runs `steps` over one value.
pub fn apply_steps(steps: &[Step], value: i64) -> Vec<i64> {
    let mut values = vec![value];
    for step in steps {
        values = values.into_iter().flat_map(|v| step.apply(v)).collect();
    }
    values
}

/// The key a re-keying step gives a value.
pub fn rekey(value: i64, buckets: i64) -> String {
    format!("r{}", value.rem_euclid(buckets))
}

/// How a key's values are aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Max,
    /// The latest value (a reduce that keeps the newer one).
    Latest,
}

impl Agg {
    pub fn add(self, old: Option<i64>, value: i64) -> i64 {
        match (self, old) {
            (Agg::Count, old) => old.unwrap_or(0) + 1,
            (Agg::Sum, old) => old.unwrap_or(0) + value,
            (Agg::Max, Some(old)) => old.max(value),
            (Agg::Max, None) => value,
            (Agg::Latest, _) => value,
        }
    }

    /// Whether the result depends on the order of a key's records.
    pub fn ordered(self) -> bool {
        self == Agg::Latest
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling {
        size: i64,
    },
    Hopping {
        size: i64,
        advance: i64,
    },
    Session {
        gap: i64,
    },
    /// Kafka Streams' sliding windows: `[t - difference, t]` ending at each record (`[0,
    /// difference]` for records before `difference`), and `[t + 1, t + 1 + difference]`
    /// starting just after each record when later records fall in it.
    Sliding {
        difference: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub kind: WindowKind,
    pub grace: i64,
    /// Extra retention beyond the minimum (size + grace, gap + grace); `None`: the default.
    pub keep_longer: Option<i64>,
    pub emit_final: bool,
    /// Count or Sum.
    pub agg: Agg,
}

impl Windows {
    pub fn retention(&self) -> i64 {
        let minimum = match self.kind {
            WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => size + self.grace,
            WindowKind::Session { gap } => gap + self.grace,
            WindowKind::Sliding { difference } => difference + self.grace,
        };
        match self.keep_longer {
            Some(longer) => minimum + longer,
            // The library's default: a day, or the minimum when that is longer.
            None => minimum.max(24 * 60 * 60 * 1000),
        }
    }

    /// Windows ending at or before this are closed at stream time `now`.
    fn closed_through(&self, now: i64) -> i64 {
        if now == NO_TIME {
            return NO_TIME;
        }
        match self.kind {
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => now - self.grace,
            WindowKind::Session { gap } => now - gap - self.grace - 1,
            // [start, end]: open while its end is at or past stream time - grace.
            WindowKind::Sliding { .. } => now - self.grace - 1,
        }
    }

    /// Windows ending at or before this have left the table at stream time `now`.
    fn expired_through(&self, now: i64) -> i64 {
        if now == NO_TIME {
            return NO_TIME;
        }
        match self.kind {
            WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => now - self.retention() + size,
            WindowKind::Session { .. } => now - self.retention() - 1,
            // Sliding windows leave the table when they close.
            WindowKind::Sliding { .. } => self.closed_through(now),
        }
    }

    /// The fixed windows `[start, end)` holding `time`.
    fn fixed_windows(&self, time: i64) -> Vec<(i64, i64)> {
        let (size, advance) = match self.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Hopping { size, advance } => (size, advance),
            WindowKind::Session { .. } | WindowKind::Sliding { .. } => return vec![],
        };
        if time < 0 {
            return vec![];
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start <= time {
            if start + size > time {
                out.push((start, start + size));
            }
            start += advance;
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Outer,
}

/// What a joiner makes of two values (`-1` for a side without one).
pub fn joined(left: Option<i64>, right: Option<i64>) -> i64 {
    left.unwrap_or(-1) * 1000 + right.unwrap_or(-1)
}

/// The stateful end of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Aggregate(Agg),
    Windowed(Windows),
    /// The stream joined with the side topic read as a table.
    StreamTable {
        left: bool,
    },
    /// The aggregation joined with the side topic read as a table, into a table.
    TableTable {
        agg: Agg,
        kind: JoinKind,
    },
    /// The stream joined with the side topic read as a stream, within a window: a record of
    /// the stream at t meets the side's from t - before to t + after.
    StreamStream {
        kind: JoinKind,
        before: i64,
        after: i64,
        grace: i64,
    },
}

impl Terminal {
    /// Whether the terminal reads the side topic.
    pub fn has_side(&self) -> bool {
        matches!(
            self,
            Terminal::StreamTable { .. } | Terminal::TableTable { .. } | Terminal::StreamStream { .. }
        )
    }

    /// Whether its results depend on the order records reach it (so that, after a re-key on
    /// several partitions, the model cannot know it).
    pub fn ordered(&self) -> bool {
        match self {
            Terminal::Aggregate(agg) => agg.ordered(),
            Terminal::TableTable { agg, .. } => agg.ordered(),
            Terminal::Windowed(_) | Terminal::StreamTable { .. } | Terminal::StreamStream { .. } => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// Steps before the re-key (or all of them).
    pub pre: Vec<Step>,
    /// Re-key into this many buckets, through a repartition topic.
    pub rekey: Option<i64>,
    /// Steps after the re-key.
    pub post: Vec<Step>,
    pub terminal: Terminal,
}

/// A window's key in the results: key, start, end.
pub type WindowKey = (String, i64, i64);

/// What the model says the app must have produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The aggregation's table (or, for a table–table join, the join's table).
    pub table: BTreeMap<String, i64>,
    /// The aggregation's table of a table–table join (its left side).
    pub left: BTreeMap<String, i64>,
    /// The side topic as a table.
    pub side: BTreeMap<String, i64>,
    /// Every value each key of the aggregation took, in order.
    pub history: BTreeMap<String, Vec<i64>>,
    /// The windowed table, after retention.
    pub windows: BTreeMap<WindowKey, i64>,
    /// Every window made, with its last value (sessions merged into others left out).
    pub all_windows: BTreeMap<WindowKey, i64>,
    /// Every window ever made, sessions merged into others included.
    pub ever_windows: BTreeSet<WindowKey>,
    /// Final results of closed windows (emit-final).
    pub finals: BTreeMap<WindowKey, i64>,
    /// Stream join results, per key, in the order they were made.
    pub joins: BTreeMap<String, Vec<i64>>,
    /// Records dropped as late.
    pub late: u64,
}

/// One input segment: the records piped before one run of the driver.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    pub input: Vec<Rec>,
    pub side: Vec<Rec>,
}

/// A record as a task takes it: from the input (after the steps before the re-key, where
/// there is none) or the side topic, with the time of the source record.
#[derive(Debug, Clone)]
enum Taken {
    Input { key: String, values: Vec<i64>, ts: i64 },
    Side(Rec),
}

/// Runs the pipeline over the segments on `partitions` partitions.
pub fn run(pipeline: &Pipeline, segments: &[Segment], partitions: i32) -> Expected {
    let mut expected = Expected::default();
    let partition_of = |key: &str| kafka_partition(key.as_bytes(), partitions);
    // The records each task of the stateful stage takes, per segment, in order.
    let mut tasks: BTreeMap<i32, Vec<Vec<Taken>>> = BTreeMap::new();
    for (n, segment) in segments.iter().enumerate() {
        for p in 0..partitions {
            tasks.entry(p).or_default().push(Vec::new());
        }
        match pipeline.rekey {
            None => {
                // One task per partition reads the input (and the side topic): each takes its
                // partition's records, the two topics merged by timestamp.
                for p in 0..partitions {
                    let input: Vec<&Rec> = segment.input.iter().filter(|r| partition_of(&r.key) == p).collect();
                    let side: Vec<&Rec> = if pipeline.terminal.has_side() {
                        segment.side.iter().filter(|r| partition_of(&r.key) == p).collect()
                    } else {
                        vec![]
                    };
                    let taken = &mut tasks.get_mut(&p).expect("task")[n];
                    let (mut i, mut s) = (0, 0);
                    while i < input.len() || s < side.len() {
                        let take_input = match (input.get(i), side.get(s)) {
                            (Some(a), Some(b)) => a.ts <= b.ts,
                            (Some(_), None) => true,
                            _ => false,
                        };
                        if take_input {
                            let r = input[i];
                            taken.push(Taken::Input {
                                key: r.key.clone(),
                                values: apply_steps(&pipeline.pre, r.value.unwrap_or(0)),
                                ts: r.ts,
                            });
                            i += 1;
                        } else {
                            taken.push(Taken::Side(side[s].clone()));
                            s += 1;
                        }
                    }
                }
            }
            Some(buckets) => {
                // The first stage re-keys each input partition's records in order; each record
                // goes to the repartition topic's partition of its new key. With one partition
                // that is the input's order; with several, the interleaving is not known (the
                // harness only generates order-free terminals then).
                for p in 0..partitions {
                    for r in segment.input.iter().filter(|r| partition_of(&r.key) == p) {
                        for value in apply_steps(&pipeline.pre, r.value.unwrap_or(0)) {
                            let key = rekey(value, buckets);
                            let q = partition_of(&key);
                            tasks.get_mut(&q).expect("task")[n].push(Taken::Input {
                                key,
                                values: vec![value],
                                ts: r.ts,
                            });
                        }
                    }
                }
                if pipeline.terminal.has_side() {
                    // The side topic's records: after the segment's repartitioned ones (only
                    // order-free terminals read it after a re-key).
                    for r in &segment.side {
                        tasks.get_mut(&partition_of(&r.key)).expect("task")[n].push(Taken::Side(r.clone()));
                    }
                }
            }
        }
    }
    for segments in tasks.values() {
        let mut task = Task::new(pipeline);
        for taken in segments.iter().flatten() {
            task.take(taken, &mut expected);
        }
        task.finish(&mut expected);
    }
    expected
}

/// One task of the stateful stage.
struct Task<'p> {
    pipeline: &'p Pipeline,
    now: i64,
    table: BTreeMap<String, i64>,
    side: BTreeMap<String, i64>,
    windows: BTreeMap<WindowKey, i64>,
    /// Sliding windows: each key's records taken (not late), as (time, value).
    taken: BTreeMap<String, Vec<(i64, i64)>>,
    closed_through: i64,
    /// Stream–stream joins: each side's buffer (key, time, value, number), and the records
    /// that met nothing yet (side, number).
    buffers: [Vec<(String, i64, i64, u64)>; 2],
    /// Stream–stream joins: each side's buffer's own stream time (Kafka Streams' window
    /// stores keep theirs; `now` is the join's, shared by both sides).
    buffer_now: [i64; 2],
    unmatched: BTreeSet<(usize, u64)>,
    next: u64,
}

impl<'p> Task<'p> {
    fn new(pipeline: &'p Pipeline) -> Self {
        Self {
            pipeline,
            now: NO_TIME,
            table: BTreeMap::new(),
            side: BTreeMap::new(),
            windows: BTreeMap::new(),
            taken: BTreeMap::new(),
            closed_through: NO_TIME,
            buffers: [Vec::new(), Vec::new()],
            buffer_now: [NO_TIME, NO_TIME],
            unmatched: BTreeSet::new(),
            next: 0,
        }
    }

    fn take(&mut self, taken: &Taken, out: &mut Expected) {
        // Stream time is the windowed aggregation's or the join's own (as in Kafka Streams):
        // it moves with the records that reach it, not with those filtered out before.
        match taken {
            Taken::Side(r) => self.side_record(r, out),
            Taken::Input { key, values, ts } => {
                let post = if self.pipeline.rekey.is_some() {
                    values
                        .iter()
                        .flat_map(|v| apply_steps(&self.pipeline.post, *v))
                        .collect()
                } else {
                    values.clone()
                };
                for value in post {
                    self.input_record(key, value, *ts, out);
                }
            }
        }
    }

    fn side_record(&mut self, r: &Rec, out: &mut Expected) {
        match self.pipeline.terminal {
            Terminal::StreamTable { .. } | Terminal::TableTable { .. } => match r.value {
                Some(value) => {
                    self.side.insert(r.key.clone(), value);
                }
                None => {
                    self.side.remove(&r.key);
                }
            },
            Terminal::StreamStream {
                kind,
                before,
                after,
                grace,
            } => self.stream_join(1, kind, (before, after), grace, &r.key, r.value.unwrap_or(0), r.ts, out),
            _ => {}
        }
    }

    fn input_record(&mut self, key: &str, value: i64, ts: i64, out: &mut Expected) {
        match self.pipeline.terminal {
            Terminal::Aggregate(agg) | Terminal::TableTable { agg, .. } => {
                let new = agg.add(self.table.get(key).copied(), value);
                self.table.insert(key.to_string(), new);
                out.history.entry(key.to_string()).or_default().push(new);
            }
            Terminal::Windowed(windows) => self.window(&windows, key, value, ts, out),
            Terminal::StreamTable { left } => {
                let row = self.side.get(key).copied();
                if row.is_some() || left {
                    out.joins
                        .entry(key.to_string())
                        .or_default()
                        .push(joined(Some(value), row));
                }
            }
            Terminal::StreamStream {
                kind,
                before,
                after,
                grace,
            } => self.stream_join(0, kind, (before, after), grace, key, value, ts, out),
        }
    }

    fn window(&mut self, windows: &Windows, key: &str, value: i64, ts: i64, out: &mut Expected) {
        self.now = self.now.max(ts);
        let closed = windows.closed_through(self.now);
        match windows.kind {
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => {
                let open: Vec<(i64, i64)> = windows
                    .fixed_windows(ts)
                    .into_iter()
                    .filter(|(_, end)| *end > closed)
                    .collect();
                if open.is_empty() {
                    out.late += 1;
                    return;
                }
                for (start, end) in open {
                    let slot = (key.to_string(), start, end);
                    let new = windows.agg.add(self.windows.get(&slot).copied(), value);
                    self.windows.insert(slot.clone(), new);
                    out.ever_windows.insert(slot.clone());
                    out.all_windows.insert(slot, new);
                }
            }
            WindowKind::Session { gap } => {
                let near: Vec<WindowKey> = self
                    .windows
                    .keys()
                    .filter(|(k, start, end)| k == key && *start <= ts + gap && *end >= ts - gap && *end > closed)
                    .cloned()
                    .collect();
                let merged = near
                    .iter()
                    .fold((ts, ts), |(s, e), (_, start, end)| (s.min(*start), e.max(*end)));
                if merged.1 <= closed {
                    out.late += 1;
                    return;
                }
                let merged_key = (key.to_string(), merged.0, merged.1);
                if near.len() == 1 && near[0] == merged_key {
                    let new = windows.agg.add(self.windows.get(&merged_key).copied(), value);
                    self.windows.insert(merged_key.clone(), new);
                    out.ever_windows.insert(merged_key.clone());
                    out.all_windows.insert(merged_key, new);
                } else {
                    let mut aggregate: Option<i64> = None;
                    for session in &near {
                        if let Some(v) = self.windows.remove(session) {
                            aggregate = Some(aggregate.map_or(v, |a| a + v));
                        }
                        out.all_windows.remove(session);
                    }
                    let new = windows.agg.add(aggregate, value);
                    self.windows.insert(merged_key.clone(), new);
                    out.ever_windows.insert(merged_key.clone());
                    out.all_windows.insert(merged_key, new);
                }
            }
            WindowKind::Sliding { difference } => self.slide(windows, difference, key, value, ts, out),
        }
        self.close(windows, out);
    }

    /// A record into sliding windows, by their definition rather than by an algorithm: the
    /// key's windows are those of the records taken so far (one ending at each record, and
    /// one starting just after each record when a later record falls in it); every one that
    /// is open is made again of every record taken in it, and a closed one keeps what it had.
    /// Late, as in Kafka Streams, when the window starting just after the record ends at or
    /// before stream time - grace.
    fn slide(&mut self, windows: &Windows, difference: i64, key: &str, value: i64, ts: i64, out: &mut Expected) {
        let closed = windows.closed_through(self.now);
        if ts + 1 + difference <= self.now - windows.grace {
            out.late += 1;
            return;
        }
        let taken = self.taken.entry(key.to_string()).or_default();
        taken.push((ts, value));
        let holds = |(start, end): (i64, i64), t: i64| start <= t && t <= end;
        let mut all = BTreeSet::new();
        for &(time, _) in taken.iter() {
            all.insert(if time < difference {
                (0, difference)
            } else {
                (time - difference, time)
            });
            let after = (time + 1, time + 1 + difference);
            if taken.iter().any(|(other, _)| holds(after, *other)) {
                all.insert(after);
            }
        }
        for (start, end) in all {
            if end <= closed {
                continue;
            }
            let aggregate = taken
                .iter()
                .filter(|(t, _)| holds((start, end), *t))
                .fold(None, |aggregate, (_, v)| Some(windows.agg.add(aggregate, *v)));
            let Some(aggregate) = aggregate else { continue };
            let slot = (key.to_string(), start, end);
            self.windows.insert(slot.clone(), aggregate);
            out.ever_windows.insert(slot.clone());
            out.all_windows.insert(slot, aggregate);
        }
    }

    /// Closes the windows stream time has passed: their results are final.
    fn close(&mut self, windows: &Windows, out: &mut Expected) {
        let through = windows.closed_through(self.now);
        if through <= self.closed_through {
            return;
        }
        let after = self.closed_through;
        self.closed_through = through;
        if windows.emit_final {
            for ((key, start, end), value) in &self.windows {
                if *end > after && *end <= through {
                    out.finals.insert((key.clone(), *start, *end), *value);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_join(
        &mut self,
        side: usize,
        kind: JoinKind,
        (before, after): (i64, i64),
        grace: i64,
        key: &str,
        value: i64,
        ts: i64,
        out: &mut Expected,
    ) {
        self.now = self.now.max(ts);
        self.buffer_now[side] = self.buffer_now[side].max(ts);
        self.expire_join(kind, (before, after), grace, out);
        // As seen from this record's side: the side topic sees the window reversed.
        let (back, ahead) = if side == 0 { (before, after) } else { (after, before) };
        // Buffered while its buffer's retention (before + after + grace) holds it; a
        // record too old for it still meets what the other side holds, and is counted.
        let buffered = ts > self.buffer_now[side] - before - after - grace - 1;
        if !buffered {
            out.late += 1;
        }
        let number = self.next;
        self.next += 1;
        if buffered {
            self.buffers[side].push((key.to_string(), ts, value, number));
        }
        let theirs = 1 - side;
        let mut matches: Vec<(i64, i64, u64)> = self.buffers[theirs]
            .iter()
            .filter(|(k, t, _, _)| k == key && *t >= ts - back && *t <= ts + ahead)
            .map(|(_, t, v, n)| (*t, *v, *n))
            .collect();
        matches.sort();
        for (_, their_value, their_number) in &matches {
            let result = if side == 0 {
                joined(Some(value), Some(*their_value))
            } else {
                joined(Some(*their_value), Some(value))
            };
            out.joins.entry(key.to_string()).or_default().push(result);
            self.unmatched.remove(&(theirs, *their_number));
        }
        let alone = match kind {
            JoinKind::Inner => false,
            JoinKind::Left => side == 0,
            JoinKind::Outer => true,
        };
        if matches.is_empty() && alone {
            if ts + ahead < self.now || !buffered {
                // Its reach is behind stream time: on at once, as Kafka Streams does.
                let result = if side == 0 {
                    joined(Some(value), None)
                } else {
                    joined(None, Some(value))
                };
                out.joins.entry(key.to_string()).or_default().push(result);
            } else {
                self.unmatched.insert((side, number));
            }
        }
    }

    fn expire_join(&mut self, kind: JoinKind, (before, after): (i64, i64), grace: i64, out: &mut Expected) {
        if self.now == NO_TIME {
            return;
        }
        if kind != JoinKind::Inner {
            // Each side's window closes by its reach ahead: after for the stream, before for
            // the side topic.
            let through = |side: usize| self.now - if side == 0 { after } else { before } - grace - 1;
            let mut closed: Vec<(i64, usize, u64, String, i64)> = Vec::new();
            for &(side, number) in &self.unmatched {
                if let Some((key, t, v, _)) = self.buffers[side].iter().find(|(_, _, _, n)| *n == number) {
                    if *t <= through(side) {
                        closed.push((*t, side, number, key.clone(), *v));
                    }
                }
            }
            closed.sort();
            for (_, side, number, key, value) in closed {
                self.unmatched.remove(&(side, number));
                let result = if side == 0 {
                    joined(Some(value), None)
                } else {
                    joined(None, Some(value))
                };
                out.joins.entry(key).or_default().push(result);
            }
        }
        for (buffer, now) in self.buffers.iter_mut().zip(self.buffer_now) {
            if now != NO_TIME {
                let through = now - before - after - grace - 1;
                buffer.retain(|(_, t, _, _)| *t > through);
            }
        }
    }

    /// The end of the input: the last commit point closes and expires what stream time
    /// has passed, and the tables are what they are.
    fn finish(mut self, out: &mut Expected) {
        match self.pipeline.terminal {
            Terminal::Windowed(windows) => {
                self.close(&windows, out);
                let expired = windows.expired_through(self.now);
                self.windows.retain(|(_, _, end), _| *end > expired);
                out.windows.extend(self.windows);
            }
            Terminal::StreamStream {
                kind,
                before,
                after,
                grace,
            } => self.expire_join(kind, (before, after), grace, out),
            Terminal::TableTable { kind, .. } => {
                let keys: BTreeSet<String> = self.table.keys().chain(self.side.keys()).cloned().collect();
                for key in keys {
                    let (l, r) = (self.table.get(&key).copied(), self.side.get(&key).copied());
                    let row = match kind {
                        JoinKind::Inner => l.is_some() && r.is_some(),
                        JoinKind::Left => l.is_some(),
                        JoinKind::Outer => l.is_some() || r.is_some(),
                    };
                    if row {
                        out.table.insert(key, joined(l, r));
                    }
                }
                out.left.extend(self.table);
                out.side.extend(self.side);
            }
            Terminal::StreamTable { .. } => out.side.extend(self.side),
            Terminal::Aggregate(_) => out.table.extend(self.table),
        }
    }
}
