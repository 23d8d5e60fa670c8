#!/usr/bin/env bash
# PBT against TPE on CartPole-v1 with the same total environment steps (issue 17, item 7):
# studies/pbt_cartpole.yaml (8 members x 50k steps) against 8 unpruned trials of
# studies/per_cartpole.yaml (TPE, 8 x 50k steps), run one after the other on this machine.
# For each: wall time, the environment steps the study had spent when an evaluation first
# reached 475, and its exported best config trained by `tune train` on 5 seeds the studies never
# used (100-104), each evaluated by `tune eval` (100 greedy episodes, its default weights).
#
#   scripts/pbt_vs_tpe.sh [OUT_DIR]      (default target/pbt_vs_tpe; needs target/release/tune)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-target/pbt_vs_tpe}
rm -rf "$out" && mkdir -p "$out"
tune=$root/target/release/tune
[ -x "$tune" ] || { echo "build first: cargo build --release" >&2; exit 2; }
py=$root/.venv/bin/python
sed -e 's/^name: per-cartpole/name: tpe-8/' -e 's/^n_trials: 30/n_trials: 8/' -e 's/^pruner: .*/pruner: {type: none}/' \
    -e "s#config: ../configs#config: $root/configs#" studies/per_cartpole.yaml > "$out/tpe.yaml"
sed -e "s#config: ../configs#config: $root/configs#" studies/pbt_cartpole.yaml > "$out/pbt.yaml"
cd "$out"
for s in pbt tpe; do
    start=$(date +%s%N)
    "$tune" run $s.yaml --storage sqlite:///cmp.db --quiet > $s.log
    end=$(date +%s%N)
    echo "$s $(( (end - start) / 1000000 ))" >> wall.txt
    name=$(sed -n 's/^name: //p' $s.yaml)
    "$tune" export "$name" --storage sqlite:///cmp.db -o $s-best.yaml > /dev/null
    for seed in 100 101 102 103 104; do
        "$tune" train $s-best.yaml --seed $seed --out runs/$s-$seed --quiet > /dev/null
        "$tune" eval runs/$s-$seed --episodes 100 | sed -n 's/.*: mean return \([0-9.]*\) .*/\1/p' > runs/$s-$seed.mean
    done
done
"$py" - <<'PY'
import sqlite3
from datetime import datetime
con = sqlite3.connect("cmp.db")
def first_475(name):
    """(steps of that member or trial at its first evaluation >= 475, environment steps the whole
    study had taken by then). Trials ran two at a time: the others' progress at that moment is
    interpolated from their start and end times (steps are spread evenly over a trial's time)."""
    sid = con.execute("select study_id from studies where study_name=?", (name,)).fetchone()[0]
    rows = con.execute("select trial_id, datetime_start, datetime_complete from trials where study_id=? and state='COMPLETE' order by number", (sid,)).fetchall()
    t = lambda s: datetime.fromisoformat(s).timestamp()
    spans, hits = [], []
    for tid, start, end in rows:
        ivs = con.execute("select step, intermediate_value from trial_intermediate_values where trial_id=? order by step", (tid,)).fetchall()
        first, last = ivs[0][0], ivs[-1][0]
        lo = con.execute("select value_json from trial_user_attributes where trial_id=? and key='pbt_start_step'", (tid,)).fetchone()
        lo = int(lo[0]) if lo else 0
        spans.append((t(start), t(end), lo, last))
        for step, v in ivs:
            if v is not None and v >= 475:
                hits.append((t(start) + (t(end) - t(start)) * (step - lo) / max(last - lo, 1), step))
                break
    if not hits:
        return None, None
    when, step = min(hits)
    total = sum((hi - lo) * min(max((when - a) / max(b - a, 1e-9), 0), 1) for a, b, lo, hi in spans)
    return step, round(total)
wall = dict(l.split() for l in open("wall.txt"))
print("| study | wall time (s) | steps of the member/trial at its first evaluation >= 475 | steps the whole study had taken then | exported config on 5 fresh seeds: mean return over 100 greedy episodes | mean of the 5 |")
print("|---|---|---|---|---|---|")
for s, name in [("pbt", "pbt-cartpole"), ("tpe", "tpe-8")]:
    means = [float(open(f"runs/{s}-{seed}.mean").read() or "nan") for seed in range(100, 105)]
    step, total = first_475(name)
    print(f"| {name} | {float(wall[s]) / 1000:.0f} | {step} | {total} | {', '.join(f'{m:.1f}' for m in means)} | {sum(means) / 5:.1f} |")
PY
