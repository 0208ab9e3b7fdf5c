//! Builds a complete [`Snapshot`] from a policy directory, or says everything that is wrong with it.
//!
//! Files by name, anywhere below the directory (names starting with `.` are skipped, which also skips
//! editor swap files and Kubernetes' `..data` ConfigMap folders; symlinks are followed):
//! `*.cedar` policies and templates, `*.cedarschema` / `*.cedarschema.json` schema fragments,
//! `entities.json` / `*.entities.json` entities, `links.json` / `*.links.json` template links.
//!
//! A policy's id is its `@id("…")` annotation, else `<relative path>#<n>` where `n` counts the
//! policies and templates of that file from 0 in source order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Entities, Entity, EntityUid, PolicyId, PolicySet, Schema, SchemaFragment, SlotId, Validator};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ValidationMode;
use super::snapshot::{FileStat, Snapshot};
use crate::error::Diagnostic;
use crate::error::PolicyLoadError;

/// Deeper than this is taken for a symlink loop.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Policy,
    Schema,
    SchemaJson,
    Entities,
    Links,
    ExtAuthz,
    Authzen,
    Scim,
}

struct SourceFile {
    kind: Kind,
    /// Relative to the policy directory, `/`-separated.
    rel: String,
    text: String,
}

/// Loads and validates `dir`. Every problem found is reported, not only the first.
pub fn load_dir(dir: &Path, mode: ValidationMode) -> Result<Snapshot, PolicyLoadError> {
    let mut diags = Vec::new();
    let files = read_tree(dir, &mut diags);
    if !diags.is_empty() {
        return Err(PolicyLoadError { diagnostics: diags });
    }
    let version = digest(&files, mode);
    let by_kind = |k: Kind| files.iter().filter(move |f| f.kind == k);

    let schema = load_schema(by_kind(Kind::Schema).chain(by_kind(Kind::SchemaJson)), &mut diags);
    let (mut policies, mut origins) = load_policies(by_kind(Kind::Policy), &mut diags);
    for file in by_kind(Kind::Links) {
        link_templates(file, &mut policies, &mut origins, &mut diags);
    }
    // Without the schema the user wrote, entity and validation errors would only be noise.
    let Ok(schema) = schema else {
        return Err(PolicyLoadError { diagnostics: diags });
    };
    let entities = load_entities(by_kind(Kind::Entities), schema.as_ref(), &mut diags);
    if let Some(schema) = &schema {
        validate(&policies, schema, mode, &files, &origins, &mut diags);
    }
    let mut ext_authz = None;
    for file in by_kind(Kind::ExtAuthz) {
        if file.rel != crate::envoy::FILE {
            diags.push(Diagnostic::new(&file.rel, "the ext_authz mapping belongs at the top of the directory"));
            continue;
        }
        match crate::envoy::Mapping::parse(&file.text, schema.as_ref(), dir) {
            Ok(mapping) => ext_authz = Some(std::sync::Arc::new(mapping)),
            Err(message) => diags.push(Diagnostic::new(&file.rel, message)),
        }
    }
    let mut authzen = super::AuthzenNames::default();
    for file in by_kind(Kind::Authzen) {
        if file.rel != super::authzen::FILE {
            diags.push(Diagnostic::new(&file.rel, "the AuthZEN names belong at the top of the directory"));
            continue;
        }
        match super::AuthzenNames::parse(&file.text, schema.as_ref()) {
            Ok(names) => authzen = names,
            Err(message) => diags.push(Diagnostic::new(&file.rel, message)),
        }
    }
    let mut scim = super::ScimMapping::default();
    for file in by_kind(Kind::Scim) {
        if file.rel != super::scim::FILE {
            diags.push(Diagnostic::new(&file.rel, "the SCIM mapping belongs at the top of the directory"));
            continue;
        }
        match super::ScimMapping::parse(&file.text, schema.as_ref()) {
            Ok(mapping) => scim = mapping,
            Err(message) => diags.push(Diagnostic::new(&file.rel, message)),
        }
    }
    if !diags.is_empty() {
        return Err(PolicyLoadError { diagnostics: diags });
    }
    let entities = entities.unwrap_or_else(Entities::empty);
    let mut snapshot =
        Snapshot::new(version, SystemTime::now(), mode, policies, schema, entities).map_err(|message| {
            PolicyLoadError { diagnostics: vec![Diagnostic::new(dir.display().to_string(), message)] }
        })?;
    // The key file is read through the mapping: its bytes join the version, so rotating keys is a reload.
    if let Some(jwt) = ext_authz.as_ref().and_then(|m: &std::sync::Arc<crate::envoy::Mapping>| m.jwt.as_ref()) {
        let mut hash = Sha256::new();
        hash.update(snapshot.version.as_bytes());
        hash.update(jwt.source.as_bytes());
        snapshot.version = hash.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    }
    snapshot.ext_authz = ext_authz;
    snapshot.authzen = std::sync::Arc::new(authzen);
    snapshot.scim = std::sync::Arc::new(scim);
    snapshot.files = file_stats(&snapshot.policies, &origins);
    snapshot.origins = origins;
    Ok(snapshot)
}

