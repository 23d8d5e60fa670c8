//! The `search_space:` section: one parameter per dotted path into the objective's base config,
//! with conditions (`when:`) that switch parameters on and off, and explicit grids.
//!
//! ```yaml
//! search_space:
//!   agent.lr: {type: float, low: 1e-5, high: 1e-2, log: true}
//!   agent.batch: {type: int, low: 16, high: 256, step: 16}
//!   agent.replay.type: {type: categorical, choices: [uniform, prioritized]}
//!   agent.replay.alpha: {type: float, low: 0.2, high: 1.0, when: {agent.replay.type: prioritized}}
//! ```

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use serde_norway::Value as Yaml;

use super::path;
use super::yaml::{describe, suggest, Doc, YamlPath};
use crate::distribution::Distribution;
use crate::error::InputError;
use crate::sampler::SearchSpace;
use crate::study::Trial;

/// Parameter types a search-space entry may have.
pub const PARAM_TYPES: &[&str] = &["float", "int", "categorical"];

/// Most values the grid sampler will enumerate for one parameter without an explicit `grid`.
pub const MAX_GRID_VALUES: u64 = 100_000;

/// One hyperparameter: where it goes in the config, what it is drawn from, and when it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The dotted path into the objective's base config (`agent.replay.alpha`); also the
    /// parameter's name in the study.
    pub name: String,
    /// The values it is drawn from.
    pub distribution: Distribution,
    /// All of these must hold for the parameter to be sampled; otherwise the base config's
    /// value stays.
    pub when: Vec<Condition>,
    /// Explicit values for the grid sampler (ignored by other samplers).
    pub grid: Option<Vec<Value>>,
}

/// "Parameter `param` was sampled and took one of `values`".
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// A parameter declared earlier in the search space.
    pub param: String,
    /// The values that switch the dependent parameter on (user-facing form).
    pub values: Vec<Value>,
}

/// `{type: float, ...}` after its `type` was taken off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatParam {
    /// Lower bound (inclusive).
    low: f64,
    /// Upper bound (inclusive).
    high: f64,
    /// Sample in log space.
    #[serde(default)]
    log: bool,
    /// Grid spacing.
    #[serde(default)]
    step: Option<f64>,
    /// Conditions.
    #[serde(default)]
    when: Option<IndexMap<String, Value>>,
    /// Explicit grid values.
    #[serde(default)]
    grid: Option<Vec<Value>>,
}

/// `{type: int, ...}` after its `type` was taken off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntParam {
    /// Lower bound (inclusive).
    low: i64,
    /// Upper bound (inclusive).
    high: i64,
    /// Sample in log space.
    #[serde(default)]
    log: bool,
    /// Grid spacing.
    #[serde(default = "one")]
    step: i64,
    /// Conditions.
    #[serde(default)]
    when: Option<IndexMap<String, Value>>,
    /// Explicit grid values.
    #[serde(default)]
    grid: Option<Vec<Value>>,
}

fn one() -> i64 {
    1
}

/// `{type: categorical, ...}` after its `type` was taken off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoricalParam {
    /// The values to choose from.
    choices: Vec<Value>,
    /// Conditions.
    #[serde(default)]
    when: Option<IndexMap<String, Value>>,
    /// Explicit grid values (a subset of the choices).
    #[serde(default)]
    grid: Option<Vec<Value>>,
}

