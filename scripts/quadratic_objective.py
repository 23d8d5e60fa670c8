#!/usr/bin/env python3
"""A toy training run that speaks tune's `command` objective protocol (standard library only).

It reads the trial's config (the JSON file given with --config, else $TUNE_CONFIG), "trains"
for `steps` steps, prints `@tune report <step> <value>` after each one and `@tune value <value>`
at the end. The loss approaches (x - 2)^2 + (y + 1)^2 at a speed set by `opt.lr`, so trials
with a small learning rate look bad early and are the ones a median pruner stops.

    python3 scripts/quadratic_objective.py --config cfg.json --seed 3
    # cfg.json: {"x": 0.5, "y": 0.0, "opt": {"lr": 0.1}, "steps": 20}

Used by studies/command_quadratic.yaml.
"""

import argparse
import json
import math
import os
import random
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("TUNE_CONFIG"), help="trial config (JSON)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("TUNE_SEED", "0")))
    args = parser.parse_args()
    if not args.config:
        parser.error("give --config or set TUNE_CONFIG")
    with open(args.config) as f:
        cfg = json.load(f)

    x, y = float(cfg["x"]), float(cfg["y"])
    lr = float(cfg["opt"]["lr"])
    steps = int(cfg.get("steps", 20))
    if lr <= 0:
        # Goes to stderr and exits non-zero: tune fails the trial and quotes this line.
        print(f"error: opt.lr must be positive, got {lr}", file=sys.stderr)
        return 1

    rng = random.Random(args.seed)
    floor = (x - 2.0) ** 2 + (y + 1.0) ** 2
    print(f"trial {os.environ.get('TUNE_TRIAL_NUMBER', '?')}: x={x:.3f} y={y:.3f} lr={lr:.2e}")
    loss = float("nan")
    for step in range(steps):
        # What is left to learn shrinks by a factor exp(-10 lr) per step; a little seeded noise.
        gap = 10.0 * math.exp(-10.0 * lr * (step + 1))
        loss = floor + gap + abs(rng.gauss(0.0, 0.01))
        print(f"@tune report {step} {loss}", flush=True)
        time.sleep(0.01)
    print(f"@tune value {loss}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
