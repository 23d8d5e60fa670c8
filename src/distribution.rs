//! Parameter distributions with Optuna's validity rules and its internal/external
//! representations: floats and ints are stored as their value, categoricals as the index of the
//! chosen choice (Optuna's `optuna.distributions`).

use serde_json::{json, Value};

/// The space one parameter is drawn from.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// A real number in `[low, high]`, optionally on a log scale or a grid of `step`.
    Float {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (inclusive); snapped down to `low + k*step` when stepped.
        high: f64,
        /// Sample uniformly in log space; requires `low > 0` and no step.
        log: bool,
        /// Grid spacing, if any.
        step: Option<f64>,
    },
    /// An integer in `[low, high]` on a grid of `step`, optionally on a log scale.
    Int {
        /// Lower bound (inclusive).
        low: i64,
        /// Upper bound (inclusive); snapped down to `low + k*step`.
        high: i64,
        /// Sample in log space; requires `low >= 1` and `step == 1`.
        log: bool,
        /// Grid spacing (>= 1).
        step: i64,
    },
    /// One of a list of JSON values (scalars or lists); internally its index.
    Categorical {
        /// The choices, in the order the user gave them.
        choices: Vec<Value>,
    },
}

impl Distribution {
    /// A float distribution, validated and with `high` snapped to the step grid.
    pub fn float(low: f64, high: f64, log: bool, step: Option<f64>) -> Result<Self, String> {
        if !low.is_finite() || !high.is_finite() {
            return Err(format!("low and high must be finite numbers (got low={low}, high={high})"));
        }
        if low > high {
            return Err(format!("low must be <= high (got low={low}, high={high})"));
        }
        if log && step.is_some() {
            return Err("`step` and `log: true` cannot be used together; drop one of them".into());
        }
        if log && low <= 0.0 {
            return Err(format!("`log: true` needs low > 0 (got low={low}); use a positive low"));
        }
        let high = match step {
            Some(s) if !(s > 0.0 && s.is_finite()) => {
                return Err(format!("step must be a positive number (got {s})"));
            }
            Some(s) => snap_high(low, high, s),
            None => high,
        };
        Ok(Distribution::Float { low, high, log, step })
    }

    /// An int distribution, validated and with `high` snapped to the step grid.
    pub fn int(low: i64, high: i64, log: bool, step: i64) -> Result<Self, String> {
        if low > high {
            return Err(format!("low must be <= high (got low={low}, high={high})"));
        }
        if step < 1 {
            return Err(format!("step must be >= 1 (got {step})"));
        }
        if log && step != 1 {
            return Err("`log: true` needs step 1 for an int parameter".into());
        }
        if log && low < 1 {
            return Err(format!("`log: true` needs low >= 1 (got low={low})"));
        }
        let span = high
            .checked_sub(low)
            .ok_or_else(|| format!("the range from low={low} to high={high} is wider than 64-bit integers allow"))?;
        let high = low + span / step * step;
        Ok(Distribution::Int { low, high, log, step })
    }

    /// A categorical distribution over `choices` (at least one).
    pub fn categorical(choices: Vec<Value>) -> Result<Self, String> {
        if choices.is_empty() {
            return Err("`choices` must list at least one value".into());
        }
        if let Some(bad) = choices.iter().find(|c| c.is_object()) {
            return Err(format!("choices must be scalars (null, bool, number, string) or lists, not a mapping: {bad}"));
        }
        Ok(Distribution::Categorical { choices })
    }

    /// True when the distribution has a single possible value.
    pub fn single(&self) -> bool {
        match self {
            Distribution::Float { low, high, step, .. } => match step {
                Some(s) => high - low < *s,
                None => low == high,
            },
            Distribution::Int { low, high, step, .. } => high - low < *step,
            Distribution::Categorical { choices } => choices.len() == 1,
        }
    }

