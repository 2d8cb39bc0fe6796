#!/usr/bin/env bash
# The layering rules of STYLE.md that a machine can check:
#   - aamas-protocol depends on no async runtime, network stack or storage engine;
#   - node's pure cores (node/src/roles/) reach no IO, clock or randomness;
#   - node/src's lower layers (net/, messaging, exec/, spec, metrics, token) never import the driver or the API;
#   - bincode (unmaintained, RUSTSEC-2025-0141) is nowhere in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
forbidden=$(cargo tree --locked -p aamas-protocol --prefix none --format '{p}' | grep -Eio '^(tokio|libp2p[a-z0-9_-]*|rocksdb|librocksdb-sys|openraft|axum|hyper) ' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "error: aamas-protocol must stay pure but depends on: $forbidden" >&2
  status=1
fi
# The pure cores of node/ (node/src/roles/): no runtime, network, consensus, storage,
# clock or randomness. Each may name only std, serde, thiserror, aamas-protocol and
# aamas-consensus's plain types (ledger keys, node ids), the other cores, and pure crate
# modules (spec).
pure_cores=$(ls node/src/roles/*.rs node/src/governance/*.rs)
for core in $pure_cores; do
  hits=$(grep -nE '\b(tokio|libp2p|openraft|rocksdb|axum|hyper|rand|getrandom)::|Instant::now|SystemTime::now|\bGroup\b|\bGroups\b|crate::(driver|net|api|messaging|exec|metrics|token)\b' "$core" || true)
  if [ -n "$hits" ]; then
    echo "error: $core is a pure core but reaches IO, time or randomness:" >&2
    echo "$hits" >&2
    status=1
  fi
done
# Imports go down only: node/src's lower layers never name the layers above them.
#   net/                 -> not driver, api, roles, messaging
#   driver/              -> not api (the crate root hands it the API's start)
#   messaging, exec/, spec, metrics, token -> not driver, api
check_down() {
  local files=$1 forbidden=$2 hits file
  # A file that moved must not silently drop out of the check.
  for file in $files; do
    if [ ! -f "$file" ]; then
      echo "error: check-layering.sh names $file, which does not exist" >&2
      status=1
    fi
  done
  # shellcheck disable=SC2086
  hits=$(grep -nE "crate::($forbidden)\b" $files || true)
  if [ -n "$hits" ]; then
    echo "error: a lower layer of node/src names a layer above it ($forbidden):" >&2
    echo "$hits" >&2
    status=1
  fi
}
check_down "node/src/net/*.rs" "driver|api|roles|messaging"
check_down "node/src/driver/*.rs" "api"
check_down "node/src/messaging.rs node/src/events.rs node/src/exec/*.rs node/src/spec/*.rs node/src/metrics.rs node/src/token.rs node/src/access.rs" "driver|api"
# One owner: the role cores live in the work driver (node/src/driver/owner.rs), never
# behind a lock shared between tasks.
locked=$(grep -rnE '(Mutex|RwLock)<[^>]*roles::' node/src || true)
if [ -n "$locked" ]; then
  echo "error: a role core behind a lock; the work driver owns the cores:" >&2
  echo "$locked" >&2
  status=1
fi
if grep -q '^name = "bincode"' Cargo.lock; then
  echo "error: bincode is in Cargo.lock; use serde + postcard (RUSTSEC-2025-0141)" >&2
  status=1
fi
[ $status -eq 0 ] && echo "layering: aamas-protocol and the node's pure cores (node/src/roles/, node/src/governance/) are pure; node/src imports go down only; the role cores have one owner; no bincode in Cargo.lock"
exit $status
