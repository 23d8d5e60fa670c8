//! Reading YAML files with errors that tell the user what to fix: every failure names the file,
//! the YAML path (`search_space.agent.lr.low`), the line and column, what was wrong and what is
//! allowed.
//!
//! Documents are parsed once into a YAML value tree, then deserialized section by section with
//! `serde_path_to_error`, so a message knows its YAML path. The value tree has no positions, so
//! the line and column of a path are found afterwards by walking the text again with the real
//! parser and failing on purpose at that path: the parser stamps its own position on the error.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_norway::{Mapping, Value as Yaml};

use crate::error::InputError;

/// One step of a [`YamlPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key (which may itself contain dots, like a search-space entry `agent.lr`).
    Key(String),
    /// A list index.
    Index(usize),
}

/// Where a value sits in a YAML document, shown as `search_space.agent.lr.low` or
/// `objective.command[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlPath(pub Vec<Seg>);

impl YamlPath {
    /// The document itself.
    pub fn root() -> Self {
        YamlPath(Vec::new())
    }

    /// This path extended by a mapping key.
    pub fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    /// This path extended by a list index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// This path followed by `tail`.
    pub fn join(&self, tail: &YamlPath) -> Self {
        let mut p = self.clone();
        p.0.extend(tail.0.iter().cloned());
        p
    }

    /// True for the document itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A YAML document being read: the file it came from and its text, so that an error at any
/// YAML path becomes an [`InputError`] naming the file, the path, the line and the column.
#[derive(Debug, Clone, Copy)]
pub struct Doc<'a> {
    /// The file, as the user named it.
    pub file: &'a Path,
    /// Its full text.
    pub text: &'a str,
}

