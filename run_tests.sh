#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the suite (extra arguments go to pytest).
source "$(dirname "$0")/env.sh"
exec python -m pytest tests -q "$@"
