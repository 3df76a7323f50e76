//! Table lookups (interactive queries): a key is answered by the worker that holds its
//! partition. A worker asked for a key it does not hold forwards the request to the owner
//! the directory names (or, with `?local=true`, answers 404 naming it). While the
//! partition is restored, or the group rebalances, the answer is 503 with `Retry-After`:
//! never a stale or empty value presented as current. A caller that accepts a stale value
//! (`?stale=true`) is answered from this worker's standby copy of the partition when it has
//! one and does not hold it, marked so with the copy's lag (Kafka Streams' KIP-535).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{error, unavailable, Held, TableInfo, WebState};

/// Set on a request one worker forwards to another: it is answered there or not at all.
const FORWARDED: &str = "x-streams-forwarded-by";
/// The worker that answered, and the partition of the key.
const SERVED_BY: &str = "x-streams-served-by";
const PARTITION: &str = "x-streams-partition";
/// On a 404 of `?local=true`: the worker that holds the key.
const OWNER: &str = "x-streams-owner";
/// On an answer from a standby copy (`?stale=true`): `true`, and how many changelog records
/// the copy was behind as of its last pass.
const STALE: &str = "x-streams-stale";
const STANDBY_LAG: &str = "x-streams-standby-lag";

/// How many entries a listing gives unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// A lookup's query string.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Params {
    /// Answer from this worker only: 404 naming the owner when it is elsewhere.
    #[serde(default)]
    local: bool,
    /// A stale value will do: from this worker's standby copy, when it keeps one of a
    /// partition it does not hold (tables that are not windowed).
    #[serde(default)]
    stale: bool,
    /// Windowed tables: windows starting from (ms, inclusive).
    from: Option<i64>,
    /// Windowed tables: windows starting up to (ms, inclusive).
    to: Option<i64>,
    /// Listings: keys whose text starts so.
    prefix: Option<String>,
    /// Listings: at most this many entries.
    limit: Option<usize>,
}

/// `GET /tables`: the app's tables.
pub(super) async fn tables(State(state): State<Arc<WebState>>) -> Response {
    let tables: Vec<serde_json::Value> = state
        .tables
        .iter()
        .map(|table| {
            let held: Vec<i32> = (0..table.partitions)
                .filter(|p| !matches!(state.local.held(table.spec.name, *p), Held::NotHere))
                .collect();
            serde_json::json!({
                "name": table.spec.name,
                "key_type": crate::topology::short_type(table.spec.key_type),
                "value_type": crate::topology::short_type(table.spec.value_type),
                "windowed": table.spec.windowed,
                "queryable": table.spec.lookup.is_some(),
                "changelog": table.spec.changelog_topic(&state.app_id),
                "kept_by": table.task,
                "partitions": table.partitions,
                "partitions_here": held,
            })
        })
        .collect();
    let workers: Vec<serde_json::Value> = state
        .directory
        .workers()
        .into_iter()
        .map(|(url, held)| serde_json::json!({ "url": url, "partitions": held }))
        .collect();
    axum::Json(serde_json::json!({
        "app": state.app_id,
        "worker": state.url,
        "tables": tables,
        "workers": workers,
    }))
    .into_response()
}

fn table<'s>(state: &'s WebState, name: &str) -> Result<&'s TableInfo, Box<Response>> {
    state.tables.iter().find(|t| t.spec.name == name).ok_or_else(|| {
        let names: Vec<&str> = state.tables.iter().map(|t| t.spec.name).collect();
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!(
                "no table `{name}` in app `{}` (its tables: {})",
                state.app_id,
                names.join(", ")
            ),
        ))
    })
}

