//! Forbids that fail open: Cedar skips a policy whose evaluation errors, so a `forbid` whose condition
//! can raise an error at run time does not deny when it errors. `cedar-pdp validate` warns about each
//! such read: an attribute of `principal` or `resource` (or of an entity reached from them) without a
//! `has` guard before it (the entity may be absent from the store, the attribute from the entity),
//! a context attribute without one when there is no schema to type the context, a tag without
//! `hasTag`, and an extension constructor (`ip`, `decimal`, `datetime`, `duration`) on a value that is
//! not a literal.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Snapshot;

/// One risky read in one forbid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub policy_id: String,
    /// The policy's file (relative to the directory) and the line of its `@id`, when known.
    pub file: String,
    pub line: Option<usize>,
    pub what: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file)?,
            None => write!(f, "{}", self.file)?,
        }
        write!(
            f,
            ": forbid `{}` {}: if that errors, Cedar skips the forbid and it denies nothing (guard the read, or run with --forbid-errors deny)",
            self.policy_id, self.what
        )
    }
}

/// The warnings of every forbid in `snapshot`; `dir` is read to place them on a line.
pub fn forbids_that_fail_open(snapshot: &Snapshot, dir: &std::path::Path) -> Vec<Warning> {
    let mut out = Vec::new();
    for policy in snapshot.policies.policies() {
        if policy.effect() != cedar_policy::Effect::Forbid {
            continue;
        }
        let Ok(est) = policy.to_json() else { continue };
        let typed_context = snapshot.schema.is_some() && snapshot.mode != super::ValidationMode::Off;
        let risks = risks_of(&est, typed_context);
        let id = AsRef::<str>::as_ref(policy.id()).to_string();
        let file = snapshot.origins.get(&id).cloned().unwrap_or_default();
        let line = std::fs::read_to_string(dir.join(&file))
            .ok()
            .and_then(|text| text.lines().position(|l| l.contains(&format!("@id(\"{id}\")"))).map(|n| n + 1));
        out.extend(risks.into_iter().map(|what| Warning { policy_id: id.clone(), file: file.clone(), line, what }));
    }
    out.sort_by(|a, b| (&a.file, a.line, &a.policy_id).cmp(&(&b.file, b.line, &b.policy_id)));
    out
}

/// The risky reads of a policy's conditions. Cedar evaluates the `when` clauses before the `unless`
/// ones, so what a `when` proves guards the `unless` reads too.
fn risks_of(est: &Value, typed_context: bool) -> BTreeSet<String> {
    let mut risks = BTreeSet::new();
    let mut proven = BTreeSet::new();
    let conditions = est["conditions"].as_array().cloned().unwrap_or_default();
    for kind in ["when", "unless"] {
        for condition in conditions.iter().filter(|c| c["kind"] == kind) {
            walk(&condition["body"], &proven, typed_context, &mut risks);
        }
        for condition in conditions.iter().filter(|c| c["kind"] == kind && kind == "when") {
            facts(&condition["body"], &mut proven);
        }
    }
    risks
}

/// `principal`, `resource.owner`, …: an expression as a path, if it is one.
fn path(expr: &Value) -> Option<String> {
    if let Some(var) = expr.get("Var").and_then(Value::as_str) {
        return Some(var.to_string());
    }
    let access = expr.get(".")?;
    Some(format!("{}.{}", path(&access["left"])?, access["attr"].as_str()?))
}

