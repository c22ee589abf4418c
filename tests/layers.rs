//! The top-level modules of `src/` import each other without cycles (issue 11, "Layers without
//! cycles"; `docs/architecture.md` has the map). A cycle means two modules cannot be read,
//! tested or changed apart, which is how layers erode; this test keeps the property true by
//! recomputing the graph from the source text, the way the command in the issue does: a
//! module is the first path component under `src/`, and it depends on every `crate::<name>`
//! written anywhere in its files (comments included: a doc link to a module above is a sign
//! the code leans on it too). `crate::{a, b}` groups count as well.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_name(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The top-level modules a source text names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::C, c::{d, e}}`: the first segment of each entry at depth 0.
            let mut depth = 0;
            let mut at_entry = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_entry = true,
                    c if at_entry && depth == 0 && is_name(c) => {
                        let name: String = group[j..].chars().take_while(|c| is_name(*c)).collect();
                        names.insert(name);
                        at_entry = false;
                    }
                    c if c.is_whitespace() => {}
                    _ => at_entry = false,
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_name(*c)).collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(imports(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

/// Every cycle's members (strongly connected components of more than one module, or a module
/// naming itself, which the graph excludes), by Tarjan's algorithm.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
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
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .filter(|(_, to)| !to.is_empty())
        .map(|(from, to)| {
            format!(
                "{from} -> {}\n",
                to.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(
        graph.contains_key("session") && graph.contains_key("wire"),
        "read src/"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules (each line: modules that reach each other): \n{}\nthe graph:\n{}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n"),
        render(&graph)
    );
}

#[test]
fn the_lowest_layers_stay_at_the_bottom() {
    // What `docs/architecture.md` puts below everything: the message format, the error type,
    // the shutdown phases and the shared limits know nothing of the pooler's state...
    let graph = graph();
    let uses = |module: &str| graph.get(module).cloned().unwrap_or_default();
    let only: &[(&str, &[&str])] = &[
        ("error", &[]),
        ("wire", &["error"]),
        ("lifecycle", &[]),
        ("limits", &[]),
    ];
    for (module, may) in only {
        let extra: Vec<_> = uses(module)
            .into_iter()
            .filter(|m| !may.contains(&m.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{module} imports {extra:?}\n{}",
            render(&graph)
        );
    }
    // ...and the engine is sans-IO: nothing that owns sockets, pools or the App.
    let above_engine = [
        "admin",
        "app",
        "http",
        "listener",
        "pool",
        "registry",
        "server",
        "session",
        "supervisor",
        "tls",
    ];
    let wrong: Vec<_> = uses("engine")
        .into_iter()
        .filter(|m| above_engine.contains(&m.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "engine imports {wrong:?}\n{}",
        render(&graph)
    );
}

#[test]
fn the_graph_finds_a_cycle_when_there_is_one() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        imports("use crate::{a, b::{c, d}, e::F};\nlet x = crate::g::h();"),
        ["a", "b", "e", "g"].iter().map(|s| s.to_string()).collect()
    );
}