/// The digest of what the directory holds right now (as `load_dir` would read it): equal before
/// and after a load only if no file changed meanwhile.
pub fn tree_digest(dir: &Path, mode: ValidationMode) -> String {
    digest(&read_tree(dir, &mut Vec::new()), mode)
}

/// How many policies, and how many of them `forbid`s, each policy file holds.
fn file_stats(policies: &PolicySet, origins: &Origins) -> BTreeMap<String, FileStat> {
    let mut out: BTreeMap<String, FileStat> = BTreeMap::new();
    for p in policies.policies() {
        let Some(file) = origins.get(AsRef::<str>::as_ref(p.id())) else { continue };
        let stat = out.entry(file.clone()).or_default();
        stat.policies += 1;
        stat.forbids += usize::from(p.effect() == cedar_policy::Effect::Forbid);
    }
    out
}

fn classify(name: &str) -> Option<Kind> {
    if name.ends_with(".cedar") {
        Some(Kind::Policy)
    } else if name.ends_with(".cedarschema") {
        Some(Kind::Schema)
    } else if name.ends_with(".cedarschema.json") {
        Some(Kind::SchemaJson)
    } else if name == "entities.json" || name.ends_with(".entities.json") {
        Some(Kind::Entities)
    } else if name == "links.json" || name.ends_with(".links.json") {
        Some(Kind::Links)
    } else if name == crate::envoy::FILE {
        Some(Kind::ExtAuthz)
    } else if name == super::authzen::FILE {
        Some(Kind::Authzen)
    } else if name == super::scim::FILE {
        Some(Kind::Scim)
    } else {
        None
    }
}

fn read_tree(dir: &Path, diags: &mut Vec<Diagnostic>) -> Vec<SourceFile> {
    let mut files = Vec::new();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => walk(dir, "", 0, &mut files, diags),
        Ok(_) => diags.push(Diagnostic::new(dir.display().to_string(), "not a directory")),
        Err(e) => diags.push(Diagnostic::new(dir.display().to_string(), format!("cannot read: {e}"))),
    }
    files.sort_by(|a, b| (a.kind, &a.rel).cmp(&(b.kind, &b.rel)));
    files
}

fn walk(dir: &Path, prefix: &str, depth: usize, files: &mut Vec<SourceFile>, diags: &mut Vec<Diagnostic>) {
    let display = if prefix.is_empty() { dir.display().to_string() } else { prefix.to_string() };
    if depth > MAX_DEPTH {
        diags.push(Diagnostic::new(display, "directory nesting too deep (a symlink loop?)"));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return diags.push(Diagnostic::new(display, format!("cannot read directory: {e}"))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let path = entry.path();
        // `metadata` follows symlinks; a dangling one (a file vanishing mid-write) is reported.
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if classify(&name).is_some() => {
                diags.push(Diagnostic::new(rel, format!("cannot read: {e}")));
                continue;
            }
            Err(_) => continue,
        };
        if meta.is_dir() {
            walk(&path, &rel, depth + 1, files, diags);
        } else if let Some(kind) = classify(&name) {
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push(SourceFile { kind, rel, text }),
                Err(e) => diags.push(Diagnostic::new(rel, format!("cannot read: {e}"))),
            }
        }
    }
}