impl<'a> Doc<'a> {
    /// A document read from `file`.
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Doc { file, text }
    }

    /// An input error at `at`: `<file>: <path> (line L, column C): <message>`.
    pub fn error(&self, at: &YamlPath, message: impl fmt::Display) -> anyhow::Error {
        self.error_at(at, locate(self.text, at), message)
    }

    fn error_at(&self, at: &YamlPath, pos: Option<(usize, usize)>, message: impl fmt::Display) -> anyhow::Error {
        let mut s = self.file.display().to_string();
        if !at.is_root() {
            s.push_str(&format!(": {at}"));
        }
        if let Some((line, column)) = pos {
            s.push_str(&format!(" (line {line}, column {column})"));
        }
        s.push_str(&format!(": {message}"));
        InputError::new(s).into()
    }

    /// Parses the text into a YAML value tree (syntax errors only; an empty document is null).
    /// A whole number beyond 64 bits is reported at its key with the range numbers may take.
    pub fn value(&self) -> anyhow::Result<Yaml> {
        serde_norway::from_str::<Yaml>(self.text).map_err(|e| {
            if let Some(err) = self.out_of_range(&e) {
                return err;
            }
            let pos = e.location().map(|l| (l.line(), l.column()));
            let mut msg = e.to_string();
            if let Some((line, column)) = pos {
                msg = msg.replacen(&format!(" at line {line} column {column}"), "", 1);
            }
            self.error_at(&YamlPath::root(), pos, format!("invalid YAML: {msg}"))
        })
    }

    /// The error for a parse failure on an integer that fits no 64-bit type (the parser reads
    /// it as a 128-bit one, which no YAML value holds): the number is replaced by a marker and
    /// the text parsed again, so that the marker's YAML path names the key.
    fn out_of_range(&self, e: &serde_norway::Error) -> Option<anyhow::Error> {
        let msg = e.to_string();
        if !(msg.contains(" as u128") || msg.contains(" as i128")) {
            return None;
        }
        let start = e.location()?.index();
        let rest = self.text.get(start..)?;
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "+-_".contains(c))).unwrap_or(rest.len());
        let number = &self.text[start..start + len];
        const MARK: &str = "__tune_out_of_range__";
        let marked = format!("{}{MARK}{}", &self.text[..start], &self.text[start + len..]);
        let path = serde_norway::from_str::<Yaml>(&marked).ok().and_then(|v| find_string(&v, MARK))?;
        let pos = e.location().map(|l| (l.line(), l.column()));
        let range = match path.0.last() {
            Some(Seg::Key(k)) if path.0.len() == 1 && k == "n_trials" => "1 to 18446744073709551615".to_string(),
            Some(Seg::Key(k)) if path.0.len() == 1 && k == "seed" => "0 to 18446744073709551615 (2^64 - 1)".to_string(),
            Some(Seg::Key(k)) if path.0.first() == Some(&Seg::Key("search_space".into())) && k != "when" => {
                "-9223372036854775808 to 9223372036854775807 for an int parameter (write a float, e.g. 1.0e30, for a float one)"
                    .to_string()
            }
            _ => "-9223372036854775808 to 18446744073709551615 (64 bits)".to_string(),
        };
        Some(self.error_at(&path, pos, format!("{number} is out of range; a whole number here must lie in {range}")))
    }

    /// Deserializes `value`, found at `at`, into `T`; errors carry the full YAML path.
    pub fn parse<T: DeserializeOwned>(&self, value: Yaml, at: &YamlPath) -> anyhow::Result<T> {
        self.parse_tagged(value, at, None)
    }

    /// Like [`Doc::parse`] for a type tagged by a `type` key, `what` naming it in messages
    /// ("objective"): an unknown variant becomes "unknown objective type `x`".
    pub fn parse_tagged<T: DeserializeOwned>(
        &self,
        value: Yaml,
        at: &YamlPath,
        what: Option<&str>,
    ) -> anyhow::Result<T> {
        // Kept for messages: inside a `type`-tagged value serde reports every error at the
        // value itself, so the offending key is found again by looking at the YAML.
        let copy = value.clone();
        serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
            let mut path = at.clone();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => path = path.index(*index),
                    serde_path_to_error::Segment::Map { key } => path = path.key(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => path = path.key(variant.clone()),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let inner = e.inner().to_string();
            let node = walk(&copy, &path.0[at.0.len()..]);
            let bad = backticked(&inner).into_iter().next();
            let is_tag = inner.starts_with("unknown variant ")
                && (path == *at || path == at.key("type"))
                && bad.is_some()
                && copy.get("type").and_then(Yaml::as_str) == bad.as_deref();
            let (mut extra, msg) = humanize(&inner, what.filter(|_| is_tag));
            if extra.is_none() {
                extra = node.and_then(|n| blame_key(n, &inner));
            }
            if let Some(k) = extra {
                if path.0.last() != Some(&Seg::Key(k.clone())) {
                    path = path.key(k);
                }
            }
            self.error(&path, msg)
        })
    }

    /// Splits a section tagged by `type` (`sampler: {type: tpe, ...}`) into the type and the
    /// remaining settings, checking the type against `allowed`. With `shorthand`, a bare
    /// string (`pruner: none`) means that type with default settings.
    pub fn tagged(
        &self,
        value: Yaml,
        at: &YamlPath,
        what: &str,
        allowed: &[&str],
        shorthand: bool,
    ) -> anyhow::Result<(String, Yaml)> {
        let expected = allowed.join(", ");
        let mut map = match value {
            Yaml::String(s) if shorthand => {
                self.check_type(&s, at, what, allowed)?;
                return Ok((s, Yaml::Mapping(Mapping::new())));
            }
            Yaml::Mapping(m) => m,
            other => {
                return Err(self.error(
                    at,
                    format!("expected a mapping with a `type` key (one of: {expected}), got {}", describe(&other)),
                ))
            }
        };
        let ty = match map.remove("type") {
            Some(Yaml::String(s)) => s,
            Some(other) => {
                return Err(self.error(
                    &at.key("type"),
                    format!("expected a {what} type (one of: {expected}), got {}", describe(&other)),
                ))
            }
            None => return Err(self.error(at, format!("missing required key `type`; expected one of: {expected}"))),
        };
        self.check_type(&ty, &at.key("type"), what, allowed)?;
        Ok((ty, Yaml::Mapping(map)))
    }

    fn check_type(&self, ty: &str, at: &YamlPath, what: &str, allowed: &[&str]) -> anyhow::Result<()> {
        if allowed.contains(&ty) {
            return Ok(());
        }
        Err(self.error(
            at,
            format!("unknown {what} type `{ty}`; expected one of: {}{}", allowed.join(", "), suggest(ty, allowed)),
        ))
    }
}

/// Parses a YAML file's text into `T`, turning every failure into an [`InputError`] that names
/// `path`, the YAML path, the line and column, and what is allowed.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> anyhow::Result<T> {
    let doc = Doc::new(path, text);
    let value = doc.value()?;
    doc.parse(value, &YamlPath::root())
}

