#!/bin/sh
# The interpreter of every DVC stage command (dvc.yaml `cmd: sh pipelines/python.sh -m pipelines.<stage>`).
# DVC deletes a stage's outputs before it runs the command, so a bare `dvc repro` whose PATH lacks the
# venv must not fall through to the system python (red team, issue 18). In order:
#   1. $DIFFAUDIT_PYTHON, which the Makefile exports for its VENV;
#   2. the checkout's own .venv (DVC runs the command at the repository root);
#   3. the python on PATH (a copy of the tree run with some venv first on PATH, a temp experiment).
if [ -n "${DIFFAUDIT_PYTHON:-}" ]; then
  exec "$DIFFAUDIT_PYTHON" "$@"
elif [ -x .venv/bin/python ]; then
  exec .venv/bin/python "$@"
fi
exec python "$@"
