//! Segment trees for proportional prioritized replay (Schaul et al. 2016, "Prioritized Experience
//! Replay", Appendix B.2.1): a sum tree samples leaf `i` with probability `p_i / sum_k p_k` in
//! `O(log N)`, and a min tree gives `min_k p_k`, hence the largest importance weight, in `O(1)`.
//!
//! The trees are 8-ary rather than binary: the 8 children of a node fill one 64-byte cache line,
//! so a descent or an update over 100k leaves touches 6 lines instead of 17 scattered nodes (the
//! trees outgrow L2, so cache misses, not arithmetic, set the cost). Parents are recomputed from
//! their children on every update rather than adjusted by a difference, so floating-point error
//! never accumulates over millions of updates.

/// Children per node: one cache line of `f64`.
const B: usize = 8;

/// Eight sibling values, aligned to a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Line([f64; B]);

/// An implicit 8-ary tree stored level by level, root line first; the children of value `j` of
/// level `l` are line `j` of level `l + 1`. Values past the capacity (padding of the last line of
/// each level) stay at the fill value, so they are never drawn and never the minimum.
#[derive(Clone, Debug)]
struct Tree {
    levels: Vec<Vec<Line>>,
}

impl Tree {
    fn new(capacity: usize, fill: f64) -> Self {
        // Bottom-up, each level only as long as needed: a level of `n` values is `ceil(n / 8)`
        // lines, whose totals are the next level's values, up to a single root line.
        let mut levels = vec![vec![Line([fill; B]); capacity.max(1).div_ceil(B)]];
        while levels[0].len() > 1 {
            levels.insert(0, vec![Line([fill; B]); levels[0].len().div_ceil(B)]);
        }
        Tree { levels }
    }

    fn capacity(&self) -> usize {
        self.levels.last().map_or(0, |l| l.len() * B)
    }

    fn get(&self, i: usize) -> f64 {
        self.levels[self.levels.len() - 1][i / B].0[i % B]
    }

    fn set(&mut self, i: usize, value: f64, reduce: fn(&[f64; B]) -> f64) {
        let last = self.levels.len() - 1;
        self.levels[last][i / B].0[i % B] = value;
        let mut j = i / B;
        for l in (0..last).rev() {
            let v = reduce(&self.levels[l + 1][j].0);
            self.levels[l][j / B].0[j % B] = v;
            j /= B;
        }
    }

    /// Sets `leaves[k]` to `values[k]`, then recomputes their ancestors level by level, so the
    /// cache misses of independent leaves overlap.
    fn set_many(&mut self, leaves: &[usize], values: &[f64], reduce: fn(&[f64; B]) -> f64) {
        assert_eq!(leaves.len(), values.len());
        let last = self.levels.len() - 1;
        for (&i, &v) in leaves.iter().zip(values) {
            self.levels[last][i / B].0[i % B] = v;
        }
        for l in (0..last).rev() {
            // Value j of level l sums line j of level l + 1: the leaf's ancestor `last - l` up.
            let shift = 3 * (last - l) as u32;
            // The line of level l - 1 that this pass's results feed, fetched ahead.
            let above = if l > 0 { self.levels[l - 1].as_ptr() } else { std::ptr::null() };
            for &i in leaves {
                let j = i >> shift;
                let v = reduce(&self.levels[l + 1][j].0);
                self.levels[l][j / B].0[j % B] = v;
                if !above.is_null() {
                    prefetch(above.wrapping_add(j >> 6));
                }
            }
        }
    }

    /// Starts loading the lines on the path from leaf `i` to the root.
    fn prefetch_path(&self, i: usize) {
        let last = self.levels.len() - 1;
        for (l, level) in self.levels.iter().enumerate() {
            prefetch(level.as_ptr().wrapping_add(i >> (3 * (last - l + 1))));
        }
    }

    fn root(&self, reduce: fn(&[f64; B]) -> f64) -> f64 {
        reduce(&self.levels[0][0].0)
    }
}

fn sum(line: &[f64; B]) -> f64 {
    // Pairwise, in a fixed order: deterministic and vectorizable.
    ((line[0] + line[1]) + (line[2] + line[3])) + ((line[4] + line[5]) + (line[6] + line[7]))
}

fn min(line: &[f64; B]) -> f64 {
    // Pairwise, like `sum`; priorities are never NaN, so a plain comparison suffices.
    let m = |a: f64, b: f64| if b < a { b } else { a };
    m(m(m(line[0], line[1]), m(line[2], line[3])), m(m(line[4], line[5]), m(line[6], line[7])))
}

/// Sums of priorities over a fixed number of leaves; unused leaves hold 0.
#[derive(Clone, Debug)]
pub struct SumTree {
    tree: Tree,
}

impl SumTree {
    /// A tree of at least `capacity` leaves, all 0.
    pub fn new(capacity: usize) -> Self {
        SumTree { tree: Tree::new(capacity, 0.0) }
    }

    /// Number of leaves that can hold a priority (`capacity` rounded up to a multiple of 8).
    pub fn capacity(&self) -> usize {
        self.tree.capacity()
    }

