//! The module graphs: no module of the libraries `pipeline`, `synth` and `trainer`, nor of the
//! binaries `pipeline/cli` and `trainer/cli`, reaches itself through `crate::` imports.
//! Modules are the top-level ones (a folder such as `pipeline/src/build/` is one; a binary's
//! `main.rs` is the module `main`). Read from the sources. That no build stage uses the
//! synthetic generator needs no test: `synth` depends on `pipeline`, so cargo refuses the
//! other direction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules `crate::` paths in `text` name (`crate::a::b`, `crate::{a, b::c}`).
fn referenced(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items of the group at its top level: after `{` or a `,` at depth 0.
            let (mut depth, mut start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// Module -> the other top-level modules it uses, for every `.rs` file under `src` but the
/// binary's `skip`.
fn graph(src: &Path, skip: &[&str]) -> Graph {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let module = |p: &Path| {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    };
    let mut g = Graph::new();
    let files: Vec<_> =
        files.into_iter().filter(|p| !skip.iter().any(|s| p.strip_prefix(src).unwrap() == Path::new(s))).collect();
    for p in &files {
        g.entry(module(p)).or_default();
    }
    let names: BTreeSet<String> = g.keys().cloned().collect();
    for p in &files {
        let m = module(p);
        let uses = referenced(&fs_err::read_to_string(p).unwrap());
        g.get_mut(&m).unwrap().extend(uses.into_iter().filter(|u| *u != m && names.contains(u)));
    }
    g
}

/// A cycle of `g` (its modules in order, the first repeated at the end), if it has one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(g: &Graph, m: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for n in &g[m] {
            if let Some(c) = visit(g, n, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

fn crate_src(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
}

#[test]
fn the_checker_reads_imports_and_finds_cycles() {
    let uses = referenced("use crate::a::{x, y};\nuse crate::{b, c::{d, e}, f::g};\nlet z = crate::h::k();");
    assert_eq!(uses, ["a", "b", "c", "f", "h"].iter().map(|s| s.to_string()).collect());
    let g = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn the_module_graphs_have_no_cycles() {
    let pipeline = graph(&crate_src("pipeline"), &[]);
    let synth = graph(&crate_src("synth"), &[]);
    let trainer = graph(&crate_src("trainer"), &[]);
    let trainer_cli = graph(&crate_src("trainer/cli"), &[]);
    let pipeline_cli = graph(&crate_src("pipeline/cli"), &[]);
    assert!(
        pipeline.len() > 6
            && synth.len() > 8
            && trainer.len() > 15
            && trainer_cli.len() >= 5
            && pipeline_cli.len() >= 2,
        "read the sources: {}, {}, {}, {} and {} modules",
        pipeline.len(),
        synth.len(),
        trainer.len(),
        trainer_cli.len(),
        pipeline_cli.len()
    );
    assert!(!trainer.contains_key("main") && !trainer.contains_key("cli"), "the trainer library holds no binary");
    for (name, g) in [
        ("pipeline", &pipeline),
        ("synth", &synth),
        ("trainer", &trainer),
        ("trainer/cli", &trainer_cli),
        ("pipeline/cli", &pipeline_cli),
    ] {
        assert_eq!(cycle(g), None, "{name}");
    }
}
