//! Tools for policy authors, through the binary: `cedar-pdp test` on Cedar's `run-tests` files and
//! YAML suites (passing, failing, JUnit XML parsed back, files that do not load).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::process::BIN).args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn the_example_policies_pass_their_own_tests() {
    let dir = example_policies();
    let (code, out, err) = run(&["test", "--policies", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let summary = out.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 20 && summary.ends_with(" passed, 0 failed"), "{out}");
}

#[test]
fn failures_are_named_with_expected_and_got() {
    let dir = fixture("authoring");
    let (code, out, err) = run(&["test", "--policies", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(failures.len(), 2, "{out}");
    assert!(
        failures[0]
            .contains("cedar.test.json: a wrong reason: expected determining policies to include [\"no-such-policy\"]"),
        "{out}"
    );
    assert!(
        failures[1].contains("suite.test.yaml: members: a wrong expectation [ben view doc]: expected allow, got deny"),
        "{out}"
    );
    assert!(failures[1].contains("determining [\"no-banned\"]"), "{out}");
    assert_eq!(out.lines().last(), Some("4 passed, 2 failed"));
    // One file given explicitly: only its tests.
    let yaml = dir.join("tests/suite.test.yaml");
    let (code, out, _) = run(&["test", "--policies", dir.to_str().unwrap(), yaml.to_str().unwrap()]);
    assert_eq!((code, out.lines().last()), (1, Some("2 passed, 1 failed")));
}

#[test]
fn junit_output_parses_and_counts() {
    let dir = fixture("authoring");
    let (code, out, _) = run(&["test", "--policies", dir.to_str().unwrap(), "--format", "junit"]);
    assert_eq!(code, 1);
    let doc = roxmltree::Document::parse(&out).unwrap();
    let root = doc.root_element();
    assert_eq!(
        (root.tag_name().name(), root.attribute("tests"), root.attribute("failures")),
        ("testsuites", Some("6"), Some("2"))
    );
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    assert_eq!(suites.len(), 2);
    let failures: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("failure")).collect();
    assert_eq!(failures.len(), 2);
    assert!(failures.iter().any(|f| f.attribute("message").unwrap().contains("expected allow, got deny")));
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("testcase")).count(), 6);
}

#[test]
fn what_does_not_load_exits_2_naming_the_file_and_line() {
    let dir = copy_dir(&fixture("authoring"));
    std::fs::write(dir.path().join("tests/broken.test.yaml"), "name: x\ntests:\n  - name: [unclosed\n").unwrap();
    let (code, _, err) = run(&["test", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.test.yaml: line 3"), "{err}");
    std::fs::remove_file(dir.path().join("tests/broken.test.yaml")).unwrap();
    std::fs::write(dir.path().join("tests/broken.test.json"), "[{\"name\": \"x\",\n \"decision\": \"maybe\"}]")
        .unwrap();
    let (code, _, err) = run(&["test", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.test.json: line 2"), "{err}");
    std::fs::remove_file(dir.path().join("tests/broken.test.json")).unwrap();
    std::fs::write(dir.path().join("access.cedar"), "permit (principal, action, resource) when { principal.x == };")
        .unwrap();
    let (code, _, err) = run(&["test", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("access.cedar"), "{err}");
    // No test files at all: a CI job that runs nothing must not pass either.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&["test", "--policies", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn validate_warns_about_forbids_that_fail_open() {
    let (code, out, err) = run(&["validate", fixture("authoring").to_str().unwrap()]);
    assert_eq!(code, 0, "warnings do not fail validation: {out}{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with(
            "warning: access.cedar:4: forbid `no-banned` reads `principal.banned` without `principal has banned` first"
        ),
        "{err}"
    );
    assert!(warnings[0].contains("--forbid-errors deny"), "{err}");
    // The example policies guard their reads: no warning.
    let (code, out, err) = run(&["validate", example_policies().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "{err}");
    assert!(out.starts_with("ok: "), "{out}");
}
