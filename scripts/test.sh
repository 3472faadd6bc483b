#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite (unit + real-process integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
