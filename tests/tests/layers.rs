//! The crate's layers (README, Layout): each module imports only modules of its own layer
//! or below. Read from the sources: every `crate::…` path outside comments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[&[&str]] = &[
    &["error", "message", "metrics", "record", "codec", "spec"],
    &["store"],
    &["changelog"],
    &["task"],
    &["topic", "table"],
    &["stream", "agent"],
    &["dsl"],
    &["app"],
    &["topology", "worker", "broker"],
    &["testing", "tail", "cli"],
];

/// Items the crate root re-exports, by the module that defines them.
const ROOT: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("DecodeError", "error"),
    ("EncodeError", "error"),
    ("Origin", "error"),
    ("Record", "record"),
    ("Key", "codec"),
    ("AsKey", "codec"),
    ("Json", "codec"),
    ("Metrics", "metrics"),
    ("TaskSpec", "task"),
    ("TaskKind", "task"),
    ("Topic", "topic"),
    ("TopicSpec", "spec"),
    ("Table", "table"),
    ("TableSpec", "spec"),
    ("Stream", "stream"),
    ("Event", "stream"),
    ("Agent", "agent"),
    ("AgentSpec", "agent"),
    ("AgentResult", "agent"),
    ("App", "app"),
    ("Topology", "topology"),
    ("EmbeddedBroker", "broker"),
    ("Worker", "worker"),
    ("WorkerHandle", "worker"),
    ("WorkerOptions", "worker"),
    ("init_logging", "cli"),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module (first path segment under `src/`) of a source file.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The modules a line refers to through `crate::`.
fn referenced(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            let module = ROOT
                .iter()
                .find(|(item, _)| *item == name)
                .map_or(name.clone(), |(_, module)| module.to_string());
            out.push(module);
        }
        // `use crate::{a, b}`: every name in the braces.
        if let Some(braced) = after.strip_prefix('{') {
            let inside = braced.split('}').next().unwrap_or_default();
            for item in inside.split(',') {
                let name = item.trim().split("::").next().unwrap_or_default().trim();
                if name.is_empty() {
                    continue;
                }
                let module = ROOT
                    .iter()
                    .find(|(root, _)| *root == name)
                    .map_or(name.to_string(), |(_, module)| module.to_string());
                out.push(module);
            }
        }
        rest = after;
    }
    out
}

#[test]
fn every_module_imports_only_its_layer_and_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../streams-core/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue; // the facade re-exports every layer
        }
        let Some(own) = layer(&module) else {
            unknown.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break; // unit tests (last in a file) may use anything
            }
            if code.starts_with("//") {
                continue;
            }
            for target in referenced(code) {
                if target == "self" || target == module {
                    continue;
                }
                match layer(&target) {
                    Some(theirs) if theirs > own => {
                        upward.entry(module.clone()).or_default().push(format!(
                            "{}:{} uses `{target}` (layer {theirs} above {own})",
                            file.strip_prefix(&src).unwrap_or(file).display(),
                            number + 1
                        ));
                    }
                    Some(_) => {}
                    None => unknown.push(format!("{target} (from {module})")),
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules in no layer: {unknown:?}; add them to LAYERS"
    );
    assert!(upward.is_empty(), "imports upwards: {upward:#?}");
}
