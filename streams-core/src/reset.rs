//! `APP reset`: Kafka Streams' application reset tool. The app starts over from the
//! beginning of its input: its internal topics (changelogs, repartition topics, the workers'
//! directory, and `.internal()` topics named after the app) are deleted, its consumer group's
//! offsets on its input topics are set to their earliest, and its local data directory is
//! removed. An `.internal()` topic not named after the app (`{app}-…`) may be read by another
//! app: it is kept, and listed, unless named with `--delete-topic` or all are asked for with
//! `--all-internal-topics`; a kept one the app writes has its offsets set to its end (the
//! next run writes it anew).
//!
//! It refuses while a worker of the app runs: one that holds the data directory here, one
//! whose web server answers (the directory lists them), or one the broker knows as a member
//! of the group (Kafka refuses an offset commit from outside a group that has members).

use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::app::App;
use crate::{Error, Result};

/// Where a reset sets the group's offsets on a source topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An input topic: its earliest offsets.
    Earliest,
    /// A topic the app writes as well as reads: its end (the next run writes it anew).
    End,
    /// An internal topic, deleted and made again: 0.
    Zero,
}

/// What to reset beyond the defaults, and whether to do it.
#[derive(Debug, Default, Clone)]
pub(crate) struct ResetOptions {
    /// Do it (without: say what would be done).
    pub yes: bool,
    /// `.internal()` topics not named after the app, to delete too.
    pub delete: Vec<String>,
    /// Delete every `.internal()` topic of the app, whatever its name.
    pub all_internal: bool,
}

/// What a reset of the app does, worked out before it does anything.
struct Plan {
    /// Internal topics that exist, to delete.
    delete: Vec<String>,
    /// Internal topics that exist and are not named after the app, kept (another app may
    /// read them).
    keep: Vec<String>,
    /// Source topics that exist, with their partition counts and where their offsets go.
    offsets: Vec<(String, i32, Target)>,
    /// The local data directory of the app, if there is one.
    data_dir: Option<std::path::PathBuf>,
}

