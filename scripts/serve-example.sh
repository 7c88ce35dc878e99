#!/usr/bin/env bash
# Serve the bundled example Flask app with ferrocorn on http://127.0.0.1:8000
# using examples/gunicorn.conf.py. Extra arguments are passed to ferrocorn
# (e.g. scripts/serve-example.sh -w 4 --log-level debug).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
echo "==> serving examples/flaskapp on http://127.0.0.1:8000, metrics on http://127.0.0.1:9091/metrics (Ctrl-C to stop)" >&2
exec "$ROOT/target/release/ferrocorn" -c "$ROOT/examples/gunicorn.conf.py" "$@"
