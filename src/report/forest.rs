//! A random forest of CART regression trees, grown the way scikit-learn's
//! `RandomForestRegressor` grows them with the settings Optuna's fANOVA uses: bootstrap samples
//! (as per-sample counts), every feature considered at each node in a random order, best split
//! by squared error, thresholds halfway between neighbouring values.
//!
//! Breiman, "Random Forests", Machine Learning 45 (2001); the split rule is CART's variance
//! reduction (Breiman et al. 1984), maximising `S_L^2 / W_L + S_R^2 / W_R` over the weighted
//! sums `S` and weights `W` of the two children.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Two feature values closer than this are one value (scikit-learn's `FEATURE_THRESHOLD`).
const FEATURE_THRESHOLD: f64 = 1e-7;

/// How the trees of a forest are grown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForestConfig {
    /// Number of trees.
    pub n_trees: usize,
    /// Depth at which a node becomes a leaf whatever its samples.
    pub max_depth: usize,
    /// A node with fewer distinct samples is a leaf.
    pub min_samples_split: usize,
    /// Each child of a split keeps at least this many distinct samples.
    pub min_samples_leaf: usize,
    /// Seed of the bootstrap draws and feature orders; tree `i` uses its own stream.
    pub seed: u64,
}

impl Default for ForestConfig {
    /// Optuna's `FanovaImportanceEvaluator` defaults: 64 trees of depth up to 64.
    fn default() -> Self {
        ForestConfig { n_trees: 64, max_depth: 64, min_samples_split: 2, min_samples_leaf: 1, seed: 0 }
    }
}

/// One node of a fitted tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A terminal node predicting the weighted mean of its samples.
    Leaf {
        /// The prediction.
        value: f64,
    },
    /// Samples with `x[feature] <= threshold` go left, the others right.
    Split {
        /// The column tested.
        feature: usize,
        /// The split point.
        threshold: f64,
        /// Index of the left child.
        left: usize,
        /// Index of the right child.
        right: usize,
    },
}

/// A fitted regression tree. Nodes are in depth-first order (left subtree first), so every
/// child comes after its parent and node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// The nodes, root first.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Grows a tree on the rows `x` with targets `y` and per-row weights (bootstrap counts; rows
    /// of weight 0 are left out). Features are rounded to `f32` first, as scikit-learn stores
    /// them, so that thresholds (midpoints in `f64` of `f32` values) are the ones Optuna gets.
    pub fn fit(x: &[Vec<f64>], y: &[f64], weights: &[f64], config: &ForestConfig, rng: &mut StdRng) -> Tree {
        assert_eq!(x.len(), y.len(), "one target per row");
        assert_eq!(x.len(), weights.len(), "one weight per row");
        let x: Vec<Vec<f64>> = x.iter().map(|r| r.iter().map(|&v| v as f32 as f64).collect()).collect();
        let n_features = x.first().map_or(0, Vec::len);
        let mut samples: Vec<usize> = (0..x.len()).filter(|&i| weights[i] > 0.0).collect();
        let mut grower = Grower { x: &x, y, weights, config, n_features, nodes: Vec::new() };
        grower.grow(&mut samples, 0, rng);
        Tree { nodes: grower.nodes }
    }

    /// The tree's prediction for one row.
    #[cfg(test)]
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut i = 0;
        loop {
            match self.nodes[i] {
                Node::Leaf { value } => return value,
                Node::Split { feature, threshold, left, right } => {
                    i = if row[feature] <= threshold { left } else { right };
                }
            }
        }
    }
}

/// Fits `config.n_trees` trees, each on its own bootstrap sample of the rows. Deterministic for
/// a given seed (whatever the number of threads).
pub fn fit_forest(x: &[Vec<f64>], y: &[f64], config: &ForestConfig) -> Vec<Tree> {
    (0..config.n_trees)
        .into_par_iter()
        .map(|t| {
            let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(t as u64));
            let mut counts = vec![0.0; x.len()];
            for _ in 0..x.len() {
                counts[rng.random_range(0..x.len())] += 1.0;
            }
            Tree::fit(x, y, &counts, config, &mut rng)
        })
        .collect()
}

/// The best split found at a node.
struct Split {
    feature: usize,
    threshold: f64,
    proxy: f64,
}

struct Grower<'a> {
    x: &'a [Vec<f64>],
    y: &'a [f64],
    weights: &'a [f64],
    config: &'a ForestConfig,
    n_features: usize,
    nodes: Vec<Node>,
}

