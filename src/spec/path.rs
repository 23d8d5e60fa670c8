//! Dotted paths into JSON configs (`agent.replay.alpha`, `x.0`): how a search-space entry names
//! the base-config value it overrides. Segments split on `.`; a numeric segment indexes an array.

use serde_json::Value;

/// The value at `path` in `v`, if every segment exists.
///
/// ```
/// use serde_json::json;
/// use tune::spec::path::get;
/// let cfg = json!({"agent": {"net": [64, 64]}});
/// assert_eq!(get(&cfg, "agent.net.1"), Some(&json!(64)));
/// assert_eq!(get(&cfg, "agent.lr"), None);
/// ```
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    lookup(v, path).ok()
}

/// The value at `path` in `v`, or a message saying where the path stops and what exists there
/// (the keys of the deepest mapping reached, or the length of the deepest array).
pub fn lookup<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    let mut cur = v;
    let mut reached = String::new();
    for seg in segments(path)? {
        cur = step(cur, seg, &reached)?;
        if !reached.is_empty() {
            reached.push('.');
        }
        reached.push_str(seg);
    }
    Ok(cur)
}

/// Checks that every value of `config` has the kind (number, string, boolean, list, mapping)
/// of the value at the same place in `base`, where `base` has one that is not null; the error
/// names the path and both kinds.
///
/// ```
/// use serde_json::json;
/// use tune::spec::path::same_kinds;
/// let base = json!({"x": [0.0, 0.0], "opt": {"lr": 0.1, "name": "adam"}});
/// assert!(same_kinds(&base, &json!({"x": [1, 2, 3], "opt": {"lr": 2, "name": "sgd"}})).is_ok());
/// assert_eq!(
///     same_kinds(&base, &json!({"x": 0.5, "opt": {"lr": 0.1, "name": "adam"}})).unwrap_err(),
///     "`x` is a list in the base config, so it cannot become a number (0.5)"
/// );
/// ```
pub fn same_kinds(base: &Value, config: &Value) -> Result<(), String> {
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "mapping",
        }
    }
    fn walk(base: &Value, config: &Value, at: &str) -> Result<(), String> {
        let join = |seg: &str| if at.is_empty() { seg.to_string() } else { format!("{at}.{seg}") };
        match (base, config) {
            (Value::Null, _) => Ok(()),
            (Value::Object(b), Value::Object(c)) => c
                .iter()
                .filter_map(|(k, v)| b.get(k).map(|bv| (k, bv, v)))
                .try_for_each(|(k, bv, v)| walk(bv, v, &join(k))),
            (Value::Array(b), Value::Array(c)) => {
                b.iter().zip(c).enumerate().try_for_each(|(i, (bv, v))| walk(bv, v, &join(&i.to_string())))
            }
            (b, c) if kind(b) == kind(c) => Ok(()),
            (b, c) => {
                Err(format!("`{at}` is a {} in the base config, so it cannot become a {} ({c})", kind(b), kind(c)))
            }
        }
    }
    walk(base, config, "")
}

/// Replaces the value at `path` in `v` with `new`. Only existing entries are replaced (a typo
/// must not silently add a key nobody reads), with one exception for tagged sections, mappings
/// with a `type` key (`agent.head`, `agent.replay`): setting their `type` to another value
/// replaces the whole section by `{type: new}` (the old variant's settings do not belong to the
/// new one, whose defaults apply), and a key may be added to such a section (a setting of the
/// variant chosen; the section's own parser refuses a key it does not know, and `tune run`
/// builds every edge of the search space at load, so a typo still fails before any trial).
///
/// ```
/// use serde_json::json;
/// use tune::spec::path::set;
/// let mut cfg = json!({"x": [0.0, 0.0], "head": {"type": "c51", "atoms": 51}});
/// set(&mut cfg, "x.1", json!(2.5)).unwrap();
/// assert_eq!(cfg["x"], json!([0.0, 2.5]));
/// assert!(set(&mut cfg, "y", json!(1)).is_err());
/// set(&mut cfg, "head.type", json!("qr")).unwrap();
/// set(&mut cfg, "head.quantiles", json!(32)).unwrap();
/// assert_eq!(cfg["head"], json!({"type": "qr", "quantiles": 32}));
/// ```
pub fn set(v: &mut Value, path: &str, new: Value) -> Result<(), String> {
    // Check first with the shared-reference walk, which gives the helpful message.
    settable(v, path)?;
    let segs = segments(path)?;
    let (last, parents) = segs.split_last().expect("segments are never empty");
    let mut cur = v;
    for seg in parents {
        cur = match cur {
            Value::Object(map) => map.get_mut(*seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path `{path}` does not exist"))?;
    }
    match cur {
        Value::Object(map) if *last == "type" && map.get("type") != Some(&new) => {
            map.clear();
            map.insert("type".into(), new);
        }
        Value::Object(map) => {
            map.insert(last.to_string(), new);
        }
        Value::Array(items) => {
            let slot = last.parse::<usize>().ok().and_then(|i| items.get_mut(i));
            *slot.ok_or_else(|| format!("path `{path}` does not exist"))? = new;
        }
        _ => return Err(format!("path `{path}` does not exist")),
    }
    Ok(())
}

/// Whether [`set`] can write `path` in `v`: the entry exists, or its parent is a tagged section
/// (a mapping with a `type` key). The error is [`lookup`]'s.
pub fn settable(v: &Value, path: &str) -> Result<(), String> {
    let err = match lookup(v, path) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let segs = segments(path)?;
    let parent = segs[..segs.len() - 1].join(".");
    let tagged = match parent.as_str() {
        "" => None,
        p => get(v, p),
    }
    .and_then(Value::as_object)
    .is_some_and(|m| m.contains_key("type"));
    if tagged {
        Ok(())
    } else {
        Err(err)
    }
}

/// Splits `path` on `.`, refusing empty segments (`a..b`, a leading or trailing dot).
fn segments(path: &str) -> Result<Vec<&str>, String> {
    let segs: Vec<&str> = path.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!("`{path}` is not a valid dotted path: it has an empty segment"));
    }
    Ok(segs)
}

