#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite (unit + real-process integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one BLAS/OpenMP thread per process: on 2 cores, torch and sklearn with 2 threads each run 10-25x slower
# once several processes (SuperNodes, ClientApps) share the machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
