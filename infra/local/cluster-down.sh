#!/usr/bin/env bash
# Stop the local clusters started by cluster-up.sh (idempotent). Extra arguments go to
# `down`, e.g. --dir DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../../.venv/bin/python}"
exec "$python" "$here/cluster.py" down "$@"
