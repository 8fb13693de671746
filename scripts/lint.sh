#!/usr/bin/env bash
# Lint, format check and type check (CI runs this before the tests): ruff over the whole tree, mypy over the
# core stages listed in pyproject.toml ([tool.mypy] files). Run `bash scripts/setup.sh` first.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
