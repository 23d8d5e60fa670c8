//! Functional ANOVA on the trees of a random forest: the share of a tree's variance over the
//! search space that one parameter explains on its own (Optuna's `_FanovaTree`).
//!
//! Hutter, Hoos, Leyton-Brown, "An Efficient Approach for Assessing Hyperparameter Importance",
//! ICML 2014. A tree is a piecewise-constant function over the box of parameter bounds; its
//! marginal over a set of columns `F` averages out the other columns (eq. 1), and the importance
//! of `F` is `Var_F[marginal] / Var[tree]` (eq. 4), averaged over the trees of the forest.

use super::forest::{Node, Tree};

/// A fitted tree with the statistics fANOVA needs, over the box `bounds` (one `(low, high)` per
/// column).
pub struct FanovaTree<'a> {
    tree: &'a Tree,
    bounds: &'a [(f64, f64)],
    /// Per node: the volume-weighted mean prediction over its region and that region's volume.
    stats: Vec<(f64, f64)>,
    /// Per column: the midpoints of the cells its split thresholds cut the bounds into.
    midpoints: Vec<Vec<f64>>,
    /// Per column: the widths of those cells.
    sizes: Vec<Vec<f64>>,
    /// Per node: which columns the subtree rooted there splits on.
    splits_below: Vec<Vec<bool>>,
    variance: f64,
}

impl<'a> FanovaTree<'a> {
    /// Precomputes the node statistics, cells and subtree columns of `tree` over `bounds`.
    pub fn new(tree: &'a Tree, bounds: &'a [(f64, f64)]) -> Self {
        let n = tree.nodes.len();
        let d = bounds.len();

        // Each node's region, top-down; leaves get their value and volume.
        let mut regions: Vec<Option<Vec<(f64, f64)>>> = vec![None; n];
        regions[0] = Some(bounds.to_vec());
        let mut stats = vec![(0.0, 0.0); n];
        for i in 0..n {
            let region = regions[i].take().expect("parents come before children");
            match tree.nodes[i] {
                Node::Leaf { value } => stats[i] = (value, volume(&region)),
                Node::Split { feature, threshold, left, right } => {
                    let (mut l, mut r) = (region.clone(), region);
                    l[feature].1 = threshold;
                    r[feature].0 = threshold;
                    regions[left] = Some(l);
                    regions[right] = Some(r);
                }
            }
        }
        // Internal nodes, bottom-up.
        for i in (0..n).rev() {
            if let Node::Split { left, right, .. } = tree.nodes[i] {
                let (a, b) = (stats[left], stats[right]);
                stats[i] = (weighted_mean(&[a.0, b.0], &[a.1, b.1]), a.1 + b.1);
            }
        }

        let mut thresholds = vec![Vec::new(); d];
        let mut splits_below = vec![vec![false; d]; n];
        for i in (0..n).rev() {
            if let Node::Split { feature, threshold, left, right } = tree.nodes[i] {
                thresholds[feature].push(threshold);
                let mut below = splits_below[left].clone();
                below.iter_mut().zip(&splits_below[right]).for_each(|(a, b)| *a |= b);
                below[feature] = true;
                splits_below[i] = below;
            }
        }
        let (mut midpoints, mut sizes) = (Vec::with_capacity(d), Vec::with_capacity(d));
        for (f, mut t) in thresholds.into_iter().enumerate() {
            t.sort_by(f64::total_cmp);
            t.dedup();
            let mut edges = Vec::with_capacity(t.len() + 2);
            edges.push(bounds[f].0);
            edges.extend(t);
            edges.push(bounds[f].1);
            midpoints.push(edges.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect());
            sizes.push(edges.windows(2).map(|w| w[1] - w[0]).collect());
        }

        let leaves: Vec<(f64, f64)> =
            (0..n).filter(|&i| matches!(tree.nodes[i], Node::Leaf { .. })).map(|i| stats[i]).collect();
        let (values, weights): (Vec<f64>, Vec<f64>) = leaves.into_iter().unzip();
        let variance = weighted_variance(&values, &weights);
        FanovaTree { tree, bounds, stats, midpoints, sizes, splits_below, variance }
    }

    /// The variance of the tree's prediction over the whole box.
    pub fn variance(&self) -> f64 {
        self.variance
    }