/// The path of the first string equal to `s` in `v` (depth first, document order).
fn find_string(v: &Yaml, s: &str) -> Option<YamlPath> {
    match v {
        Yaml::String(x) if x == s => Some(YamlPath::root()),
        Yaml::Mapping(m) => m.iter().find_map(|(k, v)| {
            let key = match k {
                Yaml::String(k) => k.clone(),
                other => serde_norway::to_string(other).unwrap_or_default().trim().to_string(),
            };
            find_string(v, s).map(|tail| YamlPath::root().key(key).join(&tail))
        }),
        Yaml::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_string(v, s).map(|tail| YamlPath::root().index(i).join(&tail))),
        Yaml::Tagged(t) => find_string(&t.value, s),
        _ => None,
    }
}

/// The value at `path` below `v`.
fn walk<'v>(v: &'v Yaml, path: &[Seg]) -> Option<&'v Yaml> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Seg::Key(k) => cur.get(k.as_str()),
        Seg::Index(i) => cur.get(*i),
    })
}

/// The one key of mapping `node` holding the scalar a serde message complains about
/// ("unknown variant `spheer`", "invalid type: string \"three\", expected usize").
fn blame_key(node: &Yaml, msg: &str) -> Option<String> {
    let map = node.as_mapping()?;
    let got = if msg.starts_with("unknown variant ") {
        Yaml::String(backticked(msg).into_iter().next()?)
    } else {
        let rest = msg.strip_prefix("invalid type: ").or_else(|| msg.strip_prefix("invalid value: "))?;
        let (got, _) = rest.split_once(", expected ")?;
        if let Some(s) = got.strip_prefix("string \"").and_then(|s| s.strip_suffix('"')) {
            Yaml::String(s.to_string())
        } else {
            let word = backticked(got).into_iter().next()?;
            if got.starts_with("boolean") {
                Yaml::Bool(word == "true")
            } else {
                serde_norway::from_str::<Yaml>(&word).ok()?
            }
        }
    };
    let same = |v: &Yaml| match (v, &got) {
        (Yaml::Number(a), Yaml::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    };
    let mut keys = map.iter().filter(|(_, v)| same(v)).map(|(k, _)| k);
    match (keys.next(), keys.next()) {
        (Some(Yaml::String(k)), None) => Some(k.clone()),
        _ => None,
    }
}

/// A short description of a YAML value for messages.
pub fn describe(v: &Yaml) -> String {
    match v {
        Yaml::Null => "an empty value".into(),
        Yaml::Bool(b) => format!("boolean `{b}`"),
        Yaml::Number(n) => format!("number `{n}`"),
        Yaml::String(s) => format!("string `{s}`"),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("tagged value `{}`", t.tag),
    }
}

/// Rewrites serde's messages in the user's words. Returns the offending key for "unknown key"
/// messages (so the error can point at it) and the new message. `tag` names the kind of a
/// `type`-tagged value whose unknown variant is being reported.
fn humanize(msg: &str, tag: Option<&str>) -> (Option<String>, String) {
    let ticks = backticked(msg);
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let bad = ticks.first().cloned().unwrap_or_default();
        let allowed: Vec<&str> = ticks.iter().skip(1).map(String::as_str).collect();
        let msg = if rest.contains("there are no fields") || allowed.is_empty() {
            format!("unknown key `{bad}`; no keys are allowed here")
        } else {
            format!("unknown key `{bad}`; expected one of: {}{}", allowed.join(", "), suggest(&bad, &allowed))
        };
        return (Some(bad), msg);
    }
    if msg.starts_with("unknown variant ") {
        let bad = ticks.first().cloned().unwrap_or_default();
        let allowed: Vec<&str> = ticks.iter().skip(1).map(String::as_str).collect();
        let list = format!("{}{}", allowed.join(", "), suggest(&bad, &allowed));
        return match tag {
            Some(what) => (Some("type".into()), format!("unknown {what} type `{bad}`; expected one of: {list}")),
            None => (None, format!("unknown value `{bad}`; expected one of: {list}")),
        };
    }
    if msg.starts_with("missing field ") {
        let key = ticks.first().cloned().unwrap_or_default();
        return (None, format!("missing required key `{key}`"));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, want)) = rest.split_once(", expected ") {
                if let Some(range) = int_range(want).filter(|_| got.starts_with("integer ")) {
                    let n = ticks.first().cloned().unwrap_or_default();
                    return (None, format!("{n} is out of range; expected a whole number from {range}"));
                }
                let huge = got
                    .strip_prefix("string \"")
                    .and_then(|g| g.strip_suffix('"'))
                    .filter(|g| g.parse::<f64>().is_ok_and(f64::is_infinite));
                if let (Some(g), "f64" | "f32") = (huge, want) {
                    return (None, format!("{g} is out of range; a number must lie within ±1.7976931348623157e308"));
                }
                return (
                    None,
                    format!("expected {}, got {}", expectation(want), got.replace("unit value", "an empty value")),
                );
            }
        }
    }
    (None, msg.to_string())
}

