#!/usr/bin/env bash
# Lint and types, as CI runs them: ruff (rules and formatting) and mypy (settings in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m ruff check apnsd tests benchmarks scripts
.venv/bin/python -m ruff format --check apnsd tests benchmarks scripts
.venv/bin/python -m mypy
