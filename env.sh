# Sourced by run_tests.sh and run_demo.sh: create .venv with Python 3.11 and install requirements.txt
# when missing or changed, then activate it.
set -e
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=$(sha256sum requirements.txt | cut -c1-16)
if [ "$(cat .venv/.requirements_stamp 2>/dev/null)" != "$stamp" ]; then
  echo "installing requirements.txt into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$stamp" > .venv/.requirements_stamp
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
source .venv/bin/activate
