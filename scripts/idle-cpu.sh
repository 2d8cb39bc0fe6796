#!/usr/bin/env bash
# CPU of an idle mesh in the simulator: NODES real nodes in one process form a mesh,
# agree on a president, and then do nothing; the process's CPU time (user + system, from
# /proc) is sampled over WINDOW seconds, SETTLE seconds after the idle step began.
#
#   scripts/idle-cpu.sh NODES [WINDOW_S] [SETTLE_S]
#   scripts/idle-cpu.sh 200 60 30        # the figures in docs/PERFORMANCE.md
#
# Needs the release simulator (cargo build --release -p aamas-sim); AAMAS_SIM names
# another binary (an earlier build, for a before/after). Prints one line: cores busy.
set -euo pipefail
nodes=${1:?usage: idle-cpu.sh NODES [WINDOW_S] [SETTLE_S]}
window=${2:-60}
settle=${3:-30}
bin=${AAMAS_SIM:-${CARGO_TARGET_DIR:-target}/release/aamas-sim}
[ -x "$bin" ] || { echo "no $bin: run cargo build --release -p aamas-sim" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/idle.toml" <<TOML
name = "idle"
description = "a formed mesh that does nothing"

[[step]]
action = "await-president"

[[step]]
action = "sleep"
ms = $(( (settle + window + 60) * 1000 ))
TOML
# The simulator keeps its nodes' data dirs under TMPDIR (about 8 GiB at 1,000 nodes); a
# killed simulator cannot remove them, so they go under $work, which the trap removes.
TMPDIR="$work" RUST_LOG=error "$bin" run --nodes "$nodes" --file "$work/idle.toml" --duration 2h \
    > "$work/out" 2> "$work/err" &
pid=$!
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
start=$(date +%s)
until grep -q "sleep" "$work/err"; do
    kill -0 "$pid" 2>/dev/null || { echo "the simulator ended early:" >&2; tail "$work/err" >&2; exit 1; }
    sleep 1
done
formed=$(( $(date +%s) - start ))
sleep "$settle"
t0=$(cpu); w0=$(date +%s.%N)
sleep "$window"
t1=$(cpu); w1=$(date +%s.%N)
ticks=$(getconf CLK_TCK)
awk -v n="$nodes" -v f="$formed" -v t0="$t0" -v t1="$t1" -v w0="$w0" -v w1="$w1" -v hz="$ticks" \
    'BEGIN { wall = w1 - w0; cores = (t1 - t0) / hz / wall;
             printf "%d nodes idle: %.3f cores busy over %.0f s (%.2f ms CPU per node per second; formed in about %d s)\n",
                    n, cores, wall, cores * 1000 / n, f }'
