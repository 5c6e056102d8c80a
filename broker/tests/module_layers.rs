//! The broker's modules form layers: an arrow (`use crate::x`, or a `crate::x::...` path) only
//! points down, so no module imports one that imports it back. This test reads every source file
//! under `broker/src`, builds the graph of top-level modules (a file `src/x.rs` or a folder
//! `src/x/` is module `x`; its submodules count as `x`), resolves names re-exported by `lib.rs`
//! (`crate::Broker` is `broker`'s), and fails naming every cycle it finds. Test modules
//! (`#[cfg(test)]` files such as `*_tests.rs`) may look anywhere and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read broker/src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every `crate::name` in `text`, skipping line comments.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `sluice_codec::` never matches, but `mycrate::` would.
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        // `use crate::{a, b::c}`: every name at the top of the braces.
        if let Some(i) = code.find("crate::{") {
            let inner = &code[i + "crate::{".len()..];
            let inner = inner.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// `pub use module::{Name, ..}` and `pub use module::Name` in lib.rs: name -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

fn is_test_file(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.ends_with("_tests") || s == "tests")
}

fn find_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components; a component of more than one module is a cycle.
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn broker_modules_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        if is_test_file(file) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        // Everything after `#[cfg(test)]` at the start of a line is test code.
        let text = match text.find("\n#[cfg(test)]") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        for name in crate_paths(text) {
            let to = if modules.contains(&name) {
                name
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                continue; // a constant or item of lib.rs itself
            };
            if to != from {
                let rel = file
                    .strip_prefix(&src)
                    .unwrap_or(file)
                    .display()
                    .to_string();
                why.entry((from.clone(), to.clone())).or_insert(rel);
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    let cycles = find_cycles(&graph);
    let report: Vec<String> = cycles
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| c.iter().map(move |b| (a, b)))
                .filter_map(|(a, b)| {
                    why.get(&(a.clone(), b.clone()))
                        .map(|f| format!("{a} -> {b} ({f})"))
                })
                .collect();
            format!("cycle {{{}}}: {}", c.join(", "), edges.join("; "))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules of broker/src that import each other:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("d".into());
    assert_eq!(find_cycles(&g), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        crate_paths("use crate::{a, b::c};\nlet x = crate::d::e(); // crate::f\n"),
        vec!["a", "b", "d"]
    );
}

/// Where `text` names `Record::` (the store's record vocabulary) as a word of its own
/// (`SubscriptionRecord::` does not count): 1-based line numbers.
fn record_mentions(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            line.match_indices("Record::").any(|(i, _)| {
                !line[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|(n, _)| n + 1)
        .collect()
}

/// The log's records are `persist`'s business: every other module tells the store what
/// happened through the journal's event-named methods (`persist/journal.rs`), so a change of
/// the record vocabulary stays inside `broker/src/persist/`.
#[test]
fn only_persist_names_records() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let persist = src.join("persist");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&persist)) {
        let text = std::fs::read_to_string(file).expect("read source file");
        for line in record_mentions(&text) {
            found.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "`Record::` named outside broker/src/persist (use the Journal's methods):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_record_check_finds_a_record() {
    assert_eq!(
        record_mentions("a\nstore.append(Record::Skip { client, seq });\n"),
        vec![2]
    );
    assert!(record_mentions("let r = SubscriptionRecord::default();\n").is_empty());
}
