#!/usr/bin/env bash
# The default study, old file against new (issue 14, item 11), one after the other on this
# machine: wall time, best value, and the exported best config trained by `tune train` on 5 seeds
# the studies never used (100-104), each evaluated by `tune eval` (100 greedy episodes, its
# default weights: those of the run's best evaluation).
#
#   scripts/default_study.sh OLD.yaml NEW.yaml [OUT_DIR]   (default OUT_DIR target/default_study;
#                                                           needs target/release/tune)
#   e.g. git show HEAD~1:studies/per_cartpole.yaml > /tmp/old.yaml &&
#        scripts/default_study.sh /tmp/old.yaml studies/per_cartpole.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ $# -ge 2 ] || { echo "usage: scripts/default_study.sh OLD.yaml NEW.yaml [OUT_DIR]" >&2; exit 2; }
old=$(realpath "$1"); new=$(realpath "$2")
out=${3:-target/default_study}
rm -rf "$out" && mkdir -p "$out"
tune=$root/target/release/tune
[ -x "$tune" ] || { echo "build first: cargo build --release" >&2; exit 2; }
for s in old new; do
    src=$old; [ $s = new ] && src=$new
    sed -e "s/^name: .*/name: default-$s/" -e "s#config: ../configs#config: $root/configs#" "$src" > "$out/$s.yaml"
done
cd "$out"
printf '| study | wall time (s) | trials complete / pruned | best value | exported config, seeds 100-104: mean return over 100 greedy episodes | seeds >= 475 |\n|---|---|---|---|---|---|\n'
for s in old new; do
    start=$(date +%s%N)
    "$tune" run $s.yaml --storage sqlite:///cmp.db --quiet > $s.log
    end=$(date +%s%N)
    counts=$(sed -n 's/^This run: \([0-9]*\) complete, \([0-9]*\) pruned.*/\1 \/ \2/p' $s.log)
    best=$(sed -n '/^number/{n;p;}' $s.log | awk '{print $3}')
    "$tune" export default-$s --storage sqlite:///cmp.db -o $s-best.yaml > /dev/null
    means=()
    held=0
    for seed in 100 101 102 103 104; do
        "$tune" train $s-best.yaml --seed $seed --out runs/$s-$seed --quiet > /dev/null
        m=$("$tune" eval runs/$s-$seed --episodes 100 | sed -n 's/.*: mean return \([0-9.]*\) .*/\1/p')
        means+=("$m")
        held=$((held + $(awk -v m="$m" 'BEGIN { print (m >= 475) ? 1 : 0 }')))
    done
    printf '| %s | %.1f | %s | %s | %s | %d of 5 |\n' "$s" "$(awk -v a="$start" -v b="$end" 'BEGIN { print (b - a) / 1e9 }')" "$counts" "$best" "${means[*]}" "$held"
done
