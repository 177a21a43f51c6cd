#!/usr/bin/env bash
# Start the local Spark + Ray clusters (see cluster.py). Extra arguments go to `up`,
# e.g. --no-spark or --dir DIR. Uses the project's virtualenv Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../../.venv/bin/python}"
exec "$python" "$here/cluster.py" up "$@"
