"""Everything that differs between Keras' backends (TensorFlow, JAX, PyTorch), in one place: which one runs and
its version, devices and multi-device training, reading a model's state during fit, and out-of-memory errors.

Import it before keras: a KERAS_BACKEND whose package is not installed is a one-line exit, not a traceback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}  # Keras name -> Python package
_chosen = os.environ.get("KERAS_BACKEND", "tensorflow")
if _chosen not in BACKENDS:
    sys.exit(f"error: KERAS_BACKEND={_chosen!r}: choose one of {', '.join(BACKENDS)}")
if importlib.util.find_spec(BACKENDS[_chosen]) is None:
    sys.exit(f"error: KERAS_BACKEND={_chosen}: the {BACKENDS[_chosen]} package is not installed "
             f"(pip install {BACKENDS[_chosen]}), or choose another backend")
os.environ["KERAS_BACKEND"] = _chosen

import keras  # noqa: E402  (after the check above)


def name() -> str:
    """The Keras backend this process runs: tensorflow, jax or torch."""
    return keras.backend.backend()


def info() -> dict:
    """{"backend": name, "backend_version": version}, recorded in every JSON a run writes."""
    package = BACKENDS[name()]
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get(package), "__version__", "unknown")
    return {"backend": name(), "backend_version": version}
