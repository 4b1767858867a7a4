//! Event versions and upcasting. An event type registers its schema versions, each after the
//! first with declarative steps that turn the data of version N − 1 into version N. Reads
//! return the latest version by applying the steps; the stored entry never changes, so the
//! chain and its verification are untouched. Pure: the steps and the rules on registrations.
//!
//! Fields are named by dotted paths (`address.street`), so `move` can go into or out of a
//! nested object; a field whose own name contains a dot cannot be named.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The stream of schema registrations (the ledger's own).
pub const SCHEMAS_STREAM: &str = "auditledger:schemas";
/// The type of a registration entry.
pub const SCHEMA_REGISTERED: &str = "SchemaRegistered";

/// Most versions one event type may register.
pub const MAX_VERSIONS: usize = 1000;
/// Most steps of one version.
pub const MAX_STEPS: usize = 100;

/// One upcast step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// Adds a field with a default value where it is missing (never overwrites).
    Add {
        /// Path of the field.
        field: String,
        /// Its value.
        value: Value,
    },
    /// Renames a field (a move within its object).
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
    /// Removes a field.
    Remove {
        /// Path of the field.
        field: String,
    },
    /// Moves a field into or out of a nested object.
    Move {
        /// Old path.
        from: String,
        /// New path (intermediate objects are created).
        to: String,
    },
    /// Maps a field's value through a table (string values by themselves, others by their JSON
    /// text); a value not in the table becomes `default` if given, else stays.
    Map {
        /// Path of the field.
        field: String,
        /// Old value → new value.
        table: BTreeMap<String, Value>,
        /// For values not in the table.
        #[serde(default)]
        default: Option<Value>,
    },
}

/// One registered version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Its number, from 1.
    pub version: u32,
    /// The steps from the previous version (none for version 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upcast: Vec<Step>,
    /// A JSON Schema writes of this version must satisfy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// An event type's registration: its versions, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Versions 1, 2, … in order.
    pub versions: Vec<Version>,
}

/// Why a registration is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRegistration {
    /// Structural problem, named.
    #[error("{0}")]
    Invalid(String),
    /// It changes versions an earlier registration already fixed.
    #[error(
        "version {0} differs from the one already registered: registered versions never \
         change (events stored under them would read differently); add a new version instead"
    )]
    Changed(u32),
}

impl Registration {
    /// The latest version.
    #[must_use]
    pub fn latest(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.version)
    }

    /// The registered version `n`.
    #[must_use]
    pub fn version(&self, n: u32) -> Option<&Version> {
        self.versions.get(usize::try_from(n).ok()?.checked_sub(1)?)
    }

    /// Checks its shape, and that it keeps every version of `previous` as it was.
    ///
    /// # Errors
    /// What is wrong.
    pub fn check(&self, previous: Option<&Registration>) -> Result<(), BadRegistration> {
        let bad = |s: String| Err(BadRegistration::Invalid(s));
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return bad(format!("versions: 1 to {MAX_VERSIONS} versions"));
        }
        for (i, v) in self.versions.iter().enumerate() {
            let want = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if v.version != want {
                return bad(format!(
                    "versions[{i}].version must be {want}: versions are numbered 1, 2, … in order"
                ));
            }
            if i == 0 && !v.upcast.is_empty() {
                return bad("versions[0]: version 1 has no upcast steps".to_owned());
            }
            if v.upcast.len() > MAX_STEPS {
                return bad(format!("versions[{i}].upcast: at most {MAX_STEPS} steps"));
            }
            for (j, step) in v.upcast.iter().enumerate() {
                for path in step.paths() {
                    if path.is_empty() || path.split('.').any(str::is_empty) {
                        return bad(format!(
                            "versions[{i}].upcast[{j}]: a field path must be names joined by dots"
                        ));
                    }
                }
            }
            if v.schema
                .as_ref()
                .is_some_and(|s| !s.is_object() && !s.is_boolean())
            {
                return bad(format!(
                    "versions[{i}].schema must be a JSON Schema (an object)"
                ));
            }
        }
        if let Some(prev) = previous {
            if prev.versions.len() > self.versions.len() {
                return Err(BadRegistration::Changed(prev.latest()));
            }
            for (old, new) in prev.versions.iter().zip(&self.versions) {
                if old != new {
                    return Err(BadRegistration::Changed(old.version));
                }
            }
        }
        Ok(())
    }

    /// `data` stored as `version`, brought to the latest version. A version this registration
    /// does not know (older registrations than the data, or no registration) is left as is.
    #[must_use]
    pub fn upcast(&self, version: u32, mut data: Value) -> (u32, Value) {
        let latest = self.latest();
        if version == 0 || version >= latest {
            return (version, data);
        }
        for v in version + 1..=latest {
            if let Some(spec) = self.version(v) {
                for step in &spec.upcast {
                    step.apply(&mut data);
                }
            }
        }
        (latest, data)
    }
}

impl Step {
    fn paths(&self) -> Vec<&str> {
        match self {
            Step::Add { field, .. } | Step::Remove { field } | Step::Map { field, .. } => {
                vec![field]
            }
            Step::Rename { from, to } | Step::Move { from, to } => vec![from, to],
        }
    }

