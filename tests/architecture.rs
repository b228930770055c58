//! The crate graph is the one ARCHITECTURE.md states: its "Crate graph" block lists each
//! workspace package with the workspace packages it depends on (normal dependencies), and
//! `cargo metadata` must agree exactly; the runtime and the C runtime must not reach a code
//! generator (no Cranelift crate among their dependencies, transitively).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The workspace's metadata, resolved for this host (other platforms' crates need not be
/// downloaded).
fn metadata() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The block after the "## Crate graph" heading: `package: dep, dep` lines.
fn stated() -> BTreeMap<String, BTreeSet<String>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("read ARCHITECTURE.md");
    let at = text
        .find("## Crate graph")
        .expect("ARCHITECTURE.md has a Crate graph section");
    let block = &text[at..];
    let start = block.find("```text\n").expect("a ```text block") + "```text\n".len();
    let end = start + block[start..].find("```").expect("the block ends");
    block[start..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, deps) = l.split_once(':').expect("`package: deps` lines");
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "-")
                .map(String::from)
                .collect();
            (name.trim().to_string(), deps)
        })
        .collect()
}

#[test]
fn the_crate_graph_is_the_one_architecture_states() {
    let m = metadata();
    let members: BTreeSet<String> = m["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    let packages = m["packages"].as_array().unwrap();
    let ours: BTreeSet<String> = packages
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut actual: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in packages
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
    {
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|n| ours.contains(n))
            .collect();
        actual.insert(p["name"].as_str().unwrap().to_string(), deps);
    }
    assert_eq!(
        actual,
        stated(),
        "ARCHITECTURE.md's crate graph differs from Cargo.toml's"
    );

    // No code generator below the runtime: walk the resolved graph from it.
    let nodes = m["resolve"]["nodes"].as_array().unwrap();
    let name_of = |id: &str| {
        packages
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    for root in ["kiln-runtime", "kiln-capi"] {
        let start = packages
            .iter()
            .find(|p| p["name"] == root)
            .map(|p| p["id"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no package {root}"));
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
            for d in node["deps"].as_array().unwrap() {
                let normal = d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null());
                if normal {
                    todo.push(d["pkg"].as_str().unwrap().to_string());
                }
            }
        }
        let reached: Vec<String> = seen.iter().map(|id| name_of(id)).collect();
        for forbidden in ["cranelift-codegen", "kiln-codegen", "regalloc2"] {
            assert!(
                !reached.iter().any(|n| n == forbidden),
                "{root} depends on {forbidden}"
            );
        }
    }
}