impl Grower<'_> {
    /// Adds the node for `samples` and its subtree; returns its index.
    fn grow(&mut self, samples: &mut [usize], depth: usize, rng: &mut StdRng) -> usize {
        let (mut w, mut s, mut s2) = (0.0, 0.0, 0.0);
        for &i in samples.iter() {
            let (wi, yi) = (self.weights[i], self.y[i]);
            w += wi;
            s += wi * yi;
            s2 += wi * yi * yi;
        }
        let mean = s / w;
        let impurity = s2 / w - mean * mean;
        let id = self.nodes.len();
        self.nodes.push(Node::Leaf { value: mean });
        let c = self.config;
        if depth >= c.max_depth
            || samples.len() < c.min_samples_split
            || samples.len() < 2 * c.min_samples_leaf
            || impurity <= f64::EPSILON
        {
            return id;
        }
        let Some(split) = self.best_split(samples, rng) else {
            return id;
        };
        let n_left = partition(samples, |i| self.x[i][split.feature] <= split.threshold);
        let (l, r) = samples.split_at_mut(n_left);
        let left = self.grow(l, depth + 1, rng);
        let right = self.grow(r, depth + 1, rng);
        self.nodes[id] = Node::Split { feature: split.feature, threshold: split.threshold, left, right };
        id
    }

    /// The split of `samples` with the largest variance reduction, features visited in a random
    /// order (ties go to the first visited, as in scikit-learn).
    fn best_split(&self, samples: &[usize], rng: &mut StdRng) -> Option<Split> {
        let mut features: Vec<usize> = (0..self.n_features).collect();
        features.shuffle(rng);
        let (total_w, total_s) =
            samples.iter().fold((0.0, 0.0), |(w, s), &i| (w + self.weights[i], s + self.weights[i] * self.y[i]));
        let min_leaf = self.config.min_samples_leaf;
        let mut order = samples.to_vec();
        let mut best: Option<Split> = None;
        for f in features {
            order.sort_by(|&a, &b| self.x[a][f].total_cmp(&self.x[b][f]));
            let value = |k: usize| self.x[order[k]][f];
            let n = order.len();
            if value(n - 1) <= value(0) + FEATURE_THRESHOLD {
                continue;
            }
            let (mut wl, mut sl) = (0.0, 0.0);
            for p in 1..n {
                let i = order[p - 1];
                wl += self.weights[i];
                sl += self.weights[i] * self.y[i];
                if value(p) <= value(p - 1) + FEATURE_THRESHOLD || p < min_leaf || n - p < min_leaf {
                    continue;
                }
                let (wr, sr) = (total_w - wl, total_s - sl);
                let proxy = sl * sl / wl + sr * sr / wr;
                if best.as_ref().is_none_or(|b| proxy > b.proxy) {
                    let (lo, hi) = (value(p - 1), value(p));
                    let mut threshold = lo / 2.0 + hi / 2.0;
                    if threshold == hi || !threshold.is_finite() {
                        threshold = lo;
                    }
                    best = Some(Split { feature: f, threshold, proxy });
                }
            }
        }
        best
    }
}