    /// Applies the step to `data` (a JSON object; anything else is left alone).
    pub fn apply(&self, data: &mut Value) {
        match self {
            Step::Add { field, value } => {
                if get(data, field).is_none() {
                    set(data, field, value.clone());
                }
            }
            Step::Rename { from, to } | Step::Move { from, to } => {
                if let Some(v) = take(data, from) {
                    set(data, to, v);
                }
            }
            Step::Remove { field } => {
                take(data, field);
            }
            Step::Map {
                field,
                table,
                default,
            } => {
                let Some(current) = get(data, field) else {
                    return;
                };
                let key = match current {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Some(new) = table.get(&key).or(default.as_ref()) {
                    set(data, field, new.clone());
                }
            }
        }
    }
}

fn get<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(data, |v, name| v.as_object()?.get(name))
}

fn take(data: &mut Value, path: &str) -> Option<Value> {
    let (parent, name) = match path.rsplit_once('.') {
        Some((p, n)) => (parent_mut(data, p, false)?, n),
        None => (data.as_object_mut()?, path),
    };
    parent.remove(name)
}

fn set(data: &mut Value, path: &str, value: Value) {
    let (parent, name) = match path.rsplit_once('.') {
        Some((p, n)) => match parent_mut(data, p, true) {
            Some(parent) => (parent, n),
            None => return,
        },
        None => match data.as_object_mut() {
            Some(o) => (o, path),
            None => return,
        },
    };
    parent.insert(name.to_owned(), value);
}

/// The object at `path`, creating missing objects on the way when `create`; `None` when the
/// path runs into a value that is not an object.
fn parent_mut<'a>(
    data: &'a mut Value,
    path: &str,
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    let mut current = data;
    for name in path.split('.') {
        let object = current.as_object_mut()?;
        if !object.contains_key(name) {
            if !create {
                return None;
            }
            object.insert(name.to_owned(), Value::Object(Map::new()));
        }
        current = object.get_mut(name)?;
    }
    current.as_object_mut()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn reg(v: Value) -> Registration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_step_does_what_it_says() {
        let r = reg(json!({"versions": [
            {"version": 1},
            {"version": 2, "upcast": [{"rename": {"from": "amount", "to": "amount_cents"}}]},
            {"version": 3, "upcast": [
                {"add": {"field": "currency", "value": "EUR"}},
                {"move": {"from": "street", "to": "address.street"}},
                {"remove": {"field": "legacy"}},
                {"map": {"field": "status", "table": {"A": "active", "C": "closed"}}},
                {"move": {"from": "meta.source", "to": "source"}}
            ]}
        ]}));
        r.check(None).unwrap();
        let v1 = json!({"amount": 500, "street": "Main St 1", "legacy": true, "status": "A",
                        "meta": {"source": "pos"}});
        let (to, out) = r.upcast(1, v1);
        assert_eq!(to, 3);
        assert_eq!(
            out,
            json!({"amount_cents": 500, "currency": "EUR", "address": {"street": "Main St 1"},
                   "status": "active", "source": "pos", "meta": {}})
        );
        // From version 2, only version 3's steps run; add never overwrites.
        let (_, out) = r.upcast(
            2,
            json!({"amount_cents": 1, "currency": "USD", "status": "Z"}),
        );
        assert_eq!(
            out,
            json!({"amount_cents": 1, "currency": "USD", "status": "Z"})
        );
        // The latest version, and unknown ones, are left alone.
        assert_eq!(r.upcast(3, json!({"a": 1})), (3, json!({"a": 1})));
        assert_eq!(r.upcast(9, json!({"a": 1})), (9, json!({"a": 1})));
    }

    #[test]
    fn map_falls_back_to_its_default_and_matches_non_strings_by_json_text() {
        let s = Step::Map {
            field: "code".into(),
            table: BTreeMap::from([("1".to_owned(), json!("one"))]),
            default: Some(json!("other")),
        };
        let mut d = json!({"code": 1});
        s.apply(&mut d);
        assert_eq!(d["code"], "one");
        let mut d = json!({"code": 2});
        s.apply(&mut d);
        assert_eq!(d["code"], "other");
    }

    #[test]
    fn registrations_are_numbered_in_order_and_never_rewrite_a_version() {
        assert!(reg(json!({"versions": []})).check(None).is_err());
        assert!(
            reg(json!({"versions": [{"version": 2}]}))
                .check(None)
                .is_err()
        );
        assert!(
            reg(json!({"versions": [{"version": 1, "upcast": [{"remove": {"field": "a"}}]}]}))
                .check(None)
                .is_err()
        );
        assert!(
            reg(json!({"versions": [{"version": 1}, {"version": 2, "upcast": [{"remove": {"field": "a..b"}}]}]}))
                .check(None)
                .is_err()
        );
        let v2 = reg(json!({"versions": [{"version": 1},
            {"version": 2, "upcast": [{"remove": {"field": "a"}}]}]}));
        let v3 = reg(json!({"versions": [{"version": 1},
            {"version": 2, "upcast": [{"remove": {"field": "a"}}]},
            {"version": 3, "upcast": [{"remove": {"field": "b"}}]}]}));
        let altered = reg(json!({"versions": [{"version": 1},
            {"version": 2, "upcast": [{"remove": {"field": "z"}}]}]}));
        assert_eq!(v3.check(Some(&v2)), Ok(()));
        assert_eq!(v2.check(Some(&v2)), Ok(()));
        assert_eq!(altered.check(Some(&v2)), Err(BadRegistration::Changed(2)));
        assert_eq!(v2.check(Some(&v3)), Err(BadRegistration::Changed(3)));
        assert!(
            serde_json::from_value::<Registration>(json!({"versions": [{"version": 1},
            {"version": 2, "upcast": [{"explode": {"field": "a"}}]}]}))
            .is_err()
        );
    }
}