    /// Converts a user-facing value to the internal float (Optuna's `to_internal_repr`).
    pub fn to_internal(&self, value: &Value) -> Result<f64, String> {
        match self {
            Distribution::Float { .. } => value.as_f64().ok_or_else(|| format!("expected a number, got {value}")),
            Distribution::Int { .. } => match value.as_i64() {
                Some(i) => Ok(i as f64),
                None => match value.as_f64() {
                    Some(f) if f.fract() == 0.0 => Ok(f),
                    _ => Err(format!("expected an integer, got {value}")),
                },
            },
            Distribution::Categorical { choices } => choices
                .iter()
                .position(|c| json_eq(c, value))
                .map(|i| i as f64)
                .ok_or_else(|| format!("{value} is not one of the choices {}", Value::from(choices.clone()))),
        }
    }

    /// Converts the internal float to the user-facing value (Optuna's `to_external_repr`).
    pub fn to_external(&self, internal: f64) -> Value {
        match self {
            Distribution::Float { .. } => json!(internal),
            Distribution::Int { .. } => json!(internal.round() as i64),
            Distribution::Categorical { choices } => {
                let i = (internal.round().max(0.0) as usize).min(choices.len() - 1);
                choices[i].clone()
            }
        }
    }

    /// True when the internal value lies in the distribution (on its grid when stepped).
    pub fn contains(&self, internal: f64) -> bool {
        match self {
            Distribution::Float { low, high, step, .. } => {
                if !(internal >= *low && internal <= *high) {
                    return false;
                }
                match step {
                    Some(s) => {
                        let k = (internal - low) / s;
                        (k - k.round()).abs() < 1e-8
                    }
                    None => true,
                }
            }
            Distribution::Int { low, high, step, .. } => {
                internal.fract() == 0.0
                    && internal >= *low as f64
                    && internal <= *high as f64
                    && ((internal as i64 - low) % step == 0)
            }
            Distribution::Categorical { choices } => {
                internal.fract() == 0.0 && internal >= 0.0 && (internal as usize) < choices.len()
            }
        }
    }

    /// Optuna's `distribution_json`: `{"name": <class>, "attributes": {...}}`.
    pub fn to_optuna_json(&self) -> Value {
        match self {
            Distribution::Float { low, high, log, step } => json!({
                "name": "FloatDistribution",
                "attributes": {"step": step, "low": low, "high": high, "log": log}
            }),
            Distribution::Int { low, high, log, step } => json!({
                "name": "IntDistribution",
                "attributes": {"log": log, "step": step, "low": low, "high": high}
            }),
            Distribution::Categorical { choices } => json!({
                "name": "CategoricalDistribution",
                "attributes": {"choices": choices}
            }),
        }
    }

    /// Parses Optuna's `distribution_json`, including the pre-3.0 class names.
    pub fn from_optuna_json(v: &Value) -> Result<Self, String> {
        let name = v["name"].as_str().ok_or("distribution JSON has no name")?;
        let a = &v["attributes"];
        let f = |k: &str| a[k].as_f64().ok_or_else(|| format!("{name} lacks a numeric `{k}`"));
        let i = |k: &str| a[k].as_i64().ok_or_else(|| format!("{name} lacks an integer `{k}`"));
        match name {
            "FloatDistribution" => {
                Distribution::float(f("low")?, f("high")?, a["log"].as_bool().unwrap_or(false), a["step"].as_f64())
            }
            "UniformDistribution" => Distribution::float(f("low")?, f("high")?, false, None),
            "LogUniformDistribution" => Distribution::float(f("low")?, f("high")?, true, None),
            "DiscreteUniformDistribution" => Distribution::float(f("low")?, f("high")?, false, Some(f("q")?)),
            "IntDistribution" => Distribution::int(
                i("low")?,
                i("high")?,
                a["log"].as_bool().unwrap_or(false),
                a["step"].as_i64().unwrap_or(1),
            ),
            "IntUniformDistribution" => {
                Distribution::int(i("low")?, i("high")?, false, a["step"].as_i64().unwrap_or(1))
            }
            "IntLogUniformDistribution" => Distribution::int(i("low")?, i("high")?, true, 1),
            "CategoricalDistribution" => Distribution::categorical(
                a["choices"].as_array().cloned().ok_or("CategoricalDistribution lacks `choices`")?,
            ),
            other => Err(format!("unknown distribution class `{other}`")),
        }
    }

