#!/usr/bin/env bash
# Runs a large simulation with a watchdog: samples the process's resident memory and how
# many nodes started and joined every 15 s, and stops it past a memory bound or a time
# bound (a mesh larger than this machine can hold would otherwise end in the OOM killer).
#
#   scripts/sim-watch.sh NODES [MAX_RSS_GIB] [MAX_SECONDS]
#   scripts/sim-watch.sh 10000 20 720     # the 10,000-node try in docs/PERFORMANCE.md
#
# Needs the release simulator (cargo build --release -p aamas-sim). Writes
# /tmp/sim-watch.{samples,out,err} and the report (if it finishes) to /tmp/sim-watch.
set -euo pipefail
nodes=${1:?usage: sim-watch.sh NODES [MAX_RSS_GIB] [MAX_SECONDS]}
max_kib=$(( ${2:-20} * 1024 * 1024 ))
max_secs=${3:-720}
bin="${CARGO_TARGET_DIR:-target}/release/aamas-sim"
[ -x "$bin" ] || { echo "no $bin: run cargo build --release -p aamas-sim" >&2; exit 1; }
rm -rf /tmp/sim-watch
: > /tmp/sim-watch.samples
RUST_LOG=${RUST_LOG:-error,aamas_node=info} "$bin" run --nodes "$nodes" --scenario steady \
    --duration 900s --report /tmp/sim-watch --quiet > /tmp/sim-watch.out 2> /tmp/sim-watch.err &
pid=$!
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    joined=$(grep -c "joined the mesh" /tmp/sim-watch.err || true)
    started=$(grep -c "created a new identity" /tmp/sim-watch.err || true)
    t=$(( $(date +%s) - start ))
    echo "$t s: rss ${rss:-0} kB, started $started, joined $joined" | tee -a /tmp/sim-watch.samples
    if [ "${rss:-0}" -gt "$max_kib" ] || [ "$t" -gt "$max_secs" ]; then
        echo "stopping at $t s (rss ${rss:-0} kB)" | tee -a /tmp/sim-watch.samples
        kill -9 "$pid"
    fi
done
cat /tmp/sim-watch.out