    /// Sets leaf `i` to `value` (non-negative) and updates its ancestors.
    pub fn set(&mut self, i: usize, value: f64) {
        debug_assert!(value >= 0.0, "priorities are non-negative");
        self.tree.set(i, value, sum);
    }

    /// [`set`](Self::set) for each `(leaves[k], values[k])`, faster for a batch.
    pub fn set_many(&mut self, leaves: &[usize], values: &[f64]) {
        debug_assert!(values.iter().all(|&v| v >= 0.0), "priorities are non-negative");
        self.tree.set_many(leaves, values, sum);
    }

    /// The value of leaf `i`.
    pub fn get(&self, i: usize) -> f64 {
        self.tree.get(i)
    }

    /// The sum over all leaves.
    pub fn total(&self) -> f64 {
        self.tree.root(sum)
    }

    /// The leaf `i` such that the prefix sum before `i` is `<= mass <` the prefix sum through `i`.
    ///
    /// Always returns a leaf with a positive value when `total() > 0`, even when rounding puts
    /// `mass` at or past `total()`: the descent then takes the last non-empty child.
    pub fn find_prefix_sum(&self, mut mass: f64) -> usize {
        let mut j = 0;
        for level in &self.tree.levels {
            j = j * B + descend(&level[j].0, &mut mass);
        }
        j
    }

