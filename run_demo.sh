#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs demo.py (arguments go to it, e.g. --quick) from the folder
# it was called from, so that a relative --root is relative to it, as with python demo.py.
caller=$PWD
repo=$(dirname "$(readlink -f "$0")")
source "$repo/env.sh" || exit 1
cd "$caller"
exec python "$repo/demo.py" "$@"
