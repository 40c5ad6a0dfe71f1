#!/usr/bin/env bash
# The test command: sets up .venv with the dev extras, runs the whole suite on the
# TensorFlow backend, then the backend-agnostic core again on JAX. Arguments go to pytest:
#   bash scripts/test.sh -m "not slow"     the fast tier (no training runs, exports or child processes)
# Two pytest-xdist workers (TEST_WORKERS to change; 0 runs in this process): most tests spend
# their time in one thread (tracing, conversion, process start), so two share two cores well.
# Each file runs in one worker, the files that use the main job together (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh dev
_workers=(-n "${TEST_WORKERS:-2}")
echo "[test] TensorFlow backend: the whole suite"
KERAS_BACKEND=tensorflow python -m pytest -q -p no:cacheprovider "${_workers[@]}" --durations=15 "$@" tests
echo "[test] JAX backend: the model core and the optimizers"
KERAS_BACKEND=jax python -m pytest -q -p no:cacheprovider "${_workers[@]}" "$@" tests/test_layers.py tests/test_layer_harness.py tests/test_serialization.py tests/test_models.py tests/test_hybrid.py tests/test_checkpoints.py tests/test_hub.py tests/test_optimizers.py
