#!/usr/bin/env bash
# The layering rules of STYLE.md that a machine can check:
#   - aamas-protocol depends on no async runtime, network stack or storage engine;
#   - bincode (unmaintained, RUSTSEC-2025-0141) is nowhere in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
forbidden=$(cargo tree --locked -p aamas-protocol --prefix none --format '{p}' | grep -Eio '^(tokio|libp2p[a-z0-9_-]*|rocksdb|librocksdb-sys|openraft|axum|hyper) ' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "error: aamas-protocol must stay pure but depends on: $forbidden" >&2
  status=1
fi
if grep -q '^name = "bincode"' Cargo.lock; then
  echo "error: bincode is in Cargo.lock; use serde + postcard (RUSTSEC-2025-0141)" >&2
  status=1
fi
[ $status -eq 0 ] && echo "layering: aamas-protocol is pure; no bincode in Cargo.lock"
exit $status