/// Resets app `app` on `broker` (see the module's doc); without `yes`, says what it would
/// do and does nothing.
pub(crate) async fn reset(
    app: &App,
    broker: &str,
    settings: &[(String, String)],
    data_dir: &Path,
    options: &ResetOptions,
) -> Result<()> {
    let yes = options.yes;
    let app_dir = data_dir.join(app.id());
    // File system calls: off the async executor.
    let _lock = {
        let app_dir = app_dir.clone();
        tokio::task::spawn_blocking(move || lock(&app_dir))
            .await
            .map_err(|e| Error::Config(format!("locking the data directory: {e}")))??
    };
    let config = crate::broker::client_config(broker, settings);
    let cluster = {
        let config = config.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        tokio::task::spawn_blocking(move || {
            crate::broker::describe_cluster(&config, &|| std::time::Instant::now() > deadline)
        })
        .await
        .map_err(|e| Error::Config(format!("reading the cluster's topics: {e}")))?
        .map_err(|e| match e {
            Error::Stopping => Error::Config(format!("broker {broker} did not answer within 30 s")),
            other => other,
        })?
    };
    if cluster.is_embedded() {
        // librdkafka's mock cluster has no DeleteTopics: a reset would keep the changelogs
        // while the input is processed again.
        return Err(Error::Config(format!(
            "{broker} is the embedded broker, which cannot delete topics: its topics live in memory, so \
             restart it instead, and remove {} (a reset there is a fresh start)",
            app_dir.display()
        )));
    }
    let topics = cluster.topics;
    let directory = crate::web::directory::topic_name(app.id());
    let mut internal: Vec<String> = app.tables().iter().map(|(t, _)| t.changelog_topic(app.id())).collect();
    internal.extend(app.topics().iter().filter(|t| t.internal).map(|t| t.name.to_string()));
    internal.push(directory.clone());
    internal.sort();
    internal.dedup();
    for name in &options.delete {
        if !internal.contains(name) {
            return Err(Error::Config(format!(
                "`{name}` is not an internal topic of app `{}` (its internal topics: {}); reset deletes only those",
                app.id(),
                internal.join(", ")
            )));
        }
    }
    // Named after the app: its own. Others may be read by another app: only when asked.
    let prefix = format!("{}-", app.id());
    let (delete, keep): (Vec<String>, Vec<String>) = internal
        .iter()
        .filter(|t| topics.contains_key(*t))
        .cloned()
        .partition(|t| t.starts_with(&prefix) || options.all_internal || options.delete.contains(t));
    let tasks = app.tasks();
    let sent: Vec<&str> = tasks.iter().flat_map(|t| t.sends.iter().map(|s| &*s.name)).collect();
    let mut offsets: Vec<(String, i32, Target)> = Vec::new();
    let globals = app.global_tables();
    for topic in tasks
        .iter()
        .flat_map(|task| task.sources.iter())
        .chain(globals.iter().map(|g| &g.topic))
    {
        let Some(&partitions) = topics.get(&*topic.name) else {
            continue;
        };
        let target = if delete.iter().any(|i| *i == topic.name) {
            // Deleted and made again: its offsets start at 0 (committed here too, for a
            // broker that keeps a deleted topic's offsets).
            Target::Zero
        } else if sent.contains(&&*topic.name) {
            // The app writes it too (an intermediate topic, not declared `.internal()`): the
            // run after the reset writes it again, so what is there now is skipped.
            Target::End
        } else {
            Target::Earliest
        };
        offsets.push((topic.name.to_string(), partitions, target));
    }
    offsets.sort_by(|a, b| a.0.cmp(&b.0));
    offsets.dedup_by(|a, b| a.0 == b.0);
    let plan = Plan {
        delete,
        keep,
        offsets,
        data_dir: app_dir.exists().then(|| app_dir.clone()),
    };
    if topics.contains_key(&directory) {
        refuse_if_workers_answer(app, &config, &directory).await?;
    }
    print_plan(app, broker, &plan);
    if !yes {
        return Err(Error::Config(format!(
            "nothing done: run `reset --yes` to reset app `{}` (this cannot be undone)",
            app.id()
        )));
    }
    // The offsets first: the group coordinator refuses them while the group has members,
    // before anything is deleted.
    {
        let (config, app_id, offsets) = (config.clone(), app.id().to_string(), plan.offsets.clone());
        tokio::task::spawn_blocking(move || reset_offsets(&config, &app_id, &offsets))
            .await
            .map_err(|e| Error::Config(format!("resetting offsets: {e}")))??;
    }
    if !plan.delete.is_empty() {
        delete_topics(&config, &plan.delete).await?;
    }
    if let Some(dir) = plan.data_dir.clone() {
        tokio::task::spawn_blocking(move || remove_data_dir(&dir))
            .await
            .map_err(|e| Error::Config(format!("removing the data directory: {e}")))??;
    }
    println!(
        "app `{}` reset: its next worker starts from the beginning of its input",
        app.id()
    );
    Ok(())
}

/// The data directory's lock, so that no worker starts on it meanwhile; an error when a
/// worker holds it.
fn lock(app_dir: &Path) -> Result<Option<std::fs::File>> {
    let path = app_dir.join("worker.lock");
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "a worker is running on {} (it holds {}); stop it first",
            app_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("cannot lock {}", path.display()), e)),
    }
}

/// Reads the workers' directory to its end and asks each worker listed whether it runs.
async fn refuse_if_workers_answer(app: &App, config: &rdkafka::ClientConfig, directory: &str) -> Result<()> {
    let urls = {
        let (config, topic) = (config.clone(), directory.to_string());
        tokio::task::spawn_blocking(move || listed_workers(&config, &topic))
            .await
            .map_err(|e| Error::Config(format!("reading the directory: {e}")))??
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Config(format!("creating an HTTP client: {e}")))?;
    let mut running = Vec::new();
    for url in urls {
        let answer = client.get(format!("{url}/health")).send().await;
        if let Ok(answer) = answer {
            let text = answer.text().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if body.get("app").and_then(|a| a.as_str()) == Some(app.id()) {
                running.push(url);
            }
        }
    }
    if running.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "workers of app `{}` are running ({}); stop them first",
            app.id(),
            running.join(", ")
        )))
    }
}