/// The version names the exact content loaded: every replica with the same files reports the same one.
fn digest(files: &[SourceFile], mode: ValidationMode) -> String {
    let mut hash = Sha256::new();
    hash.update(mode.as_str());
    for f in files {
        hash.update([0u8, f.kind as u8]);
        hash.update(f.rel.as_bytes());
        hash.update((f.text.len() as u64).to_le_bytes());
        hash.update(f.text.as_bytes());
    }
    hash.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `Ok(None)`: no schema files. `Err`: schema files that do not make a schema (diagnostics pushed).
fn load_schema<'a>(
    files: impl Iterator<Item = &'a SourceFile>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<Schema>, ()> {
    let mut fragments = Vec::new();
    let mut names = Vec::new();
    let mut failed = false;
    for f in files {
        names.push(f.rel.as_str());
        let parsed = if f.kind == Kind::SchemaJson {
            SchemaFragment::from_json_str(&f.text).map_err(|e| Diagnostic::from_miette(&f.rel, Some(&f.text), &e))
        } else {
            SchemaFragment::from_cedarschema_str(&f.text)
                .map(|(fragment, warnings)| {
                    for w in warnings {
                        tracing::warn!(file = %f.rel, "schema warning: {w}");
                    }
                    fragment
                })
                .map_err(|e| Diagnostic::from_miette(&f.rel, Some(&f.text), &e))
        };
        match parsed {
            Ok(fragment) => fragments.push(fragment),
            Err(d) => {
                diags.push(d);
                failed = true;
            }
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    if failed {
        return Err(());
    }
    Schema::from_schema_fragments(fragments).map(Some).map_err(|e| {
        diags.push(Diagnostic::from_miette(&names.join(", "), None, &e));
    })
}

/// The file each policy id came from, for messages.
type Origins = HashMap<String, String>;

fn load_policies<'a>(files: impl Iterator<Item = &'a SourceFile>, diags: &mut Vec<Diagnostic>) -> (PolicySet, Origins) {
    let mut set = PolicySet::new();
    let mut origins = Origins::new();
    for f in files {
        let parsed = match PolicySet::from_str(&f.text) {
            Ok(parsed) => parsed,
            Err(errs) => {
                diags.extend(errs.iter().map(|e| Diagnostic::from_miette(&f.rel, Some(&f.text), e)));
                continue;
            }
        };
        // Cedar names the n-th policy or template of a text `policy<n>`; that n is our position.
        let rename = |cedar_id: &PolicyId, annotated: Option<&str>| -> String {
            match annotated {
                Some(id) => id.to_string(),
                None => format!("{}#{}", f.rel, cedar_id.to_string().trim_start_matches("policy")),
            }
        };
        let mut add = |id: String, result: Result<(), cedar_policy::PolicySetError>| match result {
            Ok(()) => {
                origins.insert(id, f.rel.clone());
            }
            Err(_) => {
                let first = origins.get(&id).map_or(String::new(), |o| format!(" (first defined in {o})"));
                diags.push(Diagnostic::new(&f.rel, format!("duplicate policy id `{id}`{first}")));
            }
        };
        for t in parsed.templates() {
            let id = rename(t.id(), t.annotation("id"));
            add(id.clone(), set.add_template(t.new_id(PolicyId::new(&id))));
        }
        for p in parsed.policies() {
            let id = rename(p.id(), p.annotation("id"));
            add(id.clone(), set.add(p.new_id(PolicyId::new(&id))));
        }
    }
    (set, origins)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    template_id: String,
    link_id: String,
    #[serde(default)]
    args: HashMap<String, String>,
}

fn link_templates(f: &SourceFile, set: &mut PolicySet, origins: &mut Origins, diags: &mut Vec<Diagnostic>) {
    let links: Vec<Link> = match serde_json::from_str(&f.text) {
        Ok(links) => links,
        Err(e) => return diags.push(json_diag(f, &e)),
    };
    for (i, link) in links.into_iter().enumerate() {
        let at = |msg: String| Diagnostic::new(&f.rel, format!("links[{i}] (`{}`): {msg}", link.link_id));
        let mut vals = HashMap::new();
        let mut ok = true;
        for (slot, uid) in &link.args {
            let slot_id = match slot.as_str() {
                "?principal" => SlotId::principal(),
                "?resource" => SlotId::resource(),
                other => {
                    diags.push(at(format!("unknown slot `{other}`; expected `?principal` or `?resource`")));
                    ok = false;
                    continue;
                }
            };
            match EntityUid::from_str(uid) {
                Ok(uid) => {
                    vals.insert(slot_id, uid);
                }
                Err(e) => {
                    diags.push(at(format!("`{slot}` is not an entity uid `{uid}`: {e}")));
                    ok = false;
                }
            }
        }
        if !ok {
            continue;
        }
        let template = PolicyId::new(&link.template_id);
        match set.link(template, PolicyId::new(&link.link_id), vals) {
            Ok(()) => {
                origins.insert(link.link_id.clone(), f.rel.clone());
            }
            Err(e) => diags.push(at(e.to_string())),
        }
    }
}

fn json_diag(f: &SourceFile, e: &serde_json::Error) -> Diagnostic {
    let mut d = Diagnostic::new(&f.rel, format!("invalid JSON: {e}"));
    if e.line() > 0 {
        d.position = Some((e.line(), e.column()));
        d.snippet = f.text.lines().nth(e.line() - 1).map(str::to_string);
    }
    d
}

fn load_entities<'a>(
    files: impl Iterator<Item = &'a SourceFile>,
    schema: Option<&Schema>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Entities> {
    // Parsing with a schema adds the schema's action entities to each file's result; drop those here
    // and let the final build add them once.
    let schema_actions: HashSet<EntityUid> = schema.map(|s| s.actions().cloned().collect()).unwrap_or_default();
    let mut seen: HashMap<EntityUid, String> = HashMap::new();
    let mut all: Vec<Entity> = Vec::new();
    let before = diags.len();
    for f in files {
        // Cedar's entity errors carry no position; a JSON syntax error at least can have one.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&f.text) {
            diags.push(json_diag(f, &e));
            continue;
        }
        let parsed = match Entities::from_json_str(&f.text, schema) {
            Ok(parsed) => parsed,
            Err(e) => {
                diags.push(Diagnostic::from_miette(&f.rel, None, &e));
                continue;
            }
        };
        for entity in parsed {
            let uid = entity.uid();
            if schema_actions.contains(&uid) {
                continue;
            }
            if let Some(first) = seen.insert(uid.clone(), f.rel.clone()) {
                diags.push(Diagnostic::new(&f.rel, format!("duplicate entity `{uid}` (also in {first})")));
                continue;
            }
            all.push(entity);
        }
    }
    if diags.len() > before {
        return None;
    }
    match Entities::from_entities(all, schema) {
        Ok(entities) => Some(entities),
        Err(e) => {
            diags.push(Diagnostic::from_miette("entities", None, &e));
            None
        }
    }
}

