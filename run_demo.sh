#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs demo.py (arguments go to it, e.g. --quick).
source "$(dirname "$0")/env.sh"
exec python demo.py "$@"