/// Reads and validates the `search_space` mapping found at `at`, in file order.
pub(crate) fn parse(doc: &Doc, value: Yaml, at: &YamlPath) -> anyhow::Result<Vec<ParamSpec>> {
    let map = match value {
        Yaml::Null => return Ok(Vec::new()),
        Yaml::Mapping(m) => m,
        other => {
            return Err(doc.error(
                at,
                format!(
                    "expected a mapping from dotted config paths to parameters (`agent.lr: {{type: float, low: 1e-5, high: 1e-2}}`), got {}",
                    describe(&other)
                ),
            ))
        }
    };
    let mut names = Vec::new();
    for key in map.keys() {
        names.push(match key {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            other => {
                return Err(doc.error(at, format!("parameter names must be dotted paths, got {}", describe(other))))
            }
        });
    }
    let mut params: Vec<ParamSpec> = Vec::new();
    for (name, value) in names.iter().zip(map.into_iter().map(|(_, v)| v)) {
        let pat = at.key(name.clone());
        if name.split('.').any(str::is_empty) {
            return Err(doc.error(&pat, format!("`{name}` is not a valid dotted path: it has an empty segment")));
        }
        if let Some(outer) = params.iter().find(|p| nested(&p.name, name) || nested(name, &p.name)) {
            return Err(doc.error(
                &pat,
                format!(
                    "`{name}` overlaps parameter `{}`: one path lies inside the other, so one would overwrite the other",
                    outer.name
                ),
            ));
        }
        let (ty, rest) = doc.tagged(value, &pat, "parameter", PARAM_TYPES, false)?;
        let (made, when, grid) = match ty.as_str() {
            "float" => {
                let p: FloatParam = doc.parse(rest, &pat)?;
                (Distribution::float(p.low, p.high, p.log, p.step), p.when, p.grid)
            }
            "int" => {
                let p: IntParam = doc.parse(rest, &pat)?;
                (Distribution::int(p.low, p.high, p.log, p.step), p.when, p.grid)
            }
            _ => {
                let p: CategoricalParam = doc.parse(rest, &pat)?;
                (Distribution::categorical(p.choices), p.when, p.grid)
            }
        };
        let distribution = made.map_err(|e| doc.error(&pat.key(blame(&e)), e))?;
        let when = conditions(doc, &pat, name, when.unwrap_or_default(), &params, &names)?;
        let grid = match grid {
            None => None,
            Some(g) if g.is_empty() => {
                return Err(doc.error(&pat.key("grid"), "`grid` must list at least one value"));
            }
            Some(g) => Some(
                g.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        normalize(&distribution, v).ok_or_else(|| {
                            doc.error(
                                &pat.key("grid").index(i),
                                format!("{} is not a value `{name}` can take; {}", show(v), takes(&distribution)),
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        params.push(ParamSpec { name: name.clone(), distribution, when, grid });
    }
    Ok(params)
}

/// True when path `inner` lies strictly inside path `outer`.
fn nested(outer: &str, inner: &str) -> bool {
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'.'
}

/// The key a distribution error is about, so the message points at it.
fn blame(msg: &str) -> &'static str {
    if msg.contains("log") {
        "log"
    } else if msg.contains("step") {
        "step"
    } else if msg.contains("choices") {
        "choices"
    } else {
        "low"
    }
}

/// Reads the `when:` mapping of parameter `name`: each key must be a parameter declared above
/// it, each value one it can take (a list means any of its items).
fn conditions(
    doc: &Doc,
    pat: &YamlPath,
    name: &str,
    when: IndexMap<String, Value>,
    earlier: &[ParamSpec],
    all: &[String],
) -> anyhow::Result<Vec<Condition>> {
    let mut out = Vec::new();
    for (param, value) in when {
        let cat = pat.key("when").key(param.clone());
        let Some(dep) = earlier.iter().find(|p| p.name == param) else {
            let msg = if param == name {
                format!("`{name}` cannot depend on itself")
            } else if all.contains(&param) {
                format!(
                    "`{name}` depends on `{param}`, which is declared below it; move `{param}` above `{name}` (a condition may only name a parameter declared earlier)"
                )
            } else if earlier.is_empty() {
                format!("`{name}` depends on `{param}`, which is not a parameter of the search space; no parameter is declared above `{name}`")
            } else {
                let above: Vec<&str> = earlier.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "`{name}` depends on `{param}`, which is not a parameter of the search space; parameters declared above it: {}{}",
                    above.join(", "),
                    suggest(&param, &above)
                )
            };
            return Err(doc.error(&cat, msg));
        };
        // A list means "any of these", unless the list is itself a value the parameter takes.
        let (values, listed) = match value {
            Value::Array(items) if normalize(&dep.distribution, &Value::Array(items.clone())).is_none() => {
                (items, true)
            }
            v => (vec![v], false),
        };
        if values.is_empty() {
            return Err(doc.error(&cat, format!("the condition on `{param}` needs at least one value")));
        }
        let mut normal = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let vat = if listed { cat.index(i) } else { cat.clone() };
            normal.push(normalize(&dep.distribution, v).ok_or_else(|| {
                doc.error(&vat, format!("{} is not a value `{param}` can take; {}", show(v), takes(&dep.distribution)))
            })?);
        }
        out.push(Condition { param, values: normal });
    }
    Ok(out)
}

/// `v` in the form the distribution gives back (`1` -> `1.0` for floats), if it can take it.
fn normalize(d: &Distribution, v: &Value) -> Option<Value> {
    let x = d.to_internal(v).ok()?;
    d.contains(x).then(|| d.to_external(x))
}

/// A value for messages: strings bare, everything else as JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// What a distribution can take, for messages.
fn takes(d: &Distribution) -> String {
    match d {
        Distribution::Categorical { choices } => {
            let c: Vec<String> = choices
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            format!("its choices are: {}", c.join(", "))
        }
        Distribution::Int { low, high, step: 1, .. } => format!("it takes whole numbers from {low} to {high}"),
        Distribution::Int { low, high, step, .. } => {
            format!("it takes whole numbers from {low} to {high} in steps of {step}")
        }
        Distribution::Float { low, high, step: None, .. } => format!("it takes numbers from {low} to {high}"),
        Distribution::Float { low, high, step: Some(s), .. } => {
            format!("it takes numbers from {low} to {high} in steps of {s}")
        }
    }
}

/// The distributions of all parameters, by name (what the grid sampler is built on).
pub fn search_space(params: &[ParamSpec]) -> SearchSpace {
    params.iter().map(|p| (p.name.clone(), p.distribution.clone())).collect()
}

/// The values the grid sampler enumerates for each parameter: its `grid` list, else its
/// choices, its int range, or its stepped float range. A parameter without a finite set is an
/// error `(name, message)`.
pub fn grid_values(params: &[ParamSpec]) -> Result<BTreeMap<String, Vec<Value>>, (String, String)> {
    let mut out = BTreeMap::new();
    for p in params {
        let values = match (&p.grid, &p.distribution) {
            (Some(g), _) => g.clone(),
            (None, Distribution::Categorical { choices }) => choices.clone(),
            (None, Distribution::Int { low, high, step, .. }) => {
                let n = ((high - low) / step) as u64 + 1;
                check_count(p, n)?;
                (0..n as i64).map(|k| Value::from(low + k * step)).collect()
            }
            (None, Distribution::Float { low, high, step: Some(s), .. }) => {
                let n = ((high - low) / s + 1e-9).floor() as u64 + 1;
                check_count(p, n)?;
                // Rounded to 12 significant digits so that 0.1 * 3 shows as 0.3.
                (0..n).map(|k| Value::from(format!("{:.11e}", low + k as f64 * s).parse::<f64>().unwrap_or(*low))).collect()
            }
            (None, Distribution::Float { .. }) => {
                return Err((
                    p.name.clone(),
                    "the grid sampler needs a finite set of values for every parameter; give this float a `step` or a `grid: [...]` list".into(),
                ))
            }
        };
        out.insert(p.name.clone(), values);
    }
    Ok(out)
}

fn check_count(p: &ParamSpec, n: u64) -> Result<(), (String, String)> {
    if n > MAX_GRID_VALUES {
        return Err((
            p.name.clone(),
            format!(
                "{n} values are too many for the grid sampler (at most {MAX_GRID_VALUES} per parameter); give a larger `step` or a `grid: [...]` list"
            ),
        ));
    }
    Ok(())
}

/// True when `value`, taken by a parameter with distribution `d`, is one of `values`.
fn matches(d: &Distribution, value: &Value, values: &[Value]) -> bool {
    let Ok(x) = d.to_internal(value) else { return false };
    values.iter().any(|v| d.to_internal(v).is_ok_and(|y| y == x))
}

/// Suggests every active parameter in file order and writes each value into a copy of `base`
/// at its dotted path. A parameter is inactive (not suggested, base value kept) when one of its
/// conditions names a parameter that was inactive or took another value.
pub fn sample_config(params: &[ParamSpec], base: &Value, trial: &mut Trial) -> anyhow::Result<Value> {
    let mut config = base.clone();
    let mut taken: HashMap<&str, (Value, &Distribution)> = HashMap::new();
    for p in params {
        let active = p.when.iter().all(|c| match taken.get(c.param.as_str()) {
            Some((v, d)) => matches(d, v, &c.values),
            None => false,
        });
        if !active {
            continue;
        }
        let v = trial.suggest_deferred(&p.name, &p.distribution)?;
        path::set(&mut config, &p.name, v.clone())
            .map_err(|e| InputError::new(format!("search_space.{}: cannot set it in the base config: {e}", p.name)))?;
        taken.insert(&p.name, (v, &p.distribution));
    }
    // One write for all of them, before the objective runs.
    trial.flush()?;
    Ok(config)
}

/// One trial config a search space can produce at an edge: parameter `param` at `value` (its
/// low or high end, or one of its choices), with the parameters its conditions name set so
/// that it is active, and every other parameter at its base value.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeCase {
    /// Index of the parameter at its edge.
    pub param: usize,
    /// `low`, `high` or `choice`.
    pub edge: &'static str,
    /// `(name, value)` written into the base config, in search-space order (the parameter
    /// itself and what activates it).
    pub assignment: Vec<(String, Value)>,
}

impl EdgeCase {
    /// The base config with this case's values written in.
    pub fn config(&self, base: &Value) -> Result<Value, String> {
        let mut config = base.clone();
        for (name, value) in &self.assignment {
            path::set(&mut config, name, value.clone())?;
        }
        Ok(config)
    }

    /// `agent.gamma = 3.0 (its high end)`, with the activating parameters after it.
    pub fn describe(&self, params: &[ParamSpec]) -> String {
        let me = &params[self.param].name;
        let value =
            |n: &str| self.assignment.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_string()).unwrap_or_default();
        let mut s = match self.edge {
            "choice" => format!("`{me}` = {} (one of its choices)", value(me)),
            edge => format!("`{me}` = {} (its {edge} end)", value(me)),
        };
        let others: Vec<String> =
            self.assignment.iter().filter(|(k, _)| k != me).map(|(k, v)| format!("`{k}` = {v}")).collect();
        if !others.is_empty() {
            s.push_str(&format!(", with {} to make it active", others.join(" and ")));
        }
        s
    }
}

