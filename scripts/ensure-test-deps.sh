#!/usr/bin/env bash
# What `make test` needs beyond the build (scripts/ensure-deps.sh): an outside checker
# of the API's OpenAPI document, `openapi-spec-validator` for python3, which
# tests/tests/hostile.rs runs. Installed from PyPI with pip when it is missing.
set -euo pipefail

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 not found; the API's OpenAPI document is checked with python3's openapi-spec-validator" >&2
  echo "run:   sudo apt-get install -y python3 python3-pip" >&2
  exit 1
fi
if python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  exit 0
fi
echo "installing openapi-spec-validator with pip" >&2
python3 -m pip install --quiet openapi-spec-validator \
  || python3 -m pip install --quiet --break-system-packages openapi-spec-validator \
  || { echo "error: could not install openapi-spec-validator; run: python3 -m pip install openapi-spec-validator" >&2; exit 1; }
python3 -c 'import openapi_spec_validator' >/dev/null 2>&1 \
  || { echo "error: openapi-spec-validator still cannot be imported by python3" >&2; exit 1; }
