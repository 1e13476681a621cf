//! Every YAML example in the docs validates, so the reference cannot drift
//! from the parser: a block that starts with `rules:` as `.sluice/rules.yaml`,
//! every other one as `sluice.yaml`.

use std::path::Path;

fn yaml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some((number + 2, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_yaml_example_in_the_docs_validates() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let markdown = std::fs::read_to_string(&path).unwrap();
        for (line, text) in yaml_blocks(&markdown) {
            let name = format!("{}:{line}", path.display());
            let result = if text.starts_with("rules:") {
                sluice_spec::parse_rules(&name, &text, None).map(|_| ())
            } else {
                sluice_spec::parse(&name, &text).map(|_| ())
            };
            if let Err(errors) = result {
                panic!("the example at {name} does not validate:\n{errors}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} examples found");
}

#[test]
fn the_notifications_doc_lists_every_event_kind() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/notifications.md"),
    )
    .unwrap();
    for (kind, _) in sluice_spec::EVENT_KINDS {
        assert!(
            doc.contains(&format!("| `{kind}` |")),
            "docs/notifications.md misses `{kind}`"
        );
    }
}