/// The edges of every parameter: low and high of a range (high as snapped to its step), every
/// choice of a categorical. A conditional parameter's cases also set the parameters its
/// conditions name (the first value each condition accepts, recursively), so that it is active
/// as it would be in a trial; a parameter whose conditions cannot all hold at once is skipped.
pub fn edge_cases(params: &[ParamSpec]) -> Vec<EdgeCase> {
    let mut out = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let edges: Vec<(&'static str, Value)> = match &p.distribution {
            Distribution::Categorical { choices } => choices.iter().map(|c| ("choice", c.clone())).collect(),
            d @ Distribution::Float { low, high, .. } => {
                vec![("low", d.to_external(*low)), ("high", d.to_external(*high))]
            }
            d @ Distribution::Int { low, high, .. } => {
                vec![("low", d.to_external(*low as f64)), ("high", d.to_external(*high as f64))]
            }
        };
        let mut needed: BTreeMap<usize, Value> = BTreeMap::new();
        if !activate(params, i, &mut needed) {
            continue;
        }
        for (edge, value) in edges {
            let mut assignment: Vec<(String, Value)> =
                needed.iter().map(|(&j, v)| (params[j].name.clone(), v.clone())).collect();
            assignment.push((p.name.clone(), value));
            // Search-space order: the activating parameters come before the one they enable.
            assignment.sort_by_key(|(n, _)| params.iter().position(|q| &q.name == n));
            out.push(EdgeCase { param: i, edge, assignment });
        }
    }
    out
}

