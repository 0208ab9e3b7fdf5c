//! `cedar-pdp test`: expected decisions pinned in files, run against a policy directory loaded exactly
//! as the server loads it. Two formats:
//! - Cedar's own `run-tests` files (`*.test.json`): a JSON array of `{name, request: {principal,
//!   action, resource, context}, entities, decision, reason, num_errors}`; the test's `entities` are
//!   the whole entity set, as Cedar's CLI takes them, and `reason` must be among the determining
//!   policies;
//! - suites in YAML (`*.test.yaml`): named principals and resources defined once, the directory's
//!   entities (plus any the suite adds), and per test the decision expected for each action.
//!
//! Exit codes: 0 all passed, 1 a test failed, 2 the directory or a test file does not load.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cedar_policy::Entities;
use serde::Deserialize;
use serde_json::Value;

use super::{CliError, emit};
use crate::authz::{self, CheckInput, ContextIn, Limits, UidRef};
use crate::config::{TestArgs, TestFormat};
use crate::policy::Snapshot;

/// One expectation checked.
struct Case {
    file: String,
    name: String,
    /// None: passed; Some: what differed.
    failure: Option<String>,
}

/// What a request expects.
#[derive(Debug, Default, Clone)]
struct Expect {
    allow: bool,
    /// Policies that must be among the determining ones.
    reasons: Option<Vec<String>>,
    errors: Option<usize>,
}

