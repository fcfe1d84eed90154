//! The code's layout as a test: the controller's, the CLI's and the agent's module graphs
//! have no import cycles (ARCHITECTURE.md, "Invariants"; CONTRIBUTING.md says where code
//! goes so that none comes back).
//!
//! A module is one source file (`recovery/plan.rs` is `recovery::plan`). It depends on
//! another when it names it: `crate::a::b…` (resolved to the deepest module that exists),
//! `super::…`, or a child module it declares, by its bare name. A re-export (`pub use
//! child::Thing`) is not a dependency: it names the child's item for the child's callers and
//! runs none of it. The crate root (`lib.rs`, `main.rs`) is left out: it declares every
//! module and wires them together, and every module may use what it defines (`Controller`,
//! `now_ms`). A module depending on its own parent is fine; the parent depending back on it
//! is the cycle this test refuses. Inline test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn repo() -> PathBuf {
    lifeboat_tests::repo_dir()
}

/// Source without comments and string literals, so that neither can add an edge.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) pass through.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// `code` without its re-exports (`pub use …;`, `pub(crate) use …;`).
fn without_reexports(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    loop {
        let next = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .filter_map(|p| rest.find(p))
            .min();
        match next {
            Some(i) => {
                out.push_str(&rest[..i]);
                rest = rest[i..].split_once(';').map_or("", |(_, r)| r);
            }
            None => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// Every module of the crate whose sources are in `src`, by path (`a::b`), with its code.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).expect("below src").with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                if parts == ["lib"]
                    || parts == ["main"]
                    || parts.first().is_some_and(|f| f == "bin")
                {
                    continue;
                }
                let code =
                    without_reexports(&code_only(&std::fs::read_to_string(&p).expect("read")));
                // An inline test module (`#[cfg(test)] mod tests`, at the end of a file by
                // habit) is not part of the module's dependencies, and its `super::` is the
                // module itself.
                let code = match code.find("#[cfg(test)]\nmod ") {
                    Some(i) => code[..i].to_string(),
                    None => code,
                };
                out.insert(parts.join("::"), code);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The identifier paths that start at `start` in `code` (`crate::a::b`, and each path of
/// a `crate::{a::b, c}` group), as lists of segments.
fn paths_after(code: &str, start: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(start) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + start.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Up to the matching brace; each comma-separated path at depth 0 (nested
            // groups contribute their prefix, which is all the graph needs).
            let mut depth = 0;
            let mut end = group.len();
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = j;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let mut d = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => d += 1,
                    '}' => d -= 1,
                    ',' if d == 0 => {
                        out.push(segments(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if d == 0 {
                    item.push(c);
                }
            }
            out.push(segments(&item));
        } else {
            out.push(segments(rest));
        }
    }
    out
}

/// `a::b::C …` → ["a", "b", "C"].
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    loop {
        let n = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        out.push(rest[..n].to_string());
        rest = &rest[n..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// The deepest module of `known` that `path` (from the crate root) names.
fn resolve(path: &[String], known: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut g = Graph::new();
    for (m, code) in &mods {
        let here: Vec<String> = m.split("::").map(String::from).collect();
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.extend(resolve(&p, &mods));
        }
        for p in paths_after(code, "super::") {
            let mut abs = here[..here.len() - 1].to_vec();
            abs.extend(p);
            deps.extend(resolve(&abs, &mods));
        }
        // A child module named by its bare name (`plan::JOB_TAG` in `recovery`).
        for child in mods.keys().filter(|k| {
            k.strip_prefix(m.as_str())
                .and_then(|r| r.strip_prefix("::"))
                .is_some_and(|r| !r.contains("::"))
        }) {
            let name = child.rsplit("::").next().expect("name");
            if !paths_after(code, &format!("{name}::")).is_empty() {
                deps.insert(child.clone());
            }
        }
        deps.remove(m);
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle of `g`, if it has one, as the modules along it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == d).expect("on stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn assert_acyclic(krate: &str) {
    let g = graph(&repo().join(krate).join("src"));
    assert!(g.len() > 3, "{krate}: found only {:?}", g.keys());
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "{krate}'s modules import each other in a circle: {}\n(move what both need into a module below both; CONTRIBUTING.md)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_controller_has_no_import_cycle() {
    assert_acyclic("controller");
}

#[test]
fn the_cli_has_no_import_cycle() {
    assert_acyclic("cli");
}

#[test]
fn the_agent_has_no_import_cycle() {
    assert_acyclic("agent");
}

/// The checker itself finds what it must: a cycle through `crate::` paths, groups,
/// `super::` and bare child names, and none where there is none.
#[test]
fn the_checker_sees_each_kind_of_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path();
    std::fs::create_dir_all(src.join("rec")).expect("mkdir");
    let write = |p: &str, s: &str| std::fs::write(src.join(p), s).expect("write");
    write("lib.rs", "mod a; mod b; mod rec;");
    write(
        "a.rs",
        "use crate::{x, b::Thing};\npub use crate::rec::Good;",
    );
    write(
        "b.rs",
        "// crate::a in a comment\nfn f() { let _ = \"crate::a\"; }",
    );
    write("rec/mod.rs", "mod plan; fn g() { plan::TAG }");
    write("rec/plan.rs", "use super::Good; use crate::a;");
    let g = graph(src);
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert!(g["b"].is_empty(), "{g:?}");
    assert_eq!(g["rec"], BTreeSet::from(["rec::plan".to_string()]));
    assert_eq!(
        g["rec::plan"],
        BTreeSet::from(["a".to_string(), "rec".to_string()])
    );
    let cycle = find_cycle(&g).expect("rec <-> rec::plan");
    assert!(cycle.contains(&"rec::plan".to_string()), "{cycle:?}");
    write("rec/mod.rs", "mod plan; pub struct Good;");
    assert_eq!(find_cycle(&graph(src)), None);
}
