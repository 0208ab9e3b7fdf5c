//! The docs stay true: the README's configuration table matches `serve`'s own flag definitions, and
//! ARCHITECTURE.md's codemap names every source file, and module dependencies run the way it says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cedar_pdp::config::Cli;
use clap::CommandFactory;

/// (environment variable, default) by flag, as the README's table states them.
fn readme_table() -> BTreeMap<String, (String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let cell = |c: &str| c.trim().trim_matches('`').to_string();
    section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            (cell(cells[0]), (cell(cells[1]), cell(cells[2])))
        })
        .collect()
}

/// The same, from clap's definitions of `serve` (and the global logging flags).
fn clap_table() -> BTreeMap<String, (String, String)> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").unwrap().clone();
    let mut out = BTreeMap::new();
    for arg in serve.get_arguments().chain(cli.get_arguments()) {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() { "unset".to_string() } else { defaults.join(",") };
        out.insert(format!("--{long}"), (env, default));
    }
    out
}

#[test]
fn the_readme_configuration_table_matches_the_flags() {
    let (readme, flags) = (readme_table(), clap_table());
    for (flag, stated) in &readme {
        let actual = flags.get(flag).unwrap_or_else(|| panic!("README lists `{flag}`, which `serve` does not have"));
        assert_eq!(stated, actual, "README's row for `{flag}` (environment, default)");
    }
    for flag in flags.keys() {
        assert!(readme.contains_key(flag), "`serve {flag}` is missing from the README's configuration table");
    }
}

#[test]
fn the_architecture_codemap_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !["main.rs", "lib.rs", "mod.rs"].contains(&name.as_str()) && !architecture.contains(&format!("`{name}`"))
            {
                missing.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "ARCHITECTURE.md does not mention {missing:?}");
}

/// The `crate::<module>` references of each top-level module of `src/`, comments left out.
fn module_references() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["main", "lib"].contains(&name.as_str()) {
            continue;
        }
        let mut files = vec![path.clone()];
        let mut text = String::new();
        while let Some(file) = files.pop() {
            if file.is_dir() {
                files.extend(std::fs::read_dir(&file).unwrap().map(|e| e.unwrap().path()));
            } else {
                text.push_str(&std::fs::read_to_string(&file).unwrap());
            }
        }
        let mut uses = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let module: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !module.is_empty() && module != name {
                    uses.insert(module);
                }
            }
        }
        graph.insert(name, uses);
    }
    graph
}

/// Module dependencies run one way (front doors → decision → policy / entities → core types): no
/// cycle anywhere; decisions are made only through `decision`; the core knows nothing of gRPC
/// except `error.rs`, the one place errors become statuses.
#[test]
fn module_dependencies_run_one_way() {
    let graph = module_references();
    assert!(graph.len() > 10, "{graph:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("a dependency cycle: {}", [&path[at..], &[node]].concat().join(" → "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    for core in ["config", "json", "authz", "policy", "entities", "decision", "scim", "error"] {
        for front_door in ["grpc", "http", "server", "cli"] {
            assert!(!graph[core].contains(front_door), "{core} depends on the front door {front_door}");
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for core in ["config.rs", "json.rs", "authz.rs", "policy", "entities", "decision", "scim"] {
        let mut files = vec![src.join(core)];
        while let Some(file) = files.pop() {
            if file.is_dir() {
                files.extend(std::fs::read_dir(&file).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(!text.contains("tonic"), "{} uses tonic", file.display());
            // Front doors decide through `decision`, never around it.
            if !file.starts_with(src.join("decision")) && !file.starts_with(src.join("entities")) {
                assert!(!text.contains("entities::decide("), "{} decides around `decision`", file.display());
            }
        }
    }
    for front_door in ["grpc", "http", "envoy"] {
        let mut files = vec![src.join(front_door)];
        while let Some(file) = files.pop() {
            if file.is_dir() {
                files.extend(std::fs::read_dir(&file).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for around in ["entities::decide(", "authz::decide("] {
                assert!(!text.contains(around), "{} decides around `decision` ({around})", file.display());
            }
        }
    }
}