/// Adds to `needed` the values that make parameter `i` active; false when two conditions
/// demand different values of one parameter.
fn activate(params: &[ParamSpec], i: usize, needed: &mut BTreeMap<usize, Value>) -> bool {
    for c in &params[i].when {
        let Some(j) = params.iter().position(|q| q.name == c.param) else { return false };
        let Some(v) = c.values.first() else { return false };
        match needed.get(&j) {
            Some(have) if !c.values.contains(have) => return false,
            Some(_) => {}
            None => {
                needed.insert(j, v.clone());
                if !activate(params, j, needed) {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn load(text: &str) -> anyhow::Result<Vec<ParamSpec>> {
        let doc = Doc::new(Path::new("s.yaml"), text);
        let v = doc.value()?;
        let Yaml::Mapping(mut m) = v else { panic!("test text is a mapping") };
        parse(&doc, m.remove("search_space").unwrap_or(Yaml::Null), &YamlPath::root().key("search_space"))
    }

    fn err(text: &str) -> String {
        let e = load(text).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2, "{e:#}");
        format!("{e:#}")
    }

    const GOOD: &str = "search_space:
  x.0: {type: float, low: -5, high: 5}
  x.1: {type: float, low: 1e-5, high: 1, log: true}
  agent.batch: {type: int, low: 16, high: 256, step: 16}
  agent.net: {type: categorical, choices: [[64, 64], [256, 256]]}
  agent.replay.type: {type: categorical, choices: [uniform, prioritized]}
  agent.replay.alpha: {type: float, low: 0.2, high: 1.0, when: {agent.replay.type: prioritized}}
  agent.small: {type: int, low: 1, high: 3, when: {agent.net: [64, 64], agent.batch: [16, 32]}, grid: [1, 3]}
";

    #[test]
    fn good_space_parses_in_file_order() {
        let p = load(GOOD).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["x.0", "x.1", "agent.batch", "agent.net", "agent.replay.type", "agent.replay.alpha", "agent.small"]
        );
        assert_eq!(p[0].distribution, Distribution::float(-5.0, 5.0, false, None).unwrap());
        assert_eq!(p[1].distribution, Distribution::float(1e-5, 1.0, true, None).unwrap());
        assert_eq!(p[2].distribution, Distribution::int(16, 256, false, 16).unwrap());
        assert_eq!(p[3].distribution, Distribution::categorical(vec![json!([64, 64]), json!([256, 256])]).unwrap());
        assert_eq!(
            p[5].when,
            vec![Condition { param: "agent.replay.type".into(), values: vec![json!("prioritized")] }]
        );
        // A list that is itself a choice is one value; other lists mean "any of".
        assert_eq!(
            p[6].when,
            vec![
                Condition { param: "agent.net".into(), values: vec![json!([64, 64])] },
                Condition { param: "agent.batch".into(), values: vec![json!(16), json!(32)] },
            ]
        );
        assert_eq!(p[6].grid, Some(vec![json!(1), json!(3)]));
    }

    #[test]
    fn grid_values_enumerate_finite_sets() {
        let p = load(GOOD).unwrap();
        let e = grid_values(&p).unwrap_err();
        assert_eq!(e.0, "x.0");
        assert!(e.1.contains("`step`"), "{}", e.1);
        let p = load(
            "search_space:
  a: {type: float, low: 0, high: 0.35, step: 0.1}
  b: {type: int, low: 1, high: 9, step: 4}
  c: {type: categorical, choices: [x, y]}
  d: {type: float, low: 0, high: 1, grid: [0, 0.5]}
",
        )
        .unwrap();
        let g = grid_values(&p).unwrap();
        assert_eq!(g["a"], vec![json!(0.0), json!(0.1), json!(0.2), json!(0.3)]);
        assert_eq!(g["b"], vec![json!(1), json!(5), json!(9)]);
        assert_eq!(g["c"], vec![json!("x"), json!("y")]);
        assert_eq!(g["d"], vec![json!(0.0), json!(0.5)]);
        let p = load("search_space:\n  a: {type: int, low: 0, high: 1000000000}\n").unwrap();
        assert!(grid_values(&p).unwrap_err().1.contains("too many"));
    }

    #[test]
    fn low_above_high() {
        let e = err("search_space:\n  agent.lr: {type: float, low: 1, high: 0}\n");
        assert!(e.starts_with("s.yaml: search_space.agent.lr.low (line 2, column 32): low must be <= high"), "{e}");
    }

    #[test]
    fn log_needs_positive_low() {
        let e = err("search_space:\n  lr:\n    type: float\n    low: 0\n    high: 1\n    log: true\n");
        assert!(e.contains("s.yaml: search_space.lr.log (line 6, column 10)") && e.contains("needs low > 0"), "{e}");
    }

    #[test]
    fn log_with_step() {
        let e = err("search_space:\n  lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}\n");
        assert!(e.contains("search_space.lr.log (line 2") && e.contains("cannot be used together"), "{e}");
    }

    #[test]
    fn unknown_parameter_type() {
        let e = err("search_space:\n  lr: {type: loguniform, low: 0.1, high: 1}\n");
        assert!(e.contains("search_space.lr.type (line 2, column 14): unknown parameter type `loguniform`; expected one of: float, int, categorical"), "{e}");
    }

    #[test]
    fn unknown_parameter_key() {
        let e = err("search_space:\n  lr: {type: float, low: 0.1, high: 1, lg: true}\n");
        assert!(e.contains("search_space.lr.lg (line 2, column 44): unknown key `lg`; expected one of: low, high, log, step, when, grid (did you mean `log`?)"), "{e}");
    }

    #[test]
    fn wrong_type_for_a_bound() {
        let e = err("search_space:\n  n: {type: int, low: 1.5, high: 4}\n");
        assert!(e.contains("search_space.n.low (line 2, column 23): expected a whole number"), "{e}");
    }

    #[test]
    fn condition_on_undeclared_parameter() {
        let e = err("search_space:\n  a: {type: categorical, choices: [u, p]}\n  b: {type: float, low: 0, high: 1, when: {c: p}}\n");
        assert!(
            e.contains("search_space.b.when.c (line 3, column 47)")
                && e.contains("`b` depends on `c`, which is not a parameter"),
            "{e}"
        );
        assert!(e.contains("declared above it: a"), "{e}");
    }

    #[test]
    fn condition_on_later_parameter() {
        let e = err("search_space:\n  b: {type: float, low: 0, high: 1, when: {a: p}}\n  a: {type: categorical, choices: [u, p]}\n");
        assert!(e.contains("search_space.b.when.a") && e.contains("declared below it; move `a` above `b`"), "{e}");
    }

    #[test]
    fn condition_value_not_among_choices() {
        let e = err("search_space:\n  a: {type: categorical, choices: [uniform, prioritized]}\n  b: {type: float, low: 0, high: 1, when: {a: [uniform, prioritised]}}\n");
        assert!(
            e.contains("search_space.b.when.a[1] (line 3, column 57): `prioritised` is not a value `a` can take; its choices are: uniform, prioritized"),
            "{e}"
        );
    }

    #[test]
    fn grid_value_outside_range() {
        let e = err("search_space:\n  n: {type: int, low: 1, high: 4, grid: [1, 7]}\n");
        assert!(e.contains("search_space.n.grid[1] (line 2, column 45): `7` is not a value `n` can take; it takes whole numbers from 1 to 4"), "{e}");
    }

    #[test]
    fn overlapping_paths() {
        let e = err("search_space:\n  agent.net: {type: categorical, choices: [[1], [2]]}\n  agent.net.0: {type: int, low: 1, high: 4}\n");
        assert!(e.contains("search_space.agent.net.0 (line 3") && e.contains("overlaps parameter `agent.net`"), "{e}");
    }

    #[test]
    fn empty_choices_and_bad_space() {
        let e = err("search_space:\n  c: {type: categorical, choices: []}\n");
        assert!(e.contains("search_space.c.choices") && e.contains("at least one"), "{e}");
        let e = err("search_space: [a, b]\n");
        assert!(e.contains("s.yaml: search_space (line 1, column 15): expected a mapping"), "{e}");
        let e = err("search_space:\n  c: {low: 1}\n");
        assert!(e.contains("search_space.c (line 2, column 6): missing required key `type`; expected one of: float, int, categorical"), "{e}");
    }

    #[test]
    fn edge_cases_cover_both_ends_every_choice_and_activate_conditions() {
        let p = load(
            "search_space:
  a: {type: categorical, choices: [u, p]}
  b: {type: float, low: 0.5, high: 3, when: {a: p}}
  c: {type: int, low: 1, high: 9, step: 4, when: {b: 0.5}}
",
        )
        .unwrap();
        let cases = edge_cases(&p);
        let shown: Vec<Vec<(String, Value)>> = cases.iter().map(|c| c.assignment.clone()).collect();
        let pair = |k: &str, v: Value| (k.to_string(), v);
        assert_eq!(
            shown,
            vec![
                vec![pair("a", json!("u"))],
                vec![pair("a", json!("p"))],
                vec![pair("a", json!("p")), pair("b", json!(0.5))],
                vec![pair("a", json!("p")), pair("b", json!(3.0))],
                vec![pair("a", json!("p")), pair("b", json!(0.5)), pair("c", json!(1))],
                vec![pair("a", json!("p")), pair("b", json!(0.5)), pair("c", json!(9))],
            ]
        );
        assert_eq!(cases[3].describe(&p), "`b` = 3.0 (its high end), with `a` = \"p\" to make it active");
        let base = json!({"a": "u", "b": 1.0, "c": 5});
        assert_eq!(cases[5].config(&base).unwrap(), json!({"a": "p", "b": 0.5, "c": 9}));
    }
}