    /// The variance of the tree's marginal over `columns` (the other columns averaged out),
    /// taken over the cells the tree's thresholds cut those columns into.
    pub fn marginal_variance(&self, columns: &[usize]) -> f64 {
        assert!(!columns.is_empty(), "marginal over no column");
        let mut point = vec![f64::NAN; self.bounds.len()];
        let mut values = Vec::new();
        let mut weights = Vec::new();
        let mut cell = vec![0usize; columns.len()];
        'cells: loop {
            let mut size = 1.0;
            for (k, &c) in columns.iter().enumerate() {
                point[c] = self.midpoints[c][cell[k]];
                size *= self.sizes[c][cell[k]];
            }
            let (value, weight) = self.marginal_at(&point, columns);
            values.push(value);
            weights.push(weight * size);
            // Next cell of the Cartesian product (last column fastest).
            for k in (0..columns.len()).rev() {
                cell[k] += 1;
                if cell[k] < self.midpoints[columns[k]].len() {
                    continue 'cells;
                }
                cell[k] = 0;
            }
            break;
        }
        weighted_variance(&values, &weights).max(0.0)
    }

    /// The tree's prediction at `point` (set on `columns`, NaN elsewhere) averaged over the
    /// other columns, and the volume it is averaged over.
    fn marginal_at(&self, point: &[f64], columns: &[usize]) -> (f64, f64) {
        let mut region: Vec<(f64, f64)> = columns.iter().map(|&c| self.bounds[c]).collect();
        let (mut values, mut weights) = (Vec::new(), Vec::new());
        self.visit(0, point, columns, &mut region, &mut values, &mut weights);
        (weighted_mean(&values, &weights), weights.iter().sum())
    }

    /// Collects, below `node`, the nodes whose subtree no longer splits on `columns`, each with
    /// its volume over the other columns.
    fn visit(
        &self,
        node: usize,
        point: &[f64],
        columns: &[usize],
        region: &mut [(f64, f64)],
        values: &mut Vec<f64>,
        weights: &mut Vec<f64>,
    ) {
        if let Node::Split { feature, threshold, left, right } = self.tree.nodes[node] {
            if let Some(k) = columns.iter().position(|&c| c == feature) {
                let saved = region[k];
                let next = if point[feature] <= threshold {
                    region[k].1 = threshold;
                    left
                } else {
                    region[k].0 = threshold;
                    right
                };
                self.visit(next, point, columns, region, values, weights);
                region[k] = saved;
                return;
            }
            if columns.iter().any(|&c| self.splits_below[node][c]) {
                self.visit(left, point, columns, region, values, weights);
                self.visit(right, point, columns, region, values, weights);
                return;
            }
        }
        let (value, vol) = self.stats[node];
        values.push(value);
        weights.push(vol / volume(region));
    }
}

/// The fANOVA importance of each group of columns (a parameter's columns: one for a number, one
/// per choice for a one-hot categorical): the mean over the trees with non-zero variance of the
/// fraction of variance the group explains alone. `None` when no tree has any variance.
pub fn importances(trees: &[Tree], bounds: &[(f64, f64)], groups: &[Vec<usize>]) -> Option<Vec<f64>> {
    use rayon::prelude::*;
    let fractions: Vec<Vec<f64>> = trees
        .par_iter()
        .filter_map(|t| {
            let ft = FanovaTree::new(t, bounds);
            let var = ft.variance();
            (var > 0.0).then(|| groups.iter().map(|g| ft.marginal_variance(g) / var).collect())
        })
        .collect();
    if fractions.is_empty() {
        return None;
    }
    let n = fractions.len() as f64;
    Some((0..groups.len()).map(|g| fractions.iter().map(|f| f[g]).sum::<f64>() / n).collect())
}

fn volume(region: &[(f64, f64)]) -> f64 {
    region.iter().map(|(lo, hi)| hi - lo).product()
}

/// `sum w v / sum w`; 0 when the weights sum to 0.
fn weighted_mean(values: &[f64], weights: &[f64]) -> f64 {
    let w: f64 = weights.iter().sum();
    if w == 0.0 {
        return 0.0;
    }
    values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / w
}

