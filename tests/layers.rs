//! CPU-only: the source tree keeps its layers. Every `crate::` path in `src/` (outside
//! comments) resolves to a module of the same layer or a lower one, and the modules import
//! each other in no circle.
//!
//! Layers, from the bottom: `error` and `gate` (depend on nothing); plain data (`data`, and
//! the f64 CPU `reference` on it); the pure planning layer (`plan`); the runtime (`runtime`); the kernels
//! (`kernels`, one folder per family); the operations (`ops`); the facade (`context`,
//! `kvcache`, `lib`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rank(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("");
    match top {
        "error" | "gate" => 0,
        "data" | "reference" => 1,
        "plan" => 2,
        "runtime" => 3,
        "kernels" => 4,
        "ops" => 5,
        "context" | "kvcache" | "" => 6,
        other => panic!("src/{other}: a module outside the layers; add it to tests/layers.rs"),
    }
}

/// Every module of `src/` by path (`""` for lib.rs), with its source file.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let join = |n: &str| {
                if prefix.is_empty() {
                    n.to_string()
                } else {
                    format!("{prefix}::{n}")
                }
            };
            if path.is_dir() {
                walk(&path, &join(&name), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "lib" if prefix.is_empty() => String::new(),
                    "mod" => prefix.to_string(),
                    _ => join(&name),
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        "",
        &mut out,
    );
    out
}

/// The paths after each `crate::` in code (comments left out), braces expanded.
fn crate_paths(src: &str) -> Vec<String> {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let head = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{')
            || rest[..end].ends_with("::") && rest[end..].starts_with('{')
        {
            let close = rest[end..].find('}').map(|j| end + j).unwrap_or(rest.len());
            for item in rest[end + 1..close].split(',') {
                let item = item.trim().split(' ').next().unwrap_or("");
                if !item.is_empty() && item != "self" {
                    out.push(if head.is_empty() {
                        item.to_string()
                    } else {
                        format!("{head}::{item}")
                    });
                } else if item == "self" {
                    out.push(head.clone());
                }
            }
        } else {
            out.push(head);
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, PathBuf>) -> &'a str {
    let parts: Vec<&str> = path.split("::").collect();
    for n in (1..=parts.len()).rev() {
        let candidate = parts[..n].join("::");
        if let Some((k, _)) = modules.get_key_value(&candidate) {
            return k;
        }
    }
    ""
}

#[test]
fn modules_import_only_their_layer_and_the_layers_below_in_no_circle() {
    let modules = modules();
    assert!(modules.len() > 25, "{modules:?}");
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (module, file) in &modules {
        let src = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&src) {
            let target = resolve(&path, &modules);
            if target.is_empty() && !module.is_empty() {
                problems.push(format!(
                    "{module}: crate::{path} goes through the crate root's re-exports"
                ));
                continue;
            }
            if rank(target) > rank(module) {
                problems.push(format!(
                    "{module} (layer {}) imports {target} (layer {})",
                    rank(module),
                    rank(target)
                ));
            }
            // A module may use its own submodules; those are not edges of the graph.
            if target != module && !target.starts_with(&format!("{module}::")) {
                edges.entry(module.as_str()).or_default().insert(target);
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Depth-first search for a circle.
    fn visit<'a>(
        m: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) {
        match state.get(m) {
            Some(1) => {
                let at = stack.iter().position(|x| *x == m).unwrap_or(0);
                panic!("import circle: {:?} -> {m}", &stack[at..]);
            }
            Some(2) => return,
            _ => {}
        }
        state.insert(m, 1);
        stack.push(m);
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, state, stack);
        }
        stack.pop();
        state.insert(m, 2);
    }
    let mut state = BTreeMap::new();
    for m in modules.keys() {
        visit(m, &edges, &mut state, &mut Vec::new());
    }
    let n: usize = edges.values().map(|e| e.len()).sum();
    assert!(n > 40, "{n} imports: is the scan reading the sources?");
}

/// The scan itself: braces, nesting, and comments.
#[test]
fn the_scan_reads_crate_paths() {
    let src = "use crate::data::tensor::{DType, TensorView};\n// crate::ops::x\nlet x = crate::plan::dispatch::plan(a);\nuse crate::{gate, error::Error};";
    assert_eq!(
        crate_paths(src),
        [
            "data::tensor::DType",
            "data::tensor::TensorView",
            "plan::dispatch::plan",
            "gate",
            "error::Error"
        ]
    );
}

/// Every object the crate creates goes through `src/runtime/device.rs`, which counts it
/// (`Context::created_resources`): no other file calls a wgpu `create_*` method, so a warm
/// call's count cannot miss one.
#[test]
fn every_creation_goes_through_the_counted_device() {
    let mut offenders = Vec::new();
    for (module, path) in modules() {
        if module == "runtime::device" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(".create_") {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "uncounted creations:\n{}",
        offenders.join("\n")
    );
}
