//! The crate's layers (README, Layout): each module imports only modules of its own layer
//! or below. Read from the sources: every `crate::…` path and `use crate::{…}` group outside
//! comments and unit tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "message",
        "metrics",
        "partitioner",
        "record",
        "codec",
        "schema",
        "faust",
        "window",
        "spec",
    ],
    &["store"],
    &["changelog"],
    &["task"],
    &["topic", "table"],
    &["stream", "agent", "timer"],
    &["dsl"],
    &["app"],
    &["topology", "web", "worker", "broker"],
    &["testing", "tail", "reset", "cli"],
];

/// Items the crate root re-exports, by the module that defines them.
const ROOT: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("DecodeError", "error"),
    ("EncodeError", "error"),
    ("Origin", "error"),
    ("OnError", "error"),
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
    ("WindowedTable", "table"),
    ("TableSpec", "spec"),
    ("Stream", "stream"),
    ("Event", "stream"),
    ("Next", "stream"),
    ("Punctuated", "stream"),
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

/// The module an item named by `crate::{name}` is in.
fn module_named(name: &str) -> String {
    ROOT.iter()
        .find(|(item, _)| *item == name)
        .map_or(name.to_string(), |(_, module)| module.to_string())
}

/// The text of a `{ .. }` group that `text` starts with (nested groups included).
fn braced(text: &str) -> &str {
    let mut depth = 0;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[1..at];
                }
            }
            _ => {}
        }
    }
    &text[1..]
}

/// The first path segment of each item of a `use` group: `a, b::{c, d}, e` gives a, b, e.
fn group_heads(group: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    heads.push(&group[start..]);
    heads
        .into_iter()
        .map(|item| item.trim().split("::").next().unwrap_or_default().trim())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The modules `code` refers to through `crate::`, each with its byte position: paths and
/// `use crate::{..}` groups, over as many lines as they take.
fn referenced(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        let after = &code[at + "crate::".len()..];
        if after.starts_with('{') {
            for name in group_heads(braced(after)) {
                out.push((at, module_named(name)));
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((at, module_named(&name)));
            }
        }
        from = at + "crate::".len();
    }
    out
}

/// A source file's code: up to its unit tests (which may use anything), comments blanked.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or_default());
        code.push('\n');
    }
    code
}

#[test]
fn imports_over_several_lines_are_read() {
    let code = code_of("use crate::{\n    a::X,\n    b::{c, d},\n    Error, // e::Y\n};\nfn f() { crate::f::g() }\n");
    let modules: Vec<String> = referenced(&code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(modules, vec!["a", "b", "error", "f"]);
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
        let code = code_of(&text);
        for (at, target) in referenced(&code) {
            if target == "self" || target == module {
                continue;
            }
            match layer(&target) {
                Some(theirs) if theirs > own => {
                    let line = code[..at].matches('\n').count() + 1;
                    upward.entry(module.clone()).or_default().push(format!(
                        "{}:{line} uses `{target}` (layer {theirs} above {own})",
                        file.strip_prefix(&src).unwrap_or(file).display(),
                    ));
                }
                Some(_) => {}
                None => unknown.push(format!("{target} (from {module})")),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules in no layer: {unknown:?}; add them to LAYERS"
    );
    assert!(upward.is_empty(), "imports upwards: {upward:#?}");
}
