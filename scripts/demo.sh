#!/usr/bin/env bash
# Install fedsynth, then run the full demo: a 3-hospital federation on RHC over the Flower Deployment
# Engine (TLS + node authentication on loopback), export the generator, audit it, and sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/fedsynth demo "$@"