    /// [`find_prefix_sum`](Self::find_prefix_sum) for every mass in `masses`, written to `leaves`
    /// (`masses` is consumed as scratch). The descents advance level by level in lockstep, so the
    /// cache misses of independent draws overlap instead of queueing one after another.
    pub fn find_prefix_sums(&self, masses: &mut [f64], leaves: &mut [usize]) {
        assert_eq!(masses.len(), leaves.len());
        leaves.fill(0);
        let levels = &self.tree.levels;
        for (l, level) in levels.iter().enumerate() {
            // While the other draws descend, fetch the line this draw reads at the next level.
            let below = levels.get(l + 1).map_or(std::ptr::null(), |b| b.as_ptr());
            for (j, mass) in leaves.iter_mut().zip(masses.iter_mut()) {
                *j = *j * B + descend(&level[*j].0, mass);
                if !below.is_null() {
                    prefetch(below.wrapping_add(*j));
                }
            }
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: no effect on results, never
/// faults, a no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction reads nothing into the program and cannot fault, whatever
    // the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The child of a line that holds `mass` (the first whose running sum exceeds it), and `mass`
/// made relative to that child. Branch-free in the common case: the draws are random, so the
/// branches of a scan would mispredict about every other level. The running sums are formed
/// pairwise, three additions deep instead of eight, and the last one is exactly the line's
/// [`sum`], the value its parent holds; they never decrease, so counting those `<= mass` finds
/// the child.
#[inline]
fn descend(line: &[f64; B], mass: &mut f64) -> usize {
    let l = line;
    let (s01, s23, s45, s67) = (l[0] + l[1], l[2] + l[3], l[4] + l[5], l[6] + l[7]);
    let s03 = s01 + s23;
    let running = [l[0], s01, s01 + l[2], s03, s03 + l[4], s03 + s45, s03 + (s45 + l[6]), s03 + (s45 + s67)];
    let k = running.iter().map(|&r| (r <= *mass) as usize).sum::<usize>();
    if k < B && line[k] > 0.0 {
        *mass -= if k == 0 { 0.0 } else { running[k - 1] };
        return k;
    }
    // Rounding put `mass` at or past the line's total: take the last non-empty child, and its
    // whole mass, so that the descent below does the same.
    let k = line.iter().rposition(|&v| v > 0.0).unwrap_or(0);
    *mass = line[k];
    k
}

/// Minimum of priorities over a fixed number of leaves; unused leaves hold `+inf`.
#[derive(Clone, Debug)]
pub struct MinTree {
    tree: Tree,
}

impl MinTree {
    /// A tree of at least `capacity` leaves, all `+inf`.
    pub fn new(capacity: usize) -> Self {
        MinTree { tree: Tree::new(capacity, f64::INFINITY) }
    }

    /// Sets leaf `i` to `value` (`+inf` to remove it) and updates its ancestors.
    pub fn set(&mut self, i: usize, value: f64) {
        self.tree.set(i, value, min);
    }

    /// [`set`](Self::set) for each `(leaves[k], values[k])`, faster for a batch.
    pub fn set_many(&mut self, leaves: &[usize], values: &[f64]) {
        self.tree.set_many(leaves, values, min);
    }

    /// Starts loading what [`set_many`](Self::set_many) will touch for leaf `i`, so that the
    /// misses overlap with other work (a hint; no effect on results).
    pub fn prefetch(&self, i: usize) {
        self.tree.prefetch_path(i);
    }

    /// The minimum over all leaves (`+inf` when empty).
    pub fn min(&self) -> f64 {
        self.tree.root(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn sums_and_updates() {
        let mut t = SumTree::new(5);
        assert_eq!(t.capacity(), 8);
        for (i, p) in [1.0, 2.0, 3.0, 4.0, 5.0].into_iter().enumerate() {
            t.set(i, p);
        }
        assert_eq!(t.total(), 15.0);
        t.set(2, 0.5);
        assert_eq!(t.total(), 12.5);
        assert_eq!(t.get(2), 0.5);
        t.set(4, 0.0);
        assert_eq!(t.total(), 7.5);
        // Prefix sums: [0,1) -> 0, [1,3) -> 1, [3,3.5) -> 2, [3.5,7.5) -> 3.
        assert_eq!(t.find_prefix_sum(0.0), 0);
        assert_eq!(t.find_prefix_sum(0.99), 0);
        assert_eq!(t.find_prefix_sum(1.0), 1);
        assert_eq!(t.find_prefix_sum(3.2), 2);
        assert_eq!(t.find_prefix_sum(3.5), 3);
        assert_eq!(t.find_prefix_sum(7.49), 3);
        // Rounding past the total still lands on a non-empty leaf.
        assert_eq!(t.find_prefix_sum(7.5), 3);
        assert_eq!(t.find_prefix_sum(100.0), 3);
    }

    #[test]
    fn deep_tree_matches_a_linear_scan() {
        // 1000 leaves: 4 levels of 8-ary lines, with zeros, updates and removals.
        let mut rng = StdRng::seed_from_u64(5);
        let mut t = SumTree::new(1000);
        let mut m = MinTree::new(1000);
        assert_eq!(t.capacity(), 1000);
        let mut p = vec![0.0f64; 1000];
        for round in 0..3 {
            for (i, v) in p.iter_mut().enumerate() {
                *v = if (i + round) % 7 == 0 { 0.0 } else { rng.random::<f64>() };
                t.set(i, *v);
                m.set(i, if *v > 0.0 { *v } else { f64::INFINITY });
            }
            let total: f64 = p.iter().sum();
            assert!((t.total() - total).abs() < 1e-9);
            assert_eq!(m.min(), p.iter().copied().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min));
            for _ in 0..1000 {
                let mass = rng.random::<f64>() * total;
                let mut acc = 0.0;
                let expected = p.iter().position(|&v| {
                    acc += v;
                    mass < acc
                });
                let got = t.find_prefix_sum(mass);
                assert!(p[got] > 0.0);
                // Rounding differences between the tree's and the scan's sums may move a
                // boundary draw by one non-empty leaf at most.
                if let Some(e) = expected {
                    assert!(got == e || (mass - acc).abs() < 1e-9, "mass {mass}: {got} vs {e}");
                }
            }
            assert!(p[t.find_prefix_sum(total * 2.0)] > 0.0);
            let mut masses: Vec<f64> = (0..100).map(|k| k as f64 / 100.0 * total).collect();
            let one_by_one: Vec<usize> = masses.iter().map(|&m| t.find_prefix_sum(m)).collect();
            let mut leaves = vec![0; 100];
            t.find_prefix_sums(&mut masses, &mut leaves);
            assert_eq!(leaves, one_by_one);
            // Batched updates agree with single ones.
            let (ks, vs): (Vec<usize>, Vec<f64>) = (0..50).map(|k| (k * 19, k as f64 + 1.0)).unzip();
            let mut single = t.clone();
            for (&k, &v) in ks.iter().zip(&vs) {
                single.set(k, v);
                p[k] = v;
            }
            t.set_many(&ks, &vs);
            m.set_many(&ks, &vs);
            assert_eq!(t.total(), single.total());
            assert_eq!(m.min(), p.iter().copied().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min));
        }
    }

    #[test]
    fn min_tree_tracks_minimum() {
        let mut t = MinTree::new(3);
        assert_eq!(t.min(), f64::INFINITY);
        t.set(0, 3.0);
        t.set(1, 2.0);
        t.set(2, 5.0);
        assert_eq!(t.min(), 2.0);
        t.set(1, f64::INFINITY);
        assert_eq!(t.min(), 3.0);
    }

    #[test]
    fn sampling_proportions() {
        let p = [1.0, 0.0, 4.0, 2.0, 3.0, 0.0, 10.0];
        let mut t = SumTree::new(p.len());
        for (i, &v) in p.iter().enumerate() {
            t.set(i, v);
        }
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = [0usize; 7];
        for _ in 0..draws {
            counts[t.find_prefix_sum(rng.random::<f64>() * t.total())] += 1;
        }
        // Pearson chi-square over the 5 non-empty leaves (4 degrees of freedom): the 99.9%
        // quantile is 18.5, so a correct tree fails this test once in a thousand seeds.
        let total: f64 = p.iter().sum();
        let mut chi2 = 0.0;
        for (i, &v) in p.iter().enumerate() {
            if v == 0.0 {
                assert_eq!(counts[i], 0, "empty leaf {i} drawn");
                continue;
            }
            let expected = draws as f64 * v / total;
            chi2 += (counts[i] as f64 - expected).powi(2) / expected;
        }
        assert!(chi2 < 18.5, "chi2 = {chi2}, counts = {counts:?}");
    }
}