fn validate(
    set: &PolicySet,
    schema: &Schema,
    mode: ValidationMode,
    files: &[SourceFile],
    origins: &Origins,
    diags: &mut Vec<Diagnostic>,
) {
    let cedar_mode = match mode {
        ValidationMode::Permissive => cedar_policy::ValidationMode::Permissive,
        ValidationMode::Strict | ValidationMode::Off => cedar_policy::ValidationMode::Strict,
    };
    let result = Validator::new(schema.clone()).validate(set, cedar_mode);
    let text_of = |file: &str| files.iter().find(|f| f.rel == file).map(|f| f.text.as_str());
    // A linked policy's source positions are its template's.
    let source_of = |id: &PolicyId| -> (String, Option<&str>) {
        let source_id = set.policy(id).and_then(|p| p.template_id().cloned()).unwrap_or_else(|| id.clone());
        let file = origins.get(&source_id.to_string()).cloned().unwrap_or_else(|| "policies".into());
        let text = text_of(&file);
        (file, text)
    };
    for e in result.validation_errors() {
        let (file, text) = source_of(e.policy_id());
        let d = Diagnostic::from_miette(&file, text, e);
        if mode == ValidationMode::Off {
            tracing::warn!(validation = "off", "policy does not validate: {}", d.one_line());
        } else {
            diags.push(d);
        }
    }
    for w in result.validation_warnings() {
        let (file, text) = source_of(w.policy_id());
        tracing::warn!("validation warning: {}", Diagnostic::from_miette(&file, text, w).one_line());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn problems(dir: &Path, mode: ValidationMode) -> String {
        match load_dir(dir, mode) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    const SCHEMA: &str =
        "entity User; entity Doc { owner: User }; action view appliesTo { principal: User, resource: Doc };";
    // Valid in permissive mode only: strict validation rejects a set mixing entity types.
    const PERMISSIVE_ONLY: &str =
        "permit (principal, action, resource) when { [principal, resource].contains(principal) };";

    #[test]
    fn ids_come_from_annotations_or_file_and_position() {
        let dir = dir_with(&[
            (
                "a.cedar",
                "permit (principal, action, resource);\n@id(\"named\")\nforbid (principal, action, resource);\npermit (principal == ?principal, action, resource);",
            ),
            ("sub/b.cedar", "permit (principal, action, resource);"),
            (".hidden/c.cedar", "this is not cedar"),
            ("sub/.d.cedar.swp", "nor this"),
            ("notes.txt", "ignored"),
        ]);
        let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
        let mut ids: Vec<String> = snapshot.policies.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["a.cedar#0", "named", "sub/b.cedar#0"]);
        let templates: Vec<String> = snapshot.policies.templates().map(|t| t.id().to_string()).collect();
        assert_eq!(templates, ["a.cedar#2"]);
    }

    #[test]
    fn json_schema_fragments_combine_with_cedar_ones() {
        let json = r#"{"": {"entityTypes": {"Team": {}}, "actions": {}}}"#;
        let dir = dir_with(&[
            ("users.cedarschema", "entity User in [Team]; action view appliesTo { principal: User, resource: User };"),
            ("teams.cedarschema.json", json),
            ("p.cedar", "permit (principal in Team::\"a\", action == Action::\"view\", resource);"),
        ]);
        let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
        assert!(snapshot.schema.is_some());
        // Without the JSON fragment, `Team` is unknown.
        std::fs::remove_file(dir.path().join("teams.cedarschema.json")).unwrap();
        assert!(problems(dir.path(), ValidationMode::Strict).contains("Team"));
    }

    #[test]
    fn validation_modes_differ_as_documented() {
        let dir = dir_with(&[("s.cedarschema", SCHEMA), ("p.cedar", PERMISSIVE_ONLY)]);
        assert!(problems(dir.path(), ValidationMode::Strict).contains("p.cedar:1:"));
        assert!(load_dir(dir.path(), ValidationMode::Permissive).is_ok());
        std::fs::write(dir.path().join("q.cedar"), "permit (principal, action, resource) when { resource.nope };")
            .unwrap();
        assert!(problems(dir.path(), ValidationMode::Permissive).contains("q.cedar:1:"));
        // Off: loads and evaluates a set that does not validate.
        let snapshot = load_dir(dir.path(), ValidationMode::Off).unwrap();
        assert_eq!(snapshot.policy_count, 2);
        assert!(snapshot.request_schema().is_none());
    }

    #[test]
    fn entities_are_checked_against_the_schema_and_across_files() {
        let alice = r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]"#;
        let dir = dir_with(&[("s.cedarschema", SCHEMA), ("a.entities.json", alice), ("b.entities.json", alice)]);
        assert!(problems(dir.path(), ValidationMode::Strict).contains("duplicate entity `User::\"alice\"`"));
        std::fs::remove_file(dir.path().join("b.entities.json")).unwrap();
        let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
        // alice plus the schema's action.
        assert_eq!(snapshot.entities.len(), 2);
        std::fs::write(
            dir.path().join("entities.json"),
            r#"[{"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": 3}, "parents": []}]"#,
        )
        .unwrap();
        assert!(problems(dir.path(), ValidationMode::Strict).contains("entities.json"));
    }

    #[test]
    fn the_version_follows_content_and_mode() {
        let dir = dir_with(&[("p.cedar", "permit (principal, action, resource);")]);
        let v1 = load_dir(dir.path(), ValidationMode::Strict).unwrap().version;
        assert_eq!(v1, load_dir(dir.path(), ValidationMode::Strict).unwrap().version);
        assert_ne!(v1, load_dir(dir.path(), ValidationMode::Off).unwrap().version);
        std::fs::write(dir.path().join("p.cedar"), "forbid (principal, action, resource);").unwrap();
        assert_ne!(v1, load_dir(dir.path(), ValidationMode::Strict).unwrap().version);
    }

    #[test]
    fn link_errors_name_the_link() {
        let dir = dir_with(&[
            ("p.cedar", "@id(\"t\")\npermit (principal == ?principal, action, resource);"),
            (
                "links.json",
                r#"[{"template_id": "t", "link_id": "ok", "args": {"?principal": "User::\"a\""}},
                              {"template_id": "t", "link_id": "bad", "args": {"?principal": "alice"}},
                              {"template_id": "t", "link_id": "slot", "args": {"?who": "User::\"a\""}}]"#,
            ),
        ]);
        let err = problems(dir.path(), ValidationMode::Strict);
        assert!(err.contains("links[1] (`bad`): `?principal` is not an entity uid `alice`"), "{err}");
        assert!(err.contains("links[2] (`slot`): unknown slot `?who`"), "{err}");
        assert!(!err.contains("links[0]"), "{err}");
    }
}