/// Moves the elements satisfying `left` to the front; returns how many there are.
fn partition(v: &mut [usize], left: impl Fn(usize) -> bool) -> usize {
    let mut k = 0;
    for j in 0..v.len() {
        if left(v[j]) {
            v.swap(k, j);
            k += 1;
        }
    }
    k
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tree from the node list of tests/fixtures/fanova/reference.json.
    pub(in crate::report) fn tree_from_json(nodes: &serde_json::Value) -> Tree {
        let nodes = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| match n.get("value") {
                Some(v) => Node::Leaf { value: v.as_f64().unwrap() },
                None => Node::Split {
                    feature: n["feature"].as_u64().unwrap() as usize,
                    threshold: n["threshold"].as_f64().unwrap(),
                    left: n["left"].as_u64().unwrap() as usize,
                    right: n["right"].as_u64().unwrap() as usize,
                },
            })
            .collect();
        Tree { nodes }
    }

    /// scikit-learn's `DecisionTreeRegressor` with bootstrap counts as sample weights (what its
    /// random forest does per tree), from scripts/fanova_fixtures.py. Where several features
    /// split a node's samples the same way (small nodes), the choice is random in both, so there
    /// only the partition must agree.
    #[test]
    fn grows_the_trees_scikit_learn_grows() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/fanova/reference.json")).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let x: Vec<Vec<f64>> = serde_json::from_value(case["x"].clone()).unwrap();
            let x32: Vec<Vec<f64>> = x.iter().map(|r| r.iter().map(|&v| v as f32 as f64).collect()).collect();
            let y: Vec<f64> = serde_json::from_value(case["y"].clone()).unwrap();
            for t in case["trees"].as_array().unwrap() {
                let w: Vec<f64> = serde_json::from_value(t["weights"].clone()).unwrap();
                let ours = Tree::fit(&x, &y, &w, &ForestConfig::default(), &mut StdRng::seed_from_u64(0));
                let theirs = tree_from_json(&t["nodes"]);
                assert_eq!(ours.nodes.len(), theirs.nodes.len(), "tune {ours:?}\nsklearn {theirs:?}");
                // Walk both trees together: (our node, their node, the rows that reach them).
                let mut stack = vec![(0, 0, (0..x.len()).filter(|&i| w[i] > 0.0).collect::<Vec<usize>>())];
                let mut ties = 0;
                while let Some((i, j, rows)) = stack.pop() {
                    match (&ours.nodes[i], &theirs.nodes[j]) {
                        (Node::Leaf { value: u }, Node::Leaf { value: v }) => {
                            assert!((u - v).abs() <= 1e-9 * v.abs().max(1.0), "node {i}: tune {u} vs sklearn {v}")
                        }
                        (
                            &Node::Split { feature: f, threshold: a, left: l, right: r },
                            &Node::Split { feature: g, threshold: b, left: m, right: q },
                        ) => {
                            let (left, right): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&k| x32[k][f] <= a);
                            let (their_left, their_right): (Vec<usize>, Vec<usize>) =
                                rows.iter().partition(|&&k| x32[k][g] <= b);
                            if f == g {
                                // serde_json's default float parsing may be one ulp off.
                                assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "node {i}: threshold {a} vs {b}");
                            } else {
                                ties += 1;
                            }
                            if left == their_left {
                                stack.push((l, m, left));
                                stack.push((r, q, right));
                            } else {
                                // A tie between features may also swap the sides.
                                assert!(
                                    f != g && left == their_right,
                                    "node {i}: tune x{f} <= {a}, sklearn x{g} <= {b}"
                                );
                                stack.push((l, q, left));
                                stack.push((r, m, right));
                            }
                        }
                        (a, b) => panic!("node {i}: tune {a:?} vs sklearn {b:?}"),
                    }
                }
                assert!(ties <= ours.nodes.len() / 4, "{ties} ties: tune {ours:?}\nsklearn {theirs:?}");
            }
        }
    }

    fn cfg() -> ForestConfig {
        ForestConfig { n_trees: 8, ..ForestConfig::default() }
    }

    #[test]
    fn a_step_function_is_split_halfway_between_the_samples() {
        let x: Vec<Vec<f64>> = [0.0, 1.0, 2.0, 3.0].iter().map(|&v| vec![v]).collect();
        let y = [5.0, 5.0, 9.0, 9.0];
        let tree = Tree::fit(&x, &y, &[1.0; 4], &cfg(), &mut StdRng::seed_from_u64(0));
        assert_eq!(
            tree.nodes,
            vec![
                Node::Split { feature: 0, threshold: 1.5, left: 1, right: 2 },
                Node::Leaf { value: 5.0 },
                Node::Leaf { value: 9.0 },
            ]
        );
        assert_eq!(tree.predict(&[1.49]), 5.0);
        assert_eq!(tree.predict(&[1.51]), 9.0);
    }

    #[test]
    fn a_fully_grown_tree_fits_distinct_rows_exactly_and_children_follow_parents() {
        let x: Vec<Vec<f64>> = (0..20).map(|i| vec![(i * 7 % 20) as f64, (i % 3) as f64]).collect();
        let y: Vec<f64> = x.iter().map(|r| r[0] * r[0] - 3.0 * r[1]).collect();
        let tree = Tree::fit(&x, &y, &[1.0; 20], &cfg(), &mut StdRng::seed_from_u64(1));
        for (r, v) in x.iter().zip(&y) {
            assert_eq!(tree.predict(r), *v);
        }
        for (i, n) in tree.nodes.iter().enumerate() {
            if let Node::Split { left, right, .. } = n {
                assert!(*left > i && *right > i);
            }
        }
    }

    #[test]
    fn weights_are_bootstrap_counts_and_zero_weight_rows_are_left_out() {
        let x: Vec<Vec<f64>> = [0.0, 1.0, 2.0].iter().map(|&v| vec![v]).collect();
        let y = [1.0, 2.0, 100.0];
        // Row 2 is not in the sample: one leaf would predict (2*1 + 1*2) / 3.
        let tree =
            Tree::fit(&x, &y, &[2.0, 1.0, 0.0], &ForestConfig { max_depth: 0, ..cfg() }, &mut StdRng::seed_from_u64(0));
        assert_eq!(tree.nodes, vec![Node::Leaf { value: 4.0 / 3.0 }]);
    }

    #[test]
    fn constant_targets_and_constant_features_give_a_leaf() {
        let x: Vec<Vec<f64>> = (0..5).map(|i| vec![i as f64]).collect();
        let tree = Tree::fit(&x, &[3.0; 5], &[1.0; 5], &cfg(), &mut StdRng::seed_from_u64(0));
        assert_eq!(tree.nodes, vec![Node::Leaf { value: 3.0 }]);
        let x = vec![vec![1.0]; 5];
        let tree = Tree::fit(&x, &[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0; 5], &cfg(), &mut StdRng::seed_from_u64(0));
        assert_eq!(tree.nodes, vec![Node::Leaf { value: 3.0 }]);
    }

    #[test]
    fn the_forest_is_deterministic_and_its_trees_differ() {
        let x: Vec<Vec<f64>> = (0..30).map(|i| vec![(i as f64 * 0.37).sin(), (i as f64 * 1.3).cos()]).collect();
        let y: Vec<f64> = x.iter().map(|r| 3.0 * r[0] + r[1]).collect();
        let a = fit_forest(&x, &y, &cfg());
        let b = fit_forest(&x, &y, &cfg());
        assert_eq!(a, b);
        assert_eq!(a.len(), 8);
        assert_ne!(a[0], a[1]);
    }
}
