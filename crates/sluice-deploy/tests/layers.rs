//! The deployment core's modules, read from the source tree: they import
//! each other without a cycle, and the effect modules (instance mechanics,
//! a release's files, rendering, data, the runtime…) import none of the
//! modules that orchestrate them. `lib.rs` is the facade and holds the
//! shared handle every module may use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules below the orchestration: effects (instances, a release's files,
/// rendering, data, the runtime…) and pure decisions (gates).
const BELOW: &[&str] = &[
    "certs",
    "data",
    "experiment::plan",
    "exposure",
    "gates",
    "health",
    "instances",
    "release",
    "render",
    "rules::in_force",
    "runtime",
    "traffic",
    "workdir",
];

/// Modules that orchestrate: they may use effects, never the other way round.
const ORCHESTRATORS: &[&str] = &[
    "aftermath",
    "deploy",
    "experiment",
    "heal",
    "incidents",
    "promote",
    "release_maker",
    "rollout",
    "rules",
];

/// The modules that own a concern (releases, promotions, deployments,
/// experiments, incidents, healing): they meet in the store (a promotion
/// row the deployments loop takes, a pending promotion the gatekeeper
/// takes) or through the alarm queue, not by calling each other.
const CONTROLLERS: &[&str] = &[
    "release_maker",
    "promote",
    "deploy",
    "experiment",
    "incidents",
    "heal",
];

#[test]
fn controllers_do_not_call_each_other() {
    let graph = graph();
    let mut calls = Vec::new();
    for controller in CONTROLLERS {
        for other in &graph[*controller] {
            if CONTROLLERS.contains(&other.as_str()) {
                calls.push(format!("{controller} → {other}"));
            }
        }
    }
    assert!(
        calls.is_empty(),
        "controllers calling each other: {calls:?}"
    );
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = graph();
    assert!(graph.len() > 15, "the modules were found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("sluice-deploy's modules import each other in a circle: {cycle:?}");
    }
}

#[test]
fn modules_below_never_call_upward() {
    let graph = graph();
    for effect in BELOW {
        let imports = graph
            .get(*effect)
            .unwrap_or_else(|| panic!("no module {effect}"));
        let upward: Vec<_> = imports
            .iter()
            .filter(|m| ORCHESTRATORS.contains(&m.as_str()))
            .collect();
        assert!(upward.is_empty(), "{effect} imports {upward:?}");
    }
}

/// Each module (`a`, or `a::b` for a file in `a/`) and the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    collect(&src, &src, &mut files);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, text)| {
            let named = named_paths(module, text)
                .into_iter()
                .filter_map(|path| longest_module(&modules, &path))
                .filter(|m| m != module && !module.starts_with(&format!("{m}::")))
                .collect();
            (module.clone(), named)
        })
        .collect()
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        let relative = path.strip_prefix(root).unwrap().with_extension("");
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let module = parts.join("::");
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Tests may reach anywhere; the layering is about the code itself.
        let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
        files.insert(module, code);
    }
}

/// Every `crate::…` path the text names (a grouped `use crate::{a, b::c}`
/// gives `a` and `b::c`), and `super::…` as the parent module's.
fn named_paths(module: &str, text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let parent = module.rsplit_once("::").map(|(p, _)| p.to_string());
    for (prefix, base) in [
        ("crate::", String::new()),
        ("super::", parent.unwrap_or_default()),
    ] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let joined = |p: &str| {
                if base.is_empty() {
                    p.to_string()
                } else {
                    format!("{base}::{p}")
                }
            };
            if let Some(group) = rest.strip_prefix('{') {
                let end = closing_brace(group);
                for path in flatten(&group[..end]) {
                    paths.push(joined(&path));
                }
            } else {
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push(joined(path.trim_end_matches(':')));
            }
        }
    }
    paths
}

fn closing_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

/// `a, b::c, d::{e, f}` → `a`, `b::c`, `d::e`, `d::f`.
fn flatten(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        match item.split_once("::{") {
            Some((head, tail)) => {
                for inner in flatten(tail.trim_end_matches('}')) {
                    out.push(format!("{head}::{inner}"));
                }
            }
            None => out.push(item.to_string()),
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn longest_module(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Visiting);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn the_reader_finds_grouped_and_nested_imports() {
    let text =
        "use crate::{Inner, aftermath, rules::{in_force, x}};\nlet a = crate::instances::drain(x);";
    assert_eq!(
        named_paths("deploy", text),
        [
            "Inner",
            "aftermath",
            "rules::in_force",
            "rules::x",
            "instances::drain"
        ]
    );
    let modules: BTreeSet<String> = ["rules", "rules::in_force", "instances"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(
        longest_module(&modules, "rules::in_force::health_rules").as_deref(),
        Some("rules::in_force")
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
}