    /// Optuna's compatibility rule (`check_distribution_compatibility`): a parameter keeps one
    /// kind of distribution in a study, a float or int keeps its `log` setting, and a
    /// categorical keeps its choices; ranges and steps may change.
    pub fn compatible(&self, other: &Distribution) -> bool {
        self.incompatibility(other).is_none()
    }

    /// Why `other` cannot replace `self` in a study (see [`Distribution::compatible`]).
    pub fn incompatibility(&self, other: &Distribution) -> Option<&'static str> {
        match (self, other) {
            (Distribution::Float { log: a, .. }, Distribution::Float { log: b, .. })
            | (Distribution::Int { log: a, .. }, Distribution::Int { log: b, .. }) => {
                (a != b).then_some("a parameter keeps its log setting")
            }
            (Distribution::Categorical { choices: a }, Distribution::Categorical { choices: b }) => {
                (a != b).then_some("a categorical parameter keeps its choices")
            }
            _ => Some("a parameter keeps its type (float, int or categorical)"),
        }
    }

    /// The distribution as a study file writes it: `{type: float, low: 0.1, high: 1, log: true}`.
    pub fn describe(&self) -> String {
        match self {
            Distribution::Float { low, high, log, step } => {
                let mut s = format!("{{type: float, low: {low}, high: {high}");
                if *log {
                    s.push_str(", log: true");
                }
                if let Some(st) = step {
                    s.push_str(&format!(", step: {st}"));
                }
                s + "}"
            }
            Distribution::Int { low, high, log, step } => {
                let mut s = format!("{{type: int, low: {low}, high: {high}");
                if *log {
                    s.push_str(", log: true");
                }
                if *step != 1 {
                    s.push_str(&format!(", step: {step}"));
                }
                s + "}"
            }
            Distribution::Categorical { choices } => {
                let c: Vec<String> = choices.iter().map(Value::to_string).collect();
                format!("{{type: categorical, choices: [{}]}}", c.join(", "))
            }
        }
    }
}

/// Snaps `high` down to `low + k*step` in exact decimal arithmetic on the numbers' shortest
/// text forms, as Optuna's `_adjust_discrete_uniform_high` does with `decimal.Decimal(str(x))`.
/// Binary arithmetic would give e.g. 0.8999999999999999 for (0, 1, 0.3), which Optuna then
/// snaps again to 0.6 when it reads the stored distribution.
fn snap_high(low: f64, high: f64, step: f64) -> f64 {
    /// `x` as `mantissa * 10^-scale` from its shortest round-trip text.
    fn decimal(x: f64) -> Option<(i128, u32)> {
        let text = format!("{x}");
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let digits = format!("{int}{frac}");
        Some((digits.parse::<i128>().ok()?, u32::try_from(frac.len()).ok()?))
    }
    let exact = || -> Option<f64> {
        let (l, sl) = decimal(low)?;
        let (h, sh) = decimal(high)?;
        let (st, ss) = decimal(step)?;
        let scale = sl.max(sh).max(ss);
        let up = |m: i128, s: u32| m.checked_mul(10i128.checked_pow(scale - s)?);
        let (l, h, st) = (up(l, sl)?, up(h, sh)?, up(st, ss)?);
        let r = h.checked_sub(l)?;
        if st <= 0 || r % st == 0 {
            return Some(high);
        }
        let snapped = (r / st).checked_mul(st)?.checked_add(l)?;
        let neg = snapped < 0;
        let digits = format!("{:0>width$}", snapped.unsigned_abs(), width = scale as usize + 1);
        let (int, frac) = digits.split_at(digits.len() - scale as usize);
        format!("{}{int}.{frac}", if neg { "-" } else { "" }).parse().ok()
    };
    // Beyond i128's reach (extreme exponents) fall back to binary arithmetic.
    exact().unwrap_or_else(|| low + ((high - low) / step + 1e-9).floor() * step)
}

