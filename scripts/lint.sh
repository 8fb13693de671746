#!/usr/bin/env bash
# Lint, format check, type check and docs build (CI runs this before the tests): ruff over the whole tree, mypy over the
# whole package (pyproject.toml [tool.mypy] files). Run `bash scripts/setup.sh` first.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The generated reference pages and JSON Schemas are up to date, and the documentation site builds without a
# warning (broken links and anchors included); no network needed.
.venv/bin/python scripts/gen_docs.py --check
# (not --quiet: it hides the warnings from --strict too, so nothing would fail)
if ! built=$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict 2>&1); then
  printf '%s\n' "$built" | grep -v '^INFO' >&2
  exit 1
fi