/// `GET /tables/{name}/{key}`: the key's value as JSON (windowed tables: its windows from
/// `from` to `to`), from whichever worker holds it.
pub(super) async fn get(
    State(state): State<Arc<WebState>>,
    Path((name, key)): Path<(String, String)>,
    Query(params): Query<Params>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let info = match table(&state, &name) {
        Ok(info) => info,
        Err(response) => return *response,
    };
    let Some(lookup) = info.spec.lookup else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("table `{name}` is kept by an operation for itself; it is not looked up"),
        );
    };
    let (native, stored) = match (lookup.0)(&key) {
        Ok(keys) => keys,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{key}` is not a key of table `{name}`: {why}"),
            )
        }
    };
    let partition = crate::partitioner::kafka_partition(&native, info.partitions);
    let held = state.local.held(&name, partition);
    // A caller that takes a stale value gets this worker's copy, if it keeps one, of a
    // partition it does not hold; else the answer any caller gets. (A worker restoring the
    // partition has no copy of it any more: the restore took it over.)
    if params.stale && !info.spec.windowed && matches!(held, Held::NotHere) {
        if let Some((store, lag)) = state.local.standby(&name, partition) {
            return from_standby(&state, store, lag, &name, &key, stored, partition).await;
        }
    }
    match held {
        Held::Here(ctx, index) => {
            // A worker whose partitions the group gave away without it knowing yet (its
            // session expired) still holds them: the new owner's claim says otherwise.
            if let Some(owner) = state.directory.owner(&info.source, partition) {
                if owner != state.url {
                    return unavailable(format!(
                        "partition {partition} of table `{name}` now belongs to {owner}; ask again shortly"
                    ));
                }
            }
            let (windowed, from, to) = (info.spec.windowed, params.from, params.to);
            let task = Arc::clone(&ctx);
            let read = tokio::task::spawn_blocking(move || {
                if windowed {
                    windows(&ctx, index, &stored, from, to)
                } else {
                    ctx.lookup(index, &stored)
                        .map(|value| value.map(|v| json_of(&v)))
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            // Revoked meanwhile (a scan stops then, with part of the answer).
            if task.finishing.load(std::sync::atomic::Ordering::Relaxed) {
                return unavailable(format!(
                    "partition {partition} of table `{name}` left this worker during the lookup; ask again shortly"
                ));
            }
            let value = match read {
                Ok(Ok(value)) => value,
                Ok(Err(why)) => return error(StatusCode::INTERNAL_SERVER_ERROR, why),
                Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("lookup failed: {why}")),
            };
            let mut response = match value {
                Some(value) => axum::Json(value).into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("table `{name}` has no key `{key}` (partition {partition})"),
                ),
            };
            set(&mut response, SERVED_BY, &state.url);
            set(&mut response, PARTITION, &partition.to_string());
            response
        }
        Held::Restoring => unavailable(format!(
            "partition {partition} of table `{name}` is being restored on this worker; ask again shortly"
        )),
        Held::NotHere => {
            let forwarded = headers.contains_key(FORWARDED);
            if forwarded || state.local.rebalancing() {
                return unavailable(format!(
                    "partition {partition} of table `{name}` is moving between workers (a rebalance); ask again shortly"
                ));
            }
            let owner = state
                .directory
                .owner(&info.source, partition)
                .filter(|owner| *owner != state.url);
            let Some(owner) = owner else {
                return unavailable(format!(
                    "no worker holds partition {partition} of table `{name}` right now (a rebalance); ask again shortly"
                ));
            };
            if params.local {
                let mut response = (
                    StatusCode::NOT_FOUND,
                    axum::Json(serde_json::json!({
                        "error": format!("partition {partition} of table `{name}` is held by another worker"),
                        "owner": owner,
                        "partition": partition,
                    })),
                )
                    .into_response();
                set(&mut response, OWNER, &owner);
                return response;
            }
            forward(&state, &owner, &name, &key, raw.as_deref()).await
        }
    }
}

/// A key's value from this worker's standby copy, marked stale with the copy's lag.
async fn from_standby(
    state: &WebState,
    store: Arc<dyn crate::store::StateStore>,
    lag: u64,
    name: &str,
    key: &str,
    stored: Vec<u8>,
    partition: i32,
) -> Response {
    let read = tokio::task::spawn_blocking(move || store.get(&stored)).await;
    let mut response = match read {
        Ok(Ok(Some(value))) => axum::Json(json_of(&value)).into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("table `{name}` has no key `{key}` (partition {partition}, standby copy)"),
        ),
        Ok(Err(why)) => return error(StatusCode::INTERNAL_SERVER_ERROR, why.to_string()),
        Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("lookup failed: {why}")),
    };
    set(&mut response, SERVED_BY, &state.url);
    set(&mut response, PARTITION, &partition.to_string());
    set(&mut response, STALE, "true");
    set(&mut response, STANDBY_LAG, &lag.to_string());
    response
}

/// The windows of a key from the store key's bytes, as JSON; `None` when it has none.
fn windows(
    ctx: &crate::task::TaskContext,
    index: usize,
    key: &[u8],
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Option<serde_json::Value>, String> {
    use crate::window::{split_window_key, window_key, Window};
    // Windows start at or after the epoch.
    if to.is_some_and(|to| to < 0) {
        return Ok(None);
    }
    let low = window_key(key, Window::new(from.unwrap_or(0).max(0), 0));
    let high = match to.and_then(|to| to.checked_add(1)) {
        Some(after) => window_key(key, Window::new(after, 0)),
        None => {
            let mut high = key.to_vec();
            high.extend_from_slice(&[0xff; 17]);
            high
        }
    };
    // Keys of other lengths belong to other keys that start with this one's bytes.
    let exact = |bytes: &[u8]| split_window_key(bytes).is_some_and(|(found, _)| found == key);
    let (entries, _) = ctx
        .scan(index, &low, Some(&high), &exact, usize::MAX)
        .map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Ok(None);
    }
    let windows: Vec<serde_json::Value> = entries
        .iter()
        .filter_map(|(bytes, value)| {
            let (_, window) = split_window_key(bytes)?;
            Some(serde_json::json!({ "start": window.start, "end": window.end, "value": json_of(value) }))
        })
        .collect();
    Ok(Some(serde_json::Value::Array(windows)))
}

/// A stored value as JSON (values are stored as JSON; anything else shows as text).
fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into()))
}

fn set(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
}

/// Asks `owner` for the key and hands its answer back as it is.
async fn forward(state: &WebState, owner: &str, name: &str, key: &str, query: Option<&str>) -> Response {
    let mut url = match reqwest::Url::parse(owner) {
        Ok(url) => url,
        Err(why) => return unavailable(format!("the directory names `{owner}`, which is not a URL: {why}")),
    };
    // Path segments are percent-encoded here: any key text goes through.
    match url.path_segments_mut() {
        Ok(mut segments) => {
            segments.pop_if_empty().push("tables").push(name).push(key);
        }
        Err(()) => return unavailable(format!("the directory names `{owner}`, which cannot take a path")),
    }
    url.set_query(query);
    let answer = state
        .client
        .get(url)
        .header(FORWARDED, &state.url)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => {
            return unavailable(format!(
                "the worker holding this key ({owner}) did not answer: {why}; ask again shortly"
            ))
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE.as_str(),
        header::RETRY_AFTER.as_str(),
        SERVED_BY,
        PARTITION,
    ] {
        if let Some(value) = answer
            .headers()
            .get(name)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.insert(name, value);
            }
        }
    }
    match answer.bytes().await {
        Ok(body) => (status, headers, body.to_vec()).into_response(),
        Err(why) => unavailable(format!("the answer of {owner} broke off: {why}; ask again shortly")),
    }
}

/// `GET /tables/{name}?prefix=…&limit=…`: keys and values of the partitions this worker
/// holds, in key order within each partition's answer, keys whose text starts with
/// `prefix`.
pub(super) async fn list(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let info = match table(&state, &name) {
        Ok(info) => info,
        Err(response) => return *response,
    };
    if state.local.rebalancing() {
        return unavailable("the group is rebalancing; ask again shortly");
    }
    let mut held = Vec::new();
    for partition in 0..info.partitions {
        match state.local.held(&name, partition) {
            Held::Here(ctx, index) => held.push((partition, ctx, index)),
            Held::Restoring => {
                return unavailable(format!(
                    "partition {partition} of table `{name}` is being restored on this worker; ask again shortly"
                ))
            }
            Held::NotHere => {}
        }
    }
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let prefix = params.prefix.unwrap_or_default();
    let show = info.spec.show_key.0;
    let partitions: Vec<i32> = held.iter().map(|(p, _, _)| *p).collect();
    let tasks: Vec<Arc<crate::task::TaskContext>> = held.iter().map(|(_, ctx, _)| Arc::clone(ctx)).collect();
    let read = tokio::task::spawn_blocking(move || -> Result<(Vec<serde_json::Value>, bool), String> {
        let keep = |key: &[u8]| show(key).starts_with(&prefix);
        let mut found: Vec<(String, serde_json::Value)> = Vec::new();
        let mut more = false;
        for (_, ctx, index) in &held {
            let (entries, cut) = ctx.scan(*index, &[], None, &keep, limit).map_err(|e| e.to_string())?;
            more |= cut;
            found.extend(entries.iter().map(|(key, value)| (show(key), json_of(value))));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        if found.len() > limit {
            found.truncate(limit);
            more = true;
        }
        let entries = found
            .into_iter()
            .map(|(key, value)| serde_json::json!({ "key": key, "value": value }))
            .collect();
        Ok((entries, more))
    })
    .await;
    if tasks
        .iter()
        .any(|t| t.finishing.load(std::sync::atomic::Ordering::Relaxed))
    {
        return unavailable("a partition left this worker during the listing; ask again shortly");
    }
    match read {
        Ok(Ok((entries, more))) => axum::Json(serde_json::json!({
            "table": name,
            "worker": state.url,
            "partitions": partitions,
            "entries": entries,
            "truncated": more,
        }))
        .into_response(),
        Ok(Err(why)) => error(StatusCode::INTERNAL_SERVER_ERROR, why),
        Err(why) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("listing failed: {why}")),
    }
}