/// JSON equality where `1` and `1.0` are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validity_rules_follow_optuna() {
        assert!(Distribution::float(1.0, 0.0, false, None).is_err());
        assert!(Distribution::float(0.0, 1.0, true, None).is_err());
        assert!(Distribution::float(1e-5, 1.0, true, Some(0.1)).is_err());
        assert!(Distribution::float(0.0, 1.0, false, Some(0.0)).is_err());
        assert!(Distribution::int(0, 10, true, 1).is_err());
        assert!(Distribution::int(1, 10, true, 2).is_err());
        assert!(Distribution::int(0, 10, false, 0).is_err());
        assert!(Distribution::categorical(vec![]).is_err());
    }

    #[test]
    fn stepped_high_is_snapped_down() {
        assert_eq!(
            Distribution::float(0.0, 1.0, false, Some(0.3)).unwrap(),
            Distribution::Float { low: 0.0, high: 0.9, log: false, step: Some(0.3) }
        );
        assert_eq!(
            Distribution::int(1, 10, false, 4).unwrap(),
            Distribution::Int { low: 1, high: 9, log: false, step: 4 }
        );
        // Values checked against Optuna 5.0's FloatDistribution(low, high, step=step).high.
        let high = |l, h, s| match Distribution::float(l, h, false, Some(s)).unwrap() {
            Distribution::Float { high, .. } => high,
            _ => unreachable!(),
        };
        assert_eq!(high(0.1, 1.0, 0.2), 0.9);
        assert_eq!(high(-1.0, 1.0, 0.7), 0.4);
        assert_eq!(high(0.0, 1.0, 0.25), 1.0);
        assert_eq!(high(1e-3, 0.05, 0.01), 0.041);
    }

    #[test]
    fn categorical_round_trips_lists_and_numbers() {
        let d = Distribution::categorical(vec![json!([64, 64]), json!([256, 256]), json!(1), json!("a")]).unwrap();
        assert_eq!(d.to_internal(&json!([256, 256])).unwrap(), 1.0);
        assert_eq!(d.to_internal(&json!(1.0)).unwrap(), 2.0);
        assert_eq!(d.to_external(3.0), json!("a"));
        assert!(d.to_internal(&json!("b")).is_err());
    }

    #[test]
    fn optuna_json_round_trips() {
        for d in [
            Distribution::float(1e-5, 1.0, true, None).unwrap(),
            Distribution::float(0.0, 1.0, false, Some(0.25)).unwrap(),
            Distribution::int(1, 1024, true, 1).unwrap(),
            Distribution::int(0, 10, false, 2).unwrap(),
            Distribution::categorical(vec![json!("adam"), json!(null), json!(true)]).unwrap(),
        ] {
            assert_eq!(Distribution::from_optuna_json(&d.to_optuna_json()).unwrap(), d);
        }
    }

    proptest! {
        #[test]
        fn int_external_internal_round_trip(low in -1000i64..1000, span in 0i64..1000, step in 1i64..10, k in 0i64..1000) {
            let d = Distribution::int(low, low + span, false, step).unwrap();
            let v = low + (k % (span / step + 1)) * step;
            let x = d.to_internal(&json!(v)).unwrap();
            prop_assert!(d.contains(x));
            prop_assert_eq!(d.to_external(x), json!(v));
        }

        #[test]
        fn float_contains_its_bounds(low in -1e6f64..1e6, span in 0f64..1e6) {
            let d = Distribution::float(low, low + span, false, None).unwrap();
            prop_assert!(d.contains(low) && d.contains(low + span));
            prop_assert!(!d.contains(low - 1.0));
        }
    }
}
