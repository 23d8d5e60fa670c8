//! What TPE reads from a study's trials, remembered between asks. A finished trial never
//! changes, so its place in the split rankings, its observation row and its rank in every
//! sorted column are computed once; an ask then costs linear passes instead of re-reading every
//! trial's parameter map and re-sorting every column (Optuna caches the intersection search
//! space and finished trials for the same reason).
//!
//! The memo only ever holds what a fresh computation would give: it is keyed on the search
//! space and direction, and checks that every position still holds the trial it saw there
//! (another study resets it).

use std::cmp::Ordering;
use std::sync::Arc;

use super::gamma;
use super::parzen::{is_log, is_numeric, sorted_order, ConstantCache, ParzenEstimator, NO_ID};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState};
use crate::sampler::SearchSpace;

const NONE: u32 = u32::MAX;

/// Above this many new entries, a sorted list is re-sorted instead of inserted into.
const BULK: usize = 16;

/// The observations of one side of the split, as `ParzenEstimator::from_transformed` takes
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Per dimension, the transformed values in trial-number order.
    pub mus: Vec<Vec<f64>>,
    /// Per numeric dimension, observation indices sorted by (value, trial number); empty for
    /// categoricals.
    pub orders: Vec<Vec<u32>>,
    /// Each observation's id for a `ConstantCache` (its history row; `NO_ID` for RUNNING trials).
    pub ids: Vec<u32>,
}

impl Group {
    /// Number of observations.
    pub fn n_observations(&self) -> usize {
        self.mus.first().map_or(0, Vec::len)
    }
}

/// The finished trials of one study, digested for one search space.
#[derive(Debug, Clone)]
pub struct History {
    dims: Vec<(String, Distribution)>,
    log: Vec<bool>,
    direction: Direction,
    /// Per study position: the id of the finished trial taken in from there.
    seen: Vec<Option<i64>>,
    /// Per position: its observation row, or `NONE` (not finished, or lacking a parameter).
    row_of_pos: Vec<u32>,
    /// COMPLETE trials sorted by (loss, number): `(loss, number, position)`.
    complete: Vec<(f64, i64, u32)>,
    /// PRUNED trials sorted by (score, number) (Optuna's `_get_pruned_trial_score`).
    pruned: Vec<((i64, f64), i64, u32)>,
    /// Transformed observations, one column per dimension, indexed by row.
    cols: Vec<Vec<f64>>,
    /// Trial number of each row.
    row_number: Vec<i64>,
    /// Per numeric dimension: rows sorted by (value, trial number); empty for categoricals.
    order: Vec<Vec<u32>>,
    /// Kernel constants of the bad group's estimators, by row.
    pub constants: ConstantCache,
    /// The last bad-group estimator and its rows, to insert into when the next ask only adds
    /// trials to the group (no RUNNING trials in it).
    pub above_model: Option<(ParzenEstimator, Vec<u32>)>,
}

impl History {
    /// An empty history for the parameters `dims` (sorted by name).
    pub fn new(dims: &[(&str, &Distribution)], direction: Direction) -> Self {
        History {
            dims: dims.iter().map(|(n, d)| (n.to_string(), (*d).clone())).collect(),
            log: dims.iter().map(|(_, d)| is_log(d)).collect(),
            direction,
            seen: Vec::new(),
            row_of_pos: Vec::new(),
            complete: Vec::new(),
            pruned: Vec::new(),
            cols: dims.iter().map(|_| Vec::new()).collect(),
            row_number: Vec::new(),
            order: dims.iter().map(|_| Vec::new()).collect(),
            constants: ConstantCache::default(),
            above_model: None,
        }
    }

    /// True when this history was built for `dims` and `direction`.
    pub fn is_for(&self, dims: &[(&str, &Distribution)], direction: Direction) -> bool {
        self.direction == direction
            && self.dims.len() == dims.len()
            && self.dims.iter().zip(dims).all(|((n, d), (m, e))| n == m && d == *e)
    }

    /// Number of COMPLETE and PRUNED trials taken in.
    pub fn n_finished(&self) -> usize {
        self.complete.len() + self.pruned.len()
    }

    /// The distributions, in dimension order.
    pub fn space(&self) -> Vec<&Distribution> {
        self.dims.iter().map(|(_, d)| d).collect()
    }

