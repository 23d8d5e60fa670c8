"""Regenerates tests/fixtures/fanova/reference.json, the reference that src/report/forest.rs and
src/report/fanova.rs are checked against: scikit-learn regression trees (what Optuna's fANOVA
fits) and Optuna's `_FanovaTree` statistics on those trees.

Run with the pinned peers:  .venv/bin/pip install -r scripts/requirements.txt && .venv/bin/python scripts/fanova_fixtures.py

Each case is a small data set in Optuna's importance encoding (a float column, an int column, a
categorical one-hot over three columns), the bootstrap counts of a few trees, each tree as
scikit-learn grew it with those counts as sample weights, and per tree the variance and the
marginal variance of each parameter that Optuna computes.
"""

import json
import pathlib

import numpy as np
from optuna.importance._fanova._tree import _FanovaTree
from sklearn.tree import DecisionTreeRegressor

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fanova" / "reference.json"

# Columns: x float in [-2, 3], n int in [1, 10], c categorical one-hot over 3 choices.
BOUNDS = [[-2.0, 3.0], [1.0, 10.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
GROUPS = [[0], [1], [2, 3, 4]]


def data(rng, n_rows):
    x = rng.uniform(-2.0, 3.0, n_rows)
    n = rng.integers(1, 11, n_rows).astype(float)
    c = rng.integers(0, 3, n_rows)
    onehot = np.eye(3)[c]
    y = x**2 + 0.3 * n + np.array([0.0, 1.5, -0.7])[c] + 0.5 * x * (c == 1) + rng.normal(0, 0.1, n_rows)
    return np.column_stack([x, n, onehot]), y


def tree_json(tree):
    t = tree.tree_
    nodes = []
    for i in range(t.node_count):
        if t.feature[i] < 0:
            nodes.append({"value": float(t.value[i].reshape(-1)[0])})
        else:
            nodes.append({
                "feature": int(t.feature[i]),
                "threshold": float(t.threshold[i]),
                "left": int(t.children_left[i]),
                "right": int(t.children_right[i]),
            })
    return nodes


def case(seed, n_rows, n_trees):
    rng = np.random.default_rng(seed)
    X, y = data(rng, n_rows)
    trees = []
    for _ in range(n_trees):
        counts = np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows).astype(float)
        reg = DecisionTreeRegressor(max_depth=64, min_samples_split=2, min_samples_leaf=1, random_state=0)
        reg.fit(X, y, sample_weight=counts)
        ft = _FanovaTree(reg.tree_, np.array(BOUNDS))
        trees.append({
            "weights": counts.tolist(),
            "nodes": tree_json(reg),
            "variance": float(ft.variance),
            "marginal_variances": [float(ft.get_marginal_variance(np.array(g))) for g in GROUPS],
        })
    return {"seed": seed, "x": X.tolist(), "y": y.tolist(), "trees": trees}


def main():
    cases = [case(seed=1, n_rows=12, n_trees=3), case(seed=2, n_rows=40, n_trees=3)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"bounds": BOUNDS, "groups": GROUPS, "cases": cases}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
