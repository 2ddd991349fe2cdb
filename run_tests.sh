#!/usr/bin/env bash
# The test command: sets up .venv if needed, runs the suite under TensorFlow (Keras' default backend), then the
# training tests (marked `backends`) again under JAX. Extra arguments go to both pytest runs.
source "$(dirname "$0")/env.sh"
KERAS_BACKEND=tensorflow python -m pytest tests -q "$@"
# Exit status 5 (no test selected) is not a failure: extra arguments may select no training test.
KERAS_BACKEND=jax python -m pytest tests -q -m backends "$@" || [ $? -eq 5 ]