/// The range of serde's integer type `want`, for out-of-range messages.
fn int_range(want: &str) -> Option<String> {
    Some(match want {
        "u64" => format!("0 to {}", u64::MAX),
        "u32" => format!("0 to {}", u32::MAX),
        "u16" => format!("0 to {}", u16::MAX),
        "u8" => format!("0 to {}", u8::MAX),
        "usize" => format!("0 to {}", usize::MAX),
        "i64" => format!("{} to {}", i64::MIN, i64::MAX),
        "i32" => format!("{} to {}", i32::MIN, i32::MAX),
        _ => return None,
    })
}

/// serde's name for an expected type, in the user's words.
fn expectation(want: &str) -> String {
    match want {
        "f64" | "f32" => "a number".into(),
        "u64" | "u32" | "u16" | "u8" | "usize" => "a whole number >= 0".into(),
        "i64" | "i32" | "i16" | "i8" | "isize" => "a whole number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        w if w.starts_with("struct ") || w.starts_with("internally tagged enum") => "a mapping".into(),
        w => w.to_string(),
    }
}

/// The `backticked` words of a serde message, in order.
fn backticked(msg: &str) -> Vec<String> {
    msg.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// " (did you mean `x`?)" when one allowed word is close to `bad`, else "".
pub fn suggest(bad: &str, allowed: &[&str]) -> String {
    let best =
        allowed.iter().map(|a| (levenshtein(&bad.to_lowercase(), &a.to_lowercase()), *a)).min_by_key(|(d, _)| *d);
    match best {
        // About one typo per three letters; never for one- or two-letter words, where any
        // other word would be "close".
        Some((d, a)) if d > 0 && d <= a.len().max(bad.len()) / 3 => format!(" (did you mean `{a}`?)"),
        _ => String::new(),
    }
}

/// Edit distance between two short words.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The (1-based) line and column of the value at `at` in `text`, or of its nearest ancestor
/// that can be found; `None` for the document itself or when the text does not parse.
pub fn locate(text: &str, at: &YamlPath) -> Option<(usize, usize)> {
    (1..=at.0.len()).rev().find_map(|n| locate_exact(text, &at.0[..n]))
}

/// Marker message of the deliberate error raised at the sought value.
const FOUND: &str = "\u{0}tune-located\u{0}";

fn locate_exact(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let de = serde_norway::Deserializer::from_str(text);
    match (Seek { path }).deserialize(de) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Walks the document to `path`, skipping everything else, and fails at the value found there.
struct Seek<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // The parser stamps the position of the value it is reading on errors raised inside
        // `deserialize_any`, so even at the target the failure must come from a visitor.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<Key>()? {
            match (first, key.0) {
                (Seg::Key(want), Some(k)) if *want == k => return map.next_value_seed(Seek { path: rest }),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let mut i = 0;
        loop {
            if *first == Seg::Index(i) {
                return seq.next_element_seed(Seek { path: rest }).map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A `!tagged` value: found if it is the target, otherwise not searched into.
        if self.path.is_empty() {
            return Err(de::Error::custom(FOUND));
        }
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant::<IgnoredAny>(variant)?;
        Ok(())
    }
}

impl Seek<'_> {
    /// A scalar is the target, or the path goes on below something that has no children.
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

/// A mapping key as text (`None` for a key that is itself a list or mapping).
struct Key(Option<String>);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Key(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Key(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const TEXT: &str = "name: a\nsampler:\n  type: tpe\n  n_startup_trials: 3\nsearch_space:\n  agent.lr: {type: float, low: 1, high: 0}\n  x:\n    - 1\n    - [2, 3]\n";

    #[test]
    fn locate_finds_block_flow_and_list_positions() {
        let p = |segs: &[&str]| YamlPath(segs.iter().map(|s| Seg::Key(s.to_string())).collect());
        assert_eq!(locate(TEXT, &p(&["name"])), Some((1, 7)));
        assert_eq!(locate(TEXT, &p(&["sampler", "n_startup_trials"])), Some((4, 21)));
        assert_eq!(locate(TEXT, &p(&["search_space", "agent.lr", "high"])), Some((6, 41)));
        assert_eq!(locate(TEXT, &p(&["search_space", "x"]).index(1).index(0)), Some((9, 8)));
        // A missing key falls back to the nearest ancestor that exists.
        assert_eq!(locate(TEXT, &p(&["sampler", "gamma"])), locate(TEXT, &p(&["sampler"])));
        assert_eq!(locate(TEXT, &YamlPath::root()), None);
        assert_eq!(locate("a: [", &p(&["b"])), None);
    }

    #[test]
    fn paths_display_with_dots_and_indices() {
        let p = YamlPath::root().key("search_space").key("agent.lr").key("grid").index(2);
        assert_eq!(p.to_string(), "search_space.agent.lr.grid[2]");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        jobs: usize,
        #[serde(default)]
        devices: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        parallelism: Inner,
    }

    fn err<T: DeserializeOwned + fmt::Debug>(text: &str) -> String {
        format!("{:#}", parse_yaml::<T>(Path::new("s.yaml"), text).unwrap_err())
    }

    #[test]
    fn parse_yaml_errors_name_file_path_line_and_fix() {
        let e = err::<Outer>("name: a\nparallelism:\n  jobs: 2\n  devics: [cpu]\n");
        assert_eq!(e, "s.yaml: parallelism.devics (line 4, column 11): unknown key `devics`; expected one of: jobs, devices (did you mean `devices`?)");
        let e = err::<Outer>("name: a\nparallelism: {jobs: two}\n");
        assert_eq!(e, "s.yaml: parallelism.jobs (line 2, column 21): expected a whole number >= 0, got string \"two\"");
        let e = err::<Outer>("name: a\n");
        assert_eq!(e, "s.yaml: missing required key `parallelism`");
        let e = err::<Outer>("name: a\n  parallelism: 1\n");
        assert!(e.starts_with("s.yaml (line 2, column 14): invalid YAML: mapping values are not allowed"), "{e}");
        let e = err::<Outer>("name: a\nname: b\n");
        assert!(e.contains("s.yaml") && e.contains("invalid YAML") && e.contains("duplicate"), "{e}");
        let e = err::<Outer>("[1, 2]");
        assert_eq!(e, "s.yaml: expected a mapping, got sequence");
    }

    #[test]
    fn parse_yaml_errors_are_input_errors() {
        let e = parse_yaml::<Outer>(Path::new("s.yaml"), "nme: a").unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Tagged {
        Function(Fun),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Fun {
        name: Shape,
        dim: usize,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Sphere,
        Branin,
    }

    fn tagged_err(text: &str) -> String {
        let doc = Doc::new(Path::new("s.yaml"), text);
        let v = doc.value().unwrap().get("f").cloned().unwrap();
        let e = doc.parse_tagged::<Tagged>(v, &YamlPath::root().key("f"), Some("thing")).unwrap_err();
        format!("{e:#}")
    }

    #[test]
    fn errors_inside_tagged_values_point_at_the_key() {
        let e = tagged_err("f: {type: funktion}\n");
        assert_eq!(e, "s.yaml: f.type (line 1, column 11): unknown thing type `funktion`; expected one of: function (did you mean `function`?)");
        let e = tagged_err("f: {type: function, name: spheer, dim: 2}\n");
        assert_eq!(e, "s.yaml: f.name (line 1, column 27): unknown value `spheer`; expected one of: sphere, branin (did you mean `sphere`?)");
        let e = tagged_err("f:\n  type: function\n  name: sphere\n  dim: three\n");
        assert_eq!(e, "s.yaml: f.dim (line 4, column 8): expected a whole number >= 0, got string \"three\"");
        let e = tagged_err("f: {type: function, name: sphere, dim: 2, dims: 3}\n");
        assert!(
            e.starts_with("s.yaml: f.dims (line 1, column 49): unknown key `dims`; expected one of: name, dim"),
            "{e}"
        );
        let e = tagged_err("f: {name: sphere}\n");
        assert_eq!(e, "s.yaml: f (line 1, column 4): missing required key `type`");
    }

    #[test]
    fn suggestions_only_for_close_words() {
        assert_eq!(suggest("tpee", &["tpe", "random", "grid"]), " (did you mean `tpe`?)");
        assert_eq!(suggest("cmaes", &["tpe", "random", "grid"]), "");
        assert_eq!(suggest("successive-halving", &["successive_halving"]), " (did you mean `successive_halving`?)");
    }
}