pub fn test(args: &TestArgs) -> Result<ExitCode, CliError> {
    let snapshot = match super::load_for_tool(&args.policy)? {
        Ok(snapshot) => snapshot,
        Err(code) => return Ok(code),
    };
    let files = match test_files(&args.policy.policies, &args.paths) {
        Ok(files) if !files.is_empty() => files,
        found => {
            let why = found.err().unwrap_or_else(|| {
                format!(
                    "no test files (*.test.json, *.test.yaml) under {}",
                    args.policy.policies.join("tests").display()
                )
            });
            writeln!(std::io::stderr(), "{why}")?;
            return Ok(ExitCode::from(2));
        }
    };
    let mut cases = Vec::new();
    for file in &files {
        match run_file(&snapshot, file) {
            Ok(mut found) => cases.append(&mut found),
            Err(message) => {
                writeln!(std::io::stderr(), "{}: {message}", file.display())?;
                return Ok(ExitCode::from(2));
            }
        }
    }
    report(&cases, args.format)?;
    Ok(if cases.iter().any(|c| c.failure.is_some()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The files given (directories searched), or every test file under `DIR/tests/`.
fn test_files(dir: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let roots = if paths.is_empty() { vec![dir.join("tests")] } else { paths.to_vec() };
    let mut out = Vec::new();
    for root in roots {
        if root.is_file() {
            out.push(root);
            continue;
        }
        let mut stack = vec![root.clone()];
        while let Some(next) = stack.pop() {
            let entries = std::fs::read_dir(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            for entry in entries {
                let path = entry.map_err(|e| format!("{}: {e}", next.display()))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if path.is_dir() {
                    stack.push(path);
                } else if [".test.json", ".test.yaml", ".test.yml"].iter().any(|s| name.ends_with(s)) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn run_file(snapshot: &Snapshot, file: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let name = file.display().to_string();
    if name.ends_with(".json") {
        let tests: Vec<CedarTest> = serde_json::from_str(&text).map_err(|e| format!("line {}: {e}", e.line()))?;
        tests.iter().map(|t| cedar_test(snapshot, &name, t)).collect()
    } else {
        let suite: Suite = serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
            Some(at) => format!("line {}: {e}", at.line()),
            None => e.to_string(),
        })?;
        suite.run(snapshot, &name)
    }
}

/// A test of Cedar's `run-tests` format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarTest {
    name: String,
    request: CedarRequest,
    #[serde(default)]
    entities: Value,
    decision: String,
    #[serde(default)]
    reason: Vec<String>,
    #[serde(default)]
    num_errors: Option<usize>,
}

#[derive(Deserialize)]
struct CedarRequest {
    principal: Value,
    action: Value,
    resource: Value,
    #[serde(default)]
    context: Value,
}

fn cedar_test(snapshot: &Snapshot, file: &str, test: &CedarTest) -> Result<Case, String> {
    let allow = decision(&test.decision).map_err(|e| format!("test `{}`: {e}", test.name))?;
    let entities = match &test.entities {
        Value::Null => Entities::empty(),
        json => Entities::from_json_value(json.clone(), snapshot.schema.as_ref())
            .map_err(|e| format!("test `{}`: its entities: {e}", test.name))?,
    };
    // Cedar's action entities come from the schema, as its CLI adds them.
    let entities = match &snapshot.schema {
        Some(schema) => entities
            .add_entities(schema.action_entities().map_err(|e| e.to_string())?, None)
            .map_err(|e| e.to_string())?,
        None => entities,
    };
    let expect = Expect { allow, reasons: Some(test.reason.clone()), errors: test.num_errors };
    let request = [&test.request.principal, &test.request.action, &test.request.resource].map(uid_text);
    let failure = check(snapshot, &request, &test.request.context, &entities, &expect);
    Ok(Case { file: file.to_string(), name: test.name.clone(), failure })
}

fn decision(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(format!("decision `{other}`: expected allow or deny")),
    }
}

/// A uid as a test file writes it: `User::"alice"`, or `{"type", "id"}`.
fn uid_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) => match (o.get("type").and_then(Value::as_str), o.get("id").and_then(Value::as_str)) {
            (Some(ty), Some(id)) => format!("{ty}::{}", Value::String(id.into())),
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}

/// Decides one request on `entities` as the server would, and says how it differs from `expect`.
fn check(
    snapshot: &Snapshot,
    uids: &[String; 3],
    context: &Value,
    entities: &Entities,
    expect: &Expect,
) -> Option<String> {
    let mut parts = Vec::new();
    for text in uids {
        match text.parse::<cedar_policy::EntityUid>() {
            Ok(uid) => parts.push((uid.type_name().to_string(), uid.id().unescaped().to_string())),
            Err(e) => return Some(format!("`{text}` is not an entity uid: {e}")),
        }
    }
    let refs: Vec<UidRef<'_>> = parts.iter().map(|(ty, id)| UidRef { ty, id }).collect();
    let input = CheckInput {
        principal: Some(refs[0]),
        action: Some(refs[1]),
        resource: Some(refs[2]),
        context: if context.is_null() { ContextIn::EMPTY } else { ContextIn::Value(context) },
        entities_json: "",
    };
    let outcome = match authz::prepare(snapshot, &input, &Limits::default()) {
        Ok(prepared) => authz::decide_on(snapshot, prepared, entities),
        Err(e) => return Some(format!("the request is refused: {e}")),
    };
    let got = |allow: bool| if allow { "allow" } else { "deny" };
    let mut differences = Vec::new();
    if outcome.allow != expect.allow {
        differences.push(format!("expected {}, got {}", got(expect.allow), got(outcome.allow)));
    }
    if let Some(reasons) = &expect.reasons {
        let missing: Vec<&String> = reasons.iter().filter(|r| !outcome.determining.contains(r)).collect();
        if !missing.is_empty() {
            differences.push(format!("expected determining policies to include {missing:?}"));
        }
    }
    if let Some(errors) = expect.errors
        && errors != outcome.errors.len()
    {
        differences.push(format!("expected {errors} errors, got {}", outcome.errors.len()));
    }
    if differences.is_empty() {
        return None;
    }
    let errors: Vec<String> = outcome.errors.iter().map(|e| format!("{}: {}", e.policy_id, e.message)).collect();
    Some(format!(
        "{} (got {}, determining {:?}, errors {:?})",
        differences.join("; "),
        got(outcome.allow),
        outcome.determining,
        errors
    ))
}

/// A YAML suite.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    principals: BTreeMap<String, String>,
    #[serde(default)]
    resources: BTreeMap<String, String>,
    /// Entities added to the directory's own (Cedar's entity JSON, written in YAML).
    #[serde(default)]
    entities: Vec<Value>,
    /// Whether the directory's entities are included (default yes).
    #[serde(default = "yes")]
    directory_entities: bool,
    tests: Vec<SuiteTest>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteTest {
    name: String,
    principals: Vec<String>,
    resources: Vec<String>,
    #[serde(default)]
    context: Value,
    /// Action → `allow` / `deny`, or `{decision, determining, errors}`.
    expect: BTreeMap<String, Expected>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expected {
    Decision(String),
    Full {
        decision: String,
        #[serde(default)]
        determining: Option<Vec<String>>,
        #[serde(default)]
        errors: Option<usize>,
    },
}

impl Suite {
    fn entities(&self, snapshot: &Snapshot) -> Result<Entities, String> {
        let base = match (&snapshot.schema, self.directory_entities) {
            (_, true) => snapshot.entities.clone(),
            // Without the directory's entities, still the schema's actions (action groups).
            (Some(schema), false) => schema.action_entities().map_err(|e| e.to_string())?,
            (None, false) => Entities::empty(),
        };
        if self.entities.is_empty() {
            return Ok(base);
        }
        let added = Entities::from_json_value(Value::Array(self.entities.clone()), snapshot.schema.as_ref())
            .map_err(|e| format!("`entities`: {e}"))?;
        base.add_entities(added, snapshot.schema.as_ref()).map_err(|e| format!("`entities`: {e}"))
    }

    fn named<'a>(names: &'a BTreeMap<String, String>, name: &'a str) -> &'a str {
        names.get(name).map_or(name, String::as_str)
    }

    fn run(&self, snapshot: &Snapshot, file: &str) -> Result<Vec<Case>, String> {
        let entities = self.entities(snapshot)?;
        let prefix = self.name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default();
        let mut cases = Vec::new();
        for test in &self.tests {
            for principal in &test.principals {
                for resource in &test.resources {
                    for (action, expected) in &test.expect {
                        let expect = expected.expect().map_err(|e| format!("test `{}`: {e}", test.name))?;
                        let action_uid = if action.contains("::") {
                            action.clone()
                        } else {
                            format!("Action::{}", Value::String(action.clone()))
                        };
                        let uids = [
                            Self::named(&self.principals, principal).to_string(),
                            action_uid,
                            Self::named(&self.resources, resource).to_string(),
                        ];
                        let failure = check(snapshot, &uids, &test.context, &entities, &expect);
                        let name = format!("{prefix}{} [{principal} {action} {resource}]", test.name);
                        cases.push(Case { file: file.to_string(), name, failure });
                    }
                }
            }
        }
        Ok(cases)
    }
}

impl Expected {
    fn expect(&self) -> Result<Expect, String> {
        Ok(match self {
            Expected::Decision(d) => Expect { allow: decision(d)?, reasons: None, errors: None },
            Expected::Full { decision: d, determining, errors } => {
                Expect { allow: decision(d)?, reasons: determining.clone(), errors: *errors }
            }
        })
    }
}

fn report(cases: &[Case], format: TestFormat) -> Result<(), CliError> {
    let failed = cases.iter().filter(|c| c.failure.is_some()).count();
    match format {
        TestFormat::Text => {
            let mut lines: Vec<String> = cases
                .iter()
                .filter_map(|c| c.failure.as_ref().map(|f| format!("FAIL {}: {}: {f}", c.file, c.name)))
                .collect();
            lines.push(format!("{} passed, {failed} failed", cases.len() - failed));
            emit(&lines)?;
        }
        TestFormat::Junit => emit(&[junit(cases)])?,
    }
    Ok(())
}

/// JUnit XML: one `testsuite` per file.
fn junit(cases: &[Case]) -> String {
    let mut by_file: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
    for case in cases {
        by_file.entry(&case.file).or_default().push(case);
    }
    let failed = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"cedar-pdp test\" tests=\"{}\" failures=\"{failed}\">\n",
        cases.len()
    );
    for (file, cases) in by_file {
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">\n",
            xml(file),
            cases.len()
        ));
        for case in cases {
            match &case.failure {
                None => {
                    out.push_str(&format!("    <testcase name=\"{}\" classname=\"{}\"/>\n", xml(&case.name), xml(file)))
                }
                Some(f) => out.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"{}\">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                    xml(&case.name),
                    xml(file),
                    xml(f)
                )),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>");
    out
}

fn xml(text: &str) -> String {
    // XML 1.0 has no place for most control characters, even escaped.
    let text: String = text.chars().filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r')).collect();
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}