/// One step of a lookup; `reached` is the path walked so far (for messages).
fn step<'a>(cur: &'a Value, seg: &str, reached: &str) -> Result<&'a Value, String> {
    let at = if reached.is_empty() { "the top level".to_string() } else { format!("`{reached}`") };
    match cur {
        Value::Object(map) => map.get(seg).ok_or_else(|| {
            if map.is_empty() {
                format!("no key `{seg}` at {at}, which is an empty mapping")
            } else {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                format!("no key `{seg}` at {at}; keys there: {}", keys.join(", "))
            }
        }),
        Value::Array(items) => {
            let Ok(i) = seg.parse::<usize>() else {
                return Err(format!("{at} is a list of {} items, so `{seg}` must be an index", items.len()));
            };
            items.get(i).ok_or_else(|| match items.len() {
                0 => format!("index {i} is out of range: {at} is an empty list"),
                n => format!("index {i} is out of range: {at} is a list of {n} items (indices 0 to {})", n - 1),
            })
        }
        other => Err(format!("{at} is {}, so it has no `{seg}` inside", kind(other))),
    }
}

/// A JSON value's kind with its article, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Value {
        json!({"x": [1.0, 2.0], "agent": {"batch": 32, "net": [64, 64], "replay": {"type": "uniform", "alpha": 0.6}}})
    }

    #[test]
    fn get_walks_mappings_and_arrays() {
        let c = cfg();
        assert_eq!(get(&c, "x.1"), Some(&json!(2.0)));
        assert_eq!(get(&c, "agent.replay.alpha"), Some(&json!(0.6)));
        assert_eq!(get(&c, "agent.net"), Some(&json!([64, 64])));
        assert_eq!(get(&c, "agent.net.0"), Some(&json!(64)));
        assert_eq!(get(&c, "x.2"), None);
        assert_eq!(get(&c, "x.a"), None);
        assert_eq!(get(&c, "agent.batch.size"), None);
        assert_eq!(get(&c, "agent..batch"), None);
        assert_eq!(get(&c, ""), None);
    }

    #[test]
    fn numeric_segments_are_keys_in_mappings() {
        let c = json!({"layers": {"0": 16}});
        assert_eq!(get(&c, "layers.0"), Some(&json!(16)));
    }

    #[test]
    fn lookup_messages_list_what_exists() {
        let c = cfg();
        let e = lookup(&c, "agent.replay.beta").unwrap_err();
        assert!(e.contains("no key `beta` at `agent.replay`; keys there: type, alpha"), "{e}");
        let e = lookup(&c, "agnt").unwrap_err();
        assert!(e.contains("the top level; keys there: x, agent"), "{e}");
        let e = lookup(&c, "x.5").unwrap_err();
        assert!(e.contains("index 5 is out of range: `x` is a list of 2 items (indices 0 to 1)"), "{e}");
        let e = lookup(&c, "agent.batch.size").unwrap_err();
        assert!(e.contains("`agent.batch` is a number (32)"), "{e}");
    }

    #[test]
    fn set_replaces_existing_entries_only() {
        let mut c = cfg();
        set(&mut c, "x.0", json!(-3.5)).unwrap();
        set(&mut c, "agent.net", json!([256, 256])).unwrap();
        set(&mut c, "agent.replay.type", json!("prioritized")).unwrap();
        assert_eq!(c["x"], json!([-3.5, 2.0]));
        assert_eq!(c["agent"]["net"], json!([256, 256]));
        assert_eq!(c["agent"]["replay"]["type"], json!("prioritized"));
        // Another type drops the old variant's settings; a tagged section takes new keys.
        assert_eq!(c["agent"]["replay"], json!({"type": "prioritized"}));
        set(&mut c, "agent.replay.beta", json!(0.4)).unwrap();
        set(&mut c, "agent.replay.type", json!("prioritized")).unwrap();
        assert_eq!(c["agent"]["replay"], json!({"type": "prioritized", "beta": 0.4}), "the same type keeps them");
        let before = c.clone();
        assert!(set(&mut c, "agent.lr", json!(1e-3)).unwrap_err().contains("no key `lr`"));
        assert!(set(&mut c, "agent.net.size", json!(1)).is_err());
        assert!(set(&mut c, "x.2", json!(0)).is_err());
        assert!(set(&mut c, "agent.batch.size", json!(0)).is_err());
        assert_eq!(c, before, "a failed set leaves the config untouched");
    }
}