fn weighted_variance(values: &[f64], weights: &[f64]) -> f64 {
    let mean = weighted_mean(values, weights);
    let sq: Vec<f64> = values.iter().map(|v| (v - mean) * (v - mean)).collect();
    weighted_mean(&sq, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(feature: usize, threshold: f64, left: usize, right: usize) -> Node {
        Node::Split { feature, threshold, left, right }
    }

    fn leaf(value: f64) -> Node {
        Node::Leaf { value }
    }

    /// `f(a, b) = 1[a > 0.5] + 2 * 1[b > 0.5]` on the unit square, as a tree splitting on a then b.
    fn additive() -> Tree {
        Tree {
            nodes: vec![
                split(0, 0.5, 1, 4),
                split(1, 0.5, 2, 3),
                leaf(0.0),
                leaf(2.0),
                split(1, 0.5, 5, 6),
                leaf(1.0),
                leaf(3.0),
            ],
        }
    }

    #[test]
    fn an_additive_function_splits_its_variance_by_the_squared_effects() {
        let tree = additive();
        let bounds = [(0.0, 1.0), (0.0, 1.0)];
        let ft = FanovaTree::new(&tree, &bounds);
        // Var = Var(1[a]) + Var(2 1[b]) = 0.25 + 1.0.
        assert!((ft.variance() - 1.25).abs() < 1e-12);
        assert!((ft.marginal_variance(&[0]) - 0.25).abs() < 1e-12);
        assert!((ft.marginal_variance(&[1]) - 1.0).abs() < 1e-12);
        assert!((ft.marginal_variance(&[0, 1]) - 1.25).abs() < 1e-12);
        let imp = importances(&[tree], &bounds, &[vec![0], vec![1]]).unwrap();
        assert!((imp[0] - 0.2).abs() < 1e-12 && (imp[1] - 0.8).abs() < 1e-12, "{imp:?}");
    }

    #[test]
    fn cells_are_weighted_by_their_width() {
        // f(a) = 4 * 1[a > 0.1] on [0, 1] (plus an unused column b): mean 3.6, variance 16 * 0.09.
        let tree = Tree { nodes: vec![split(0, 0.1, 1, 2), leaf(0.0), leaf(4.0)] };
        let bounds = [(0.0, 1.0), (-2.0, 2.0)];
        let ft = FanovaTree::new(&tree, &bounds);
        assert!((ft.variance() - 1.44).abs() < 1e-12);
        assert!((ft.marginal_variance(&[0]) - 1.44).abs() < 1e-12);
        assert_eq!(ft.marginal_variance(&[1]), 0.0);
    }

    #[test]
    fn an_interaction_belongs_to_no_single_column() {
        // XOR on the unit square: each column alone explains nothing.
        let tree = Tree {
            nodes: vec![
                split(0, 0.5, 1, 4),
                split(1, 0.5, 2, 3),
                leaf(0.0),
                leaf(1.0),
                split(1, 0.5, 5, 6),
                leaf(1.0),
                leaf(0.0),
            ],
        };
        let bounds = [(0.0, 1.0), (0.0, 1.0)];
        let ft = FanovaTree::new(&tree, &bounds);
        assert!((ft.variance() - 0.25).abs() < 1e-12);
        assert!(ft.marginal_variance(&[0]).abs() < 1e-12);
        assert!(ft.marginal_variance(&[1]).abs() < 1e-12);
        assert!((ft.marginal_variance(&[0, 1]) - 0.25).abs() < 1e-12);
    }

    /// Optuna's `_FanovaTree` statistics on scikit-learn trees, from scripts/fanova_fixtures.py.
    #[test]
    fn matches_optuna_on_scikit_learn_trees() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/fanova/reference.json")).unwrap();
        let bounds: Vec<(f64, f64)> = serde_json::from_value::<Vec<[f64; 2]>>(reference["bounds"].clone())
            .unwrap()
            .iter()
            .map(|b| (b[0], b[1]))
            .collect();
        let groups: Vec<Vec<usize>> = serde_json::from_value(reference["groups"].clone()).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        for case in reference["cases"].as_array().unwrap() {
            for t in case["trees"].as_array().unwrap() {
                let tree = super::super::forest::tests::tree_from_json(&t["nodes"]);
                let ft = FanovaTree::new(&tree, &bounds);
                let want = t["variance"].as_f64().unwrap();
                assert!(close(ft.variance(), want), "variance {} vs optuna {want}", ft.variance());
                for (g, want) in groups.iter().zip(t["marginal_variances"].as_array().unwrap()) {
                    let (got, want) = (ft.marginal_variance(g), want.as_f64().unwrap());
                    assert!(close(got, want), "marginal variance of {g:?}: {got} vs optuna {want}");
                }
            }
        }
    }

    #[test]
    fn trees_without_variance_are_skipped() {
        let flat = Tree { nodes: vec![leaf(1.0)] };
        let bounds = [(0.0, 1.0), (0.0, 1.0)];
        assert_eq!(importances(std::slice::from_ref(&flat), &bounds, &[vec![0]]), None);
        let imp = importances(&[flat, additive()], &bounds, &[vec![0], vec![1]]).unwrap();
        assert!((imp[0] - 0.2).abs() < 1e-12);
    }
}
