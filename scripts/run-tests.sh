#!/usr/bin/env bash
# Run the default test suite; "no tests collected" (pytest exit 5) is a failure, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check relayer adapters deploy chaos bench tests || exit 1
.venv/bin/mypy || exit 1  # config in pyproject.toml: strict for relayer/protocol and adapters
.venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "ERROR: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
