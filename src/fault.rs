//! Faults injected on purpose, for tests that drive the real binary: the environment variable
//! `TUNE_FAULT` lists points, comma-separated, each failing once on its N-th hit (1-based):
//!
//! - `storage.<method>:<n>` / `storage.<method>:<n>:locked`: the n-th call of that storage write
//!   method fails (see [`crate::storage::FaultyStorage`]);
//! - `trial.panic:<n>`: the n-th trial this process evaluates panics inside its objective;
//! - `train.panic:<n>`: the n-th training run (`rl` objective, `tune train`) panics on its thread;
//! - `train.diverge:<n>`: the n-th stretch of training (a run, or a PBT segment) fails as a
//!   diverged one does (its loss became NaN).
//!
//! Unset (the normal case), every check is one relaxed load of a `OnceLock`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::storage::FaultKind;

/// The environment variable read once per process.
pub const ENV: &str = "TUNE_FAULT";

/// One injected fault.
#[derive(Debug)]
pub struct Point {
    /// `storage.set_trial_param`, `trial.panic`, ...
    pub name: String,
    /// The hit that fails (1-based).
    pub nth: u64,
    /// For storage points: which error.
    pub kind: FaultKind,
    hits: AtomicU64,
}

/// Parses a `TUNE_FAULT` value.
pub fn parse(spec: &str) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        let nth = parts
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{ENV}: `{item}`: expected POINT:N with N >= 1"))?;
        let kind = match parts.next() {
            None | Some("error") => FaultKind::Error,
            Some("locked") => FaultKind::Locked,
            Some(k) => return Err(format!("{ENV}: `{item}`: unknown fault kind `{k}`; use error or locked")),
        };
        let known = match name.strip_prefix("storage.") {
            Some(method) => crate::storage::faulty::WRITE_METHODS.contains(&method),
            None => matches!(name.as_str(), "trial.panic" | "train.panic" | "train.diverge"),
        };
        if !known {
            return Err(format!(
                "{ENV}: unknown fault point `{name}`; use storage.<write method>, trial.panic, train.panic or train.diverge"
            ));
        }
        out.push(Point { name, nth, kind, hits: AtomicU64::new(0) });
    }
    Ok(out)
}

/// The points of this process's `TUNE_FAULT`; an invalid value is reported by [`check_env`].
pub fn points() -> &'static [Point] {
    static POINTS: OnceLock<Vec<Point>> = OnceLock::new();
    POINTS.get_or_init(|| std::env::var(ENV).ok().and_then(|s| parse(&s).ok()).unwrap_or_default())
}

/// Checks `TUNE_FAULT` (an input error when malformed).
pub fn check_env() -> anyhow::Result<()> {
    if let Ok(s) = std::env::var(ENV) {
        parse(&s).map_err(crate::error::InputError::new)?;
    }
    Ok(())
}

/// Counts a hit of point `name`; true on the hit that must fail.
pub fn hit(name: &str) -> bool {
    points().iter().filter(|p| p.name == name).any(|p| p.hits.fetch_add(1, Ordering::SeqCst) + 1 == p.nth)
}

/// Panics on the failing hit of point `name` (`trial.panic`, `train.panic`).
pub fn maybe_panic(name: &str) {
    if hit(name) {
        panic!("injected fault: {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_refuses_bad_ones() {
        let p = parse("storage.set_trial_param:3, trial.panic:1,storage.record_heartbeat:2:locked").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].name.as_str(), p[0].nth, p[0].kind), ("storage.set_trial_param", 3, FaultKind::Error));
        assert_eq!(p[2].kind, FaultKind::Locked);
        for bad in ["storage.get_trial:1", "trial.panic", "trial.panic:0", "x:1", "trial.panic:1:odd"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
