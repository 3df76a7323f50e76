//! The README shows the code as it is: listings that claim to be a file are that file.

fn read(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first ```rust block after `marker` in the README.
fn listing_after(readme: &str, marker: &str) -> String {
    let from = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker:?}"));
    let start = readme[from..].find("```rust\n").expect("a rust block") + from + "```rust\n".len();
    let end = readme[start..].find("\n```\n").expect("the block's end") + start + 1;
    readme[start..end].to_string()
}

#[test]
fn the_seed_app_in_the_readme_is_examples_hit_counter() {
    let readme = read("README.md");
    assert_eq!(
        listing_after(&readme, "Here it is in full"),
        read("examples/hit_counter.rs"),
        "copy examples/hit_counter.rs into the README's listing"
    );
}

#[test]
fn the_dsl_seed_app_in_the_readme_is_examples_hit_counter_dsl() {
    let readme = read("README.md");
    assert_eq!(
        listing_after(&readme, "The same app as one pipeline"),
        read("examples/hit_counter_dsl.rs"),
        "copy examples/hit_counter_dsl.rs into the README's listing"
    );
}
