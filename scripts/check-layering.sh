#!/usr/bin/env bash
# The layering rules of STYLE.md that a machine can check:
#   - aamas-protocol depends on no async runtime, network stack or storage engine;
#   - node's pure cores (authority, cities, mayor, worker, governor, president) reach no IO, clock or randomness;
#   - bincode (unmaintained, RUSTSEC-2025-0141) is nowhere in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
forbidden=$(cargo tree --locked -p aamas-protocol --prefix none --format '{p}' | grep -Eio '^(tokio|libp2p[a-z0-9_-]*|rocksdb|librocksdb-sys|openraft|axum|hyper) ' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "error: aamas-protocol must stay pure but depends on: $forbidden" >&2
  status=1
fi
# The pure cores of node/: no runtime, network, consensus, storage, clock or randomness.
# Each may name only std, serde, thiserror, aamas-protocol and aamas-consensus's plain
# types (ledger keys, node ids), and crate modules that are pure themselves.
pure_cores="node/src/authority.rs node/src/cities.rs node/src/mayor.rs node/src/worker.rs node/src/governor.rs node/src/president.rs"
for core in $pure_cores; do
  hits=$(grep -nE '\b(tokio|libp2p|openraft|rocksdb|axum|hyper|rand|getrandom)::|Instant::now|SystemTime::now|\bGroup\b|\bGroups\b|crate::(runtime|swarm|transport|wire|work|roles|api|mirroring|messaging)\b' "$core" || true)
  if [ -n "$hits" ]; then
    echo "error: $core is a pure core but reaches IO, time or randomness:" >&2
    echo "$hits" >&2
    status=1
  fi
done
if grep -q '^name = "bincode"' Cargo.lock; then
  echo "error: bincode is in Cargo.lock; use serde + postcard (RUSTSEC-2025-0141)" >&2
  status=1
fi
[ $status -eq 0 ] && echo "layering: aamas-protocol and the node's pure cores ($pure_cores) are pure; no bincode in Cargo.lock"
exit $status