/// The URLs the directory lists (workers that did not say they stopped).
fn listed_workers(config: &rdkafka::ClientConfig, topic: &str) -> Result<Vec<String>> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "streams-reset")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(|e| Error::kafka("reading the directory", e))?;
    let mut urls = std::collections::BTreeMap::new();
    if high <= low {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| Error::kafka("reading the directory", e))?;
    consumer
        .assign(&list)
        .map_err(|e| Error::kafka("reading the directory", e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some(key) = message.key() {
                    // Keyed by worker; the value names its URL (none: it stopped).
                    let url = message.payload().and_then(|value| {
                        let entry: serde_json::Value = serde_json::from_slice(value).ok()?;
                        entry.get("url")?.as_str().map(str::to_string)
                    });
                    urls.insert(key.to_vec(), url);
                }
                if message.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(error)) => tracing::debug!("directory: {error}"),
            None => {}
        }
    }
    let mut live: Vec<String> = urls.into_values().flatten().collect();
    live.sort();
    live.dedup();
    Ok(live)
}

fn print_plan(app: &App, broker: &str, plan: &Plan) {
    println!("reset of app `{}` on {broker}:", app.id());
    if plan.delete.is_empty() {
        println!("  no internal topics to delete");
    } else {
        println!("  delete internal topics: {}", plan.delete.join(", "));
    }
    if !plan.keep.is_empty() {
        println!(
            "  keep internal topics not named after the app (another app may read them): {}; delete them with \
             --delete-topic NAME or --all-internal-topics",
            plan.keep.join(", ")
        );
    }
    let named = |target: Target| -> Vec<String> {
        plan.offsets
            .iter()
            .filter(|(_, _, t)| *t == target)
            .map(|(topic, partitions, _)| format!("{topic} ({partitions} partitions)"))
            .collect()
    };
    let (earliest, end) = (named(Target::Earliest), named(Target::End));
    if earliest.is_empty() {
        println!("  no input topics");
    } else {
        println!(
            "  set group `{}`'s offsets to the earliest on: {}",
            app.id(),
            earliest.join(", ")
        );
    }
    if !end.is_empty() {
        println!(
            "  set group `{}`'s offsets to the end on the topics it also writes: {}",
            app.id(),
            end.join(", ")
        );
    }
    match &plan.data_dir {
        Some(dir) => println!("  remove the local data directory {}", dir.display()),
        None => println!("  no local data directory"),
    }
}

/// Commits, as a client outside the group, the offsets `offsets` say for each partition.
fn reset_offsets(config: &rdkafka::ClientConfig, group: &str, offsets: &[(String, i32, Target)]) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let mut list = TopicPartitionList::new();
    for (topic, partitions, target) in offsets {
        for partition in 0..*partitions {
            let offset = match target {
                Target::Zero => 0,
                Target::Earliest | Target::End => {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, partition, Duration::from_secs(10))
                        .map_err(|e| Error::kafka(format!("reading the offsets of {topic}[{partition}]"), e))?;
                    if *target == Target::End {
                        high
                    } else {
                        low
                    }
                }
            };
            list.add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|e| Error::kafka("resetting offsets", e))?;
        }
    }
    consumer.commit(&list, CommitMode::Sync).map_err(|e| {
        Error::Config(format!(
            "the group `{group}` refused the offset reset ({e}): are workers of the app still running? stop them first"
        ))
    })?;
    for (topic, partitions, target) in offsets {
        let to = match target {
            Target::Earliest => "the earliest",
            Target::End => "the end",
            Target::Zero => "0 (the topic is made anew)",
        };
        println!("  offsets of {topic} ({partitions} partitions) set to {to}");
    }
    Ok(())
}

async fn delete_topics(config: &rdkafka::ClientConfig, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| Error::kafka("creating the admin client", e))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&names, &options)
        .await
        .map_err(|e| Error::kafka("deleting the internal topics", e))?;
    let mut failed = Vec::new();
    for result in results {
        match result {
            Ok(name) => println!("  deleted topic {name}"),
            Err((name, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                println!("  topic {name} was gone already")
            }
            Err((name, code)) => failed.push(format!("{name}: {code}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cannot delete internal topics ({}); the offsets were reset: run reset again once fixed",
            failed.join("; ")
        )))
    }
}

fn remove_data_dir(dir: &Path) -> Result<()> {
    // The lock file is held by this process until the end: everything else goes first.
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "worker.lock") {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
    }
    let _ = std::fs::remove_file(dir.join("worker.lock"));
    let _ = std::fs::remove_dir(dir);
    println!("  removed {}", dir.display());
    Ok(())
}