/// The `has` facts an expression proves when it is true (through `&&`).
fn facts(expr: &Value, out: &mut BTreeSet<(String, String)>) {
    if let Some(has) = expr.get("has")
        && let Some(mut p) = path(&has["left"])
    {
        // `e has a` names one attribute; `e has a.b` a path of them, each prefix proven.
        let attrs: Vec<&str> = match &has["attr"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for attr in attrs {
            out.insert((p.clone(), attr.to_string()));
            p = format!("{p}.{attr}");
        }
    }
    if let Some(tag) = expr.get("hasTag")
        && let (Some(p), Some(name)) = (path(&tag["left"]), tag["right"].get("Value"))
    {
        out.insert((p, format!("tag:{name}")));
    }
    if let Some(and) = expr.get("&&") {
        facts(&and["left"], out);
        facts(&and["right"], out);
    }
}

fn walk(expr: &Value, guards: &BTreeSet<(String, String)>, typed_context: bool, risks: &mut BTreeSet<String>) {
    let Some(object) = expr.as_object() else { return };
    for (op, args) in object {
        match op.as_str() {
            "." => {
                let (left, attr) = (&args["left"], args["attr"].as_str().unwrap_or_default());
                if let Some(p) = path(left)
                    && !guards.contains(&(p.clone(), attr.to_string()))
                    && (!p.starts_with("context") || !typed_context || p.contains('.'))
                {
                    risks.insert(format!("reads `{p}.{attr}` without `{p} has {attr}` first"));
                }
                walk(left, guards, typed_context, risks);
            }
            "&&" => {
                walk(&args["left"], guards, typed_context, risks);
                let mut more = guards.clone();
                facts(&args["left"], &mut more);
                walk(&args["right"], &more, typed_context, risks);
            }
            "if-then-else" => {
                walk(&args["if"], guards, typed_context, risks);
                let mut more = guards.clone();
                facts(&args["if"], &mut more);
                walk(&args["then"], &more, typed_context, risks);
                walk(&args["else"], guards, typed_context, risks);
            }
            "getTag" => {
                let name = args["right"].get("Value").map(|n| format!("tag:{n}"));
                if let Some(p) = path(&args["left"])
                    && !name.is_some_and(|n| guards.contains(&(p.clone(), n)))
                {
                    risks.insert(format!("reads a tag of `{p}` with getTag (guard it with hasTag)"));
                }
                walk(&args["left"], guards, typed_context, risks);
                walk(&args["right"], guards, typed_context, risks);
            }
            "ip" | "decimal" | "datetime" | "duration" => {
                for arg in args.as_array().into_iter().flatten() {
                    if arg.get("Value").is_none() {
                        risks.insert(format!(
                            "calls `{op}` on a value that is not a literal (it errors on a malformed one)"
                        ));
                    }
                    walk(arg, guards, typed_context, risks);
                }
            }
            "Value" | "Var" | "Slot" | "Unknown" => {}
            _ => match args {
                Value::Array(items) => items.iter().for_each(|e| walk(e, guards, typed_context, risks)),
                Value::Object(fields) => fields.values().for_each(|e| walk(e, guards, typed_context, risks)),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risks(text: &str, typed_context: bool) -> Vec<String> {
        let policy = cedar_policy::Policy::parse(None, text).unwrap();
        risks_of(&policy.to_json().unwrap(), typed_context).into_iter().collect()
    }

    #[test]
    fn unguarded_reads_are_found_and_guarded_ones_are_not() {
        let one = |text: &str| risks(text, false);
        assert_eq!(one("forbid (principal, action, resource) when { principal.suspended };").len(), 1);
        assert!(
            one("forbid (principal, action, resource) when { principal has suspended && principal.suspended };")
                .is_empty()
        );
        assert!(one("forbid (principal, action, resource) when { if principal has level then principal.level > 3 else false };").is_empty());
        // The guard must come first, on the same path.
        assert_eq!(
            one("forbid (principal, action, resource) when { principal.suspended && principal has suspended };").len(),
            1
        );
        assert_eq!(
            one("forbid (principal, action, resource) when { resource has owner && resource.owner.suspended };").len(),
            1
        );
        assert!(one("forbid (principal, action, resource) when { resource has owner && resource.owner has suspended && resource.owner.suspended };").is_empty());
        // `unless` clauses too; context only without a schema; tags; extension constructors.
        assert_eq!(one("forbid (principal, action, resource) unless { context.mfa };").len(), 1);
        assert!(risks("forbid (principal, action, resource) unless { context.mfa };", true).is_empty());
        assert_eq!(one("forbid (principal, action, resource) when { principal.getTag(\"x\") == 1 };").len(), 1);
        assert_eq!(
            one("forbid (principal, action, resource) when { context has a && ip(context.a).isLoopback() };").len(),
            1
        );
        assert!(
            one("forbid (principal, action, resource) when { context has a && context.a == ip(\"10.0.0.1\") };")
                .is_empty()
        );
        assert!(one("forbid (principal, action, resource) when { principal == User::\"mallory\" };").is_empty());
        // Extended `has`, `hasTag`, and a `when` guarding the `unless`.
        assert!(one("forbid (principal, action, resource) when { principal has a.b && principal.a.b };").is_empty());
        assert!(
            one(
                "forbid (principal, action, resource) when { principal.hasTag(\"x\") && principal.getTag(\"x\") == 1 };"
            )
            .is_empty()
        );
        assert!(one("forbid (principal, action, resource) when { resource has x } unless { resource.x };").is_empty());
        assert_eq!(one("forbid (principal, action, resource) when { true } unless { resource.x };").len(), 1);
    }
}
