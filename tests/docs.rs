//! The docs stay true: the README's configuration table matches `serve`'s own flag definitions, and
//! ARCHITECTURE.md's codemap names every source file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
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
