#!/usr/bin/env bash
# The test command: sets up .venv if needed, runs the suite under TensorFlow (Keras' default backend), then the
# training tests (marked `backends`) again under JAX. Extra arguments go to both pytest runs.
source "$(dirname "$0")/env.sh"
python -m pytest tests -q "$@"
KERAS_BACKEND=jax python -m pytest tests -q -m backends "$@"