    fn reset(&mut self) {
        let dims: Vec<(String, Distribution)> = std::mem::take(&mut self.dims);
        let refs: Vec<(&str, &Distribution)> = dims.iter().map(|(n, d)| (n.as_str(), d)).collect();
        *self = History::new(&refs, self.direction);
    }

    /// Takes in the trials that finished since the last call. `trials` is the whole study in
    /// number order.
    pub fn update(&mut self, trials: &[Arc<FrozenTrial>]) {
        if self.seen.len() > trials.len() {
            self.reset();
        }
        self.seen.resize(trials.len(), None);
        self.row_of_pos.resize(trials.len(), NONE);
        let (mut new_complete, mut new_pruned, mut new_rows) = (Vec::new(), Vec::new(), Vec::new());
        let mut row = vec![0.0; self.dims.len()];
        // One pass over the trials (a large study's snapshot does not sit in cache).
        for (p, t) in trials.iter().enumerate() {
            match self.seen[p] {
                Some(id) if id == t.trial_id => continue,
                // Another study, or another snapshot of it: start again.
                Some(_) => {
                    self.reset();
                    return self.update(trials);
                }
                None if !matches!(t.state, TrialState::Complete | TrialState::Pruned) => continue,
                None => {}
            }
            self.seen[p] = Some(t.trial_id);
            if t.state == TrialState::Complete {
                let loss = t.value.map_or(f64::INFINITY, |v| nan_last(self.direction.to_loss(v)));
                new_complete.push((loss, t.number, p as u32));
            } else {
                new_pruned.push((pruned_score(t, self.direction), t.number, p as u32));
            }
            if extract_row(t, &self.dims, &self.log, &mut row) {
                let r = self.row_number.len() as u32;
                self.cols.iter_mut().zip(&row).for_each(|(c, &v)| c.push(v));
                self.row_number.push(t.number);
                self.row_of_pos[p] = r;
                new_rows.push(r);
            }
        }
        merge_sorted(&mut self.complete, new_complete, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        merge_sorted(&mut self.pruned, new_pruned, |a, b| {
            a.0 .0.cmp(&b.0 .0).then(a.0 .1.total_cmp(&b.0 .1)).then(a.1.cmp(&b.1))
        });
        for (d, (_, dist)) in self.dims.iter().enumerate() {
            if !is_numeric(dist) {
                continue;
            }
            let (col, numbers) = (&self.cols[d], &self.row_number);
            merge_sorted(&mut self.order[d], new_rows.clone(), |&a, &b| {
                let (a, b) = (a as usize, b as usize);
                col[a].total_cmp(&col[b]).then(numbers[a].cmp(&numbers[b]))
            });
        }
    }

    /// Splits the trials into the good and bad groups (Optuna's `_split_trials`; see
    /// `split_trials`) and returns their observations. `trials` must be the study `update` saw
    /// last; with the constant liar, RUNNING trials other than `current` join the bad group.
    #[cfg(test)]
    pub fn groups(&self, trials: &[Arc<FrozenTrial>], current: &FrozenTrial, constant_liar: bool) -> (Group, Group) {
        let split = self.split(trials, current, constant_liar);
        (self.below_group(&split), self.above_group(&split))
    }

    /// The split: each group's kernels in number order, as history rows (RUNNING trials, bad,
    /// get rows past the history's).
    pub fn split(&self, trials: &[Arc<FrozenTrial>], current: &FrozenTrial, constant_liar: bool) -> Split {
        let n_pos = trials.len();
        debug_assert_eq!(self.seen.len(), n_pos);
        let mut n_below = gamma(self.n_finished());
        let mut is_below = vec![false; n_pos];
        for &(_, _, p) in self.complete.iter().take(n_below) {
            is_below[p as usize] = true;
        }
        n_below = n_below.saturating_sub(self.complete.len());
        for &(_, _, p) in self.pruned.iter().take(n_below) {
            is_below[p as usize] = true;
        }
        let n_rows = self.row_number.len() as u32;
        let width = self.dims.len();
        let mut split = Split {
            below: Vec::new(),
            above: Vec::with_capacity(n_pos),
            extra: vec![Vec::new(); width],
            extra_numbers: Vec::new(),
            n_rows,
        };
        let mut row = vec![0.0; width];
        for ((t, &r), &below) in trials.iter().zip(&self.row_of_pos).zip(&is_below) {
            if r != NONE {
                if below {
                    split.below.push(r);
                } else {
                    split.above.push(r);
                }
            } else if constant_liar
                && t.state == TrialState::Running
                && t.number != current.number
                && extract_row(t, &self.dims, &self.log, &mut row)
            {
                split.above.push(n_rows + split.extra_numbers.len() as u32);
                split.extra.iter_mut().zip(&row).for_each(|(c, &v)| c.push(v));
                split.extra_numbers.push(t.number);
            }
        }
        split
    }

    /// Dimension `d`'s values of `rows` (of `split`).
    fn gather(&self, split: &Split, rows: &[u32], d: usize) -> Vec<f64> {
        let (col, more, n_rows) = (&self.cols[d], &split.extra[d], split.n_rows);
        if more.is_empty() {
            rows.iter().map(|&r| col[r as usize]).collect()
        } else {
            rows.iter().map(|&r| if r < n_rows { col[r as usize] } else { more[(r - n_rows) as usize] }).collect()
        }
    }

    /// The values of cached `rows`, one column per dimension.
    pub fn values(&self, rows: &[u32]) -> Vec<Vec<f64>> {
        self.cols.iter().map(|col| rows.iter().map(|&r| col[r as usize]).collect()).collect()
    }

    /// The good group's observations (a few dozen: sorted afresh).
    pub fn below_group(&self, split: &Split) -> Group {
        let mus: Vec<Vec<f64>> = (0..self.dims.len()).map(|d| self.gather(split, &split.below, d)).collect();
        let orders = self
            .dims
            .iter()
            .zip(&mus)
            .map(|((_, dist), mu)| if is_numeric(dist) { sorted_order(mu) } else { Vec::new() });
        // Good trials are finished ones, with rows (RUNNING trials only ever count as bad).
        Group { orders: orders.collect(), mus, ids: split.below.clone() }
    }

    /// The bad group's observations, sorted through the history's sorted columns.
    pub fn above_group(&self, split: &Split) -> Group {
        let rows = &split.above;
        let n_rows = split.n_rows;
        let mus: Vec<Vec<f64>> = (0..self.dims.len()).map(|d| self.gather(split, rows, d)).collect();
        let mut kernel_of_row = vec![NONE; self.row_number.len()];
        for (k, &r) in rows.iter().enumerate() {
            if r < n_rows {
                kernel_of_row[r as usize] = k as u32;
            }
        }
        // RUNNING kernels, by (value, number) in each dimension, merged into the cached order.
        let running: Vec<(u32, i64)> = rows
            .iter()
            .enumerate()
            .filter(|(_, &r)| r >= n_rows)
            .map(|(k, &r)| (k as u32, split.extra_numbers[(r - n_rows) as usize]))
            .collect();
        let orders = self.dims.iter().enumerate().map(|(d, (_, dist))| {
            if !is_numeric(dist) {
                return Vec::new();
            }
            let mu = &mus[d];
            let mut out: Vec<u32> = Vec::with_capacity(rows.len());
            if running.is_empty() {
                out.extend(self.order[d].iter().map(|&r| kernel_of_row[r as usize]).filter(|&k| k != NONE));
                return out;
            }
            let mut extras: Vec<(f64, i64, u32)> = running.iter().map(|&(k, n)| (mu[k as usize], n, k)).collect();
            extras.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut next = extras.iter().peekable();
            for &r in &self.order[d] {
                let k = kernel_of_row[r as usize];
                if k == NONE {
                    continue;
                }
                let (v, number) = (mu[k as usize], self.row_number[r as usize]);
                while let Some(&&(ev, en, ek)) = next.peek() {
                    if ev.total_cmp(&v).then(en.cmp(&number)) != Ordering::Less {
                        break;
                    }
                    out.push(ek);
                    next.next();
                }
                out.push(k);
            }
            out.extend(next.map(|&(_, _, k)| k));
            out
        });
        let ids = rows.iter().map(|&r| if r < n_rows { r } else { NO_ID }).collect();
        Group { orders: orders.collect(), mus, ids }
    }
}

/// Each group's kernels in trial-number order, as history rows; rows from `n_rows` on are
/// RUNNING trials' (constant liar), whose values are in `extra`.
#[derive(Debug, Clone)]
pub struct Split {
    /// The good group's rows.
    pub below: Vec<u32>,
    /// The bad group's rows.
    pub above: Vec<u32>,
    extra: Vec<Vec<f64>>,
    /// Trial numbers of the RUNNING trials in the bad group.
    pub extra_numbers: Vec<i64>,
    n_rows: u32,
}

/// Merges `new` into the sorted `v`: binary insertion for a few, a full sort for many.
fn merge_sorted<T>(v: &mut Vec<T>, new: Vec<T>, cmp: impl Fn(&T, &T) -> Ordering) {
    if new.len() > BULK {
        v.extend(new);
        v.sort_by(&cmp);
    } else {
        for x in new {
            let i = v.partition_point(|e| cmp(e, &x) == Ordering::Less);
            v.insert(i, x);
        }
    }
}

/// A loss that sorts NaN after everything.
fn nan_last(l: f64) -> f64 {
    if l.is_nan() {
        f64::INFINITY
    } else {
        l
    }
}

/// Optuna's `_get_pruned_trial_score`: trials that got further first, then by their value at
/// their last step (NaN last); trials without any report after all others.
pub fn pruned_score(t: &FrozenTrial, direction: Direction) -> (i64, f64) {
    match t.intermediate_values.iter().next_back() {
        Some((&step, &v)) if v.is_nan() => (-step, f64::INFINITY),
        Some((&step, &v)) => (-step, direction.to_loss(v)),
        None => (1, 0.0),
    }
}

/// Reads `t`'s values of `dims` (both sorted by name) into `row`, transformed (log where
/// `log`); false when a parameter is missing, or not a usable number (a log-scale value that
/// is not positive can only come from a RUNNING trial of an older range).
pub fn extract_row(t: &FrozenTrial, dims: &[(String, Distribution)], log: &[bool], row: &mut [f64]) -> bool {
    let mut params = t.params.iter();
    for (j, (name, _)) in dims.iter().enumerate() {
        let v = loop {
            match params.next() {
                Some((k, &v)) => match k.as_str().cmp(name) {
                    Ordering::Less => continue,
                    Ordering::Equal => break v,
                    Ordering::Greater => return false,
                },
                None => return false,
            }
        };
        row[j] = if log[j] {
            if v <= 0.0 {
                return false;
            }
            v.ln()
        } else {
            v
        };
        if !row[j].is_finite() {
            return false;
        }
    }
    true
}

/// The intersection search space of a study's finished trials, remembered between asks.
#[derive(Debug, Clone, Default)]
pub struct Intersection {
    /// Per study position: the id of the finished trial taken in from there.
    seen: Vec<Option<i64>>,
    space: Option<Vec<(String, Distribution)>>,
}

impl Intersection {
    /// Takes in the trials that finished since the last call; `trials` is the whole study.
    pub fn update(&mut self, trials: &[Arc<FrozenTrial>]) {
        if self.seen.len() > trials.len() {
            *self = Intersection::default();
        }
        self.seen.resize(trials.len(), None);
        for (p, t) in trials.iter().enumerate() {
            match self.seen[p] {
                Some(id) if id == t.trial_id => continue,
                // Another study, or another snapshot of it: start again.
                Some(_) => {
                    *self = Intersection::default();
                    return self.update(trials);
                }
                None if !matches!(t.state, TrialState::Complete | TrialState::Pruned) => continue,
                None => {}
            }
            self.seen[p] = Some(t.trial_id);
            match &mut self.space {
                None => self.space = Some(t.distributions.iter().map(|(n, d)| (n.clone(), d.clone())).collect()),
                Some(s) if s.is_empty() => {}
                Some(s) => {
                    // Merge pass over two name-sorted lists.
                    let mut other = t.distributions.iter().peekable();
                    s.retain(|(name, dist)| {
                        while other.next_if(|(k, _)| *k < name).is_some() {}
                        matches!(other.peek(), Some((k, d)) if *k == name && *d == dist)
                    });
                }
            }
        }
    }

    /// The parameters every finished trial has with the same distribution.
    pub fn space(&self) -> SearchSpace {
        self.space.iter().flatten().cloned().collect()
    }
}
