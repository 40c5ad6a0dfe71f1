#!/usr/bin/env bash
# Creates ./.venv (Python 3.11) and installs keras_vit with the given extras into it, at the
# exact versions of constraints.txt (setup.cfg itself declares compatible ranges).
# Idempotent: reinstalls only when setup.cfg, constraints.txt or the extras changed. Usage:
#   source scripts/setup_env.sh [EXTRAS]      (EXTRAS e.g. "export" or "dev"; default none)
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extras="${1:-}"
_python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$_root/.venv/bin/python" ]; then
  echo "[setup] creating $_root/.venv with $($_python --version)"
  "$_python" -m venv "$_root/.venv"
fi
_stamp="$_root/.venv/.keras_vit-installed"
_hash="$(cat "$_root/setup.cfg" "$_root/pyproject.toml" "$_root/constraints.txt" | sha256sum | cut -c1-16)"
# An install with the dev extras (all of them) also serves a narrower request.
if ! grep -qxE "$_hash (dev|\[$_extras\])" "$_stamp" 2>/dev/null; then
  echo "[setup] installing keras_vit${_extras:+[$_extras]} at the versions of constraints.txt (first run: a few minutes)"
  "$_root/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$_root/.venv/bin/python" -m pip install --quiet -c "$_root/constraints.txt" -e "$_root${_extras:+[$_extras]}"
  if [ "$_extras" = "dev" ]; then echo "$_hash dev" >> "$_stamp"; else echo "$_hash [$_extras]" >> "$_stamp"; fi
fi
export PATH="$_root/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
