#!/usr/bin/env bash
# Checks that the commands a developer and CI run all share one build of RocksDB's C++:
# for each command, cargo's unit graph (without building anything) gives the units that
# RocksDB's build script depends on; if any command's set differs, that command would
# compile RocksDB again (9 to 17 minutes on 2 cores). Prints the first differences.
#
# Uses `--unit-graph`, which is unstable: RUSTC_BOOTSTRAP=1 lets stable cargo print it.
# Needs python3. Not part of `make test`; run it after changing dependencies or profiles.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
graph() {
  local name=$1
  shift
  RUSTC_BOOTSTRAP=1 cargo "$@" --locked --unit-graph -Z unstable-options >"$out/$name.json"
}
graph demo build -p aamas-cli --bin aamas
graph bins build --workspace --bins
graph tests test --workspace --all-targets --no-run
graph clippy clippy --workspace --all-targets
graph consensus test -p aamas-consensus --no-run
graph sim test -p aamas-sim --all-targets --no-run
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
names = ["demo", "bins", "tests", "clippy", "consensus", "sim"]

def closure(name):
    units = json.load(open(f"{out}/{name}.json"))["units"]
    def describe(i):
        u = units[i]
        profile = {k: v for k, v in u["profile"].items() if k != "name"}
        return (u["pkg_id"], u["target"]["name"], u["mode"], tuple(u["features"]),
                json.dumps(profile, sort_keys=True))
    seen = set()
    stack = [i for i, u in enumerate(units)
             if "librocksdb-sys" in u["pkg_id"] and u["mode"] == "run-custom-build"]
    while stack:
        i = stack.pop()
        d = describe(i)
        if d in seen:
            continue
        seen.add(d)
        stack.extend(dep["index"] for dep in units[i]["dependencies"])
    return seen

reference = closure(names[0])
status = 0
for name in names[1:]:
    other = closure(name)
    if other != reference:
        status = 1
        print(f"{name}: builds RocksDB's C++ again; first differences:")
        for d in sorted(other ^ reference)[:6]:
            print("   ", d[:4])
if status == 0:
    print("one RocksDB build: " + ", ".join(names) + " share it")
sys.exit(status)
PY
