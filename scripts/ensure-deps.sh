#!/usr/bin/env bash
# Installs what a fresh machine needs to build AAMAS, and nothing it already has.
#   - a Rust toolchain with cargo, rustfmt and clippy (checked, not installed)
#   - libclang and clang's C headers, which RocksDB's bindings (bindgen) load at build time
#   - iproute2 (`ip`), for the tests that put nodes on hosts in network namespaces
# As root it installs missing Debian packages with apt-get; otherwise it prints the exact
# command to run and stops.
set -euo pipefail

missing_tools=()
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || missing_tools+=("$tool")
done
if [ ${#missing_tools[@]} -gt 0 ]; then
  echo "error: ${missing_tools[*]} not found. Install Rust with rustup (https://rustup.rs), then run make again." >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "error: cargo ${component} is missing. Run: rustup component add ${component}" >&2
    exit 1
  fi
done

# bindgen needs libclang.so and clang's own headers (stddef.h, stdbool.h).
have_libclang() {
  local lib
  for lib in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/aarch64-linux-gnu/libclang*.so*; do
    [ -e "$lib" ] || continue
    for header in /usr/lib/llvm-*/lib/clang/*/include/stdbool.h /usr/lib/clang/*/include/stdbool.h; do
      [ -e "$header" ] && return 0
    done
  done
  return 1
}

packages=()
have_libclang || packages+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || packages+=(g++)
command -v make >/dev/null 2>&1 || packages+=(make)
# The tests of several hosts (tests/tests/partition.rs) build network namespaces.
command -v ip >/dev/null 2>&1 || packages+=(iproute2)

if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${packages[*]}" >&2
  echo "run:   sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
echo "installing ${packages[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
have_libclang || { echo "error: libclang still not found after installing ${packages[*]}" >&2; exit 1; }
