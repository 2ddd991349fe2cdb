"""Everything that differs between Keras' backends (TensorFlow, JAX, PyTorch), in one place: which one runs and
its version, devices and multi-device training, reading a model's state during fit, and out-of-memory errors.

Import it before keras: a KERAS_BACKEND whose package is not installed is a one-line exit, not a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import os
import sys
from typing import Callable, ContextManager

BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}  # Keras name -> Python package
_chosen = os.environ.get("KERAS_BACKEND", "tensorflow")
if _chosen not in BACKENDS:
    sys.exit(f"error: KERAS_BACKEND={_chosen!r}: choose one of {', '.join(BACKENDS)}")
if importlib.util.find_spec(BACKENDS[_chosen]) is None:
    sys.exit(f"error: KERAS_BACKEND={_chosen}: the {BACKENDS[_chosen]} package is not installed "
             f"(pip install {BACKENDS[_chosen]}), or choose another backend")
os.environ["KERAS_BACKEND"] = _chosen
if _chosen == "torch":
    # PyTorch's OpenMP threads spin while they wait for work; on a CPU shared with other processes that made a
    # small training step 20x slower. They sleep instead unless the user chose otherwise.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# TensorFlow's oneDNN CPU kernels, unless this process chose already (test.py and deblur.py turn them off for
# memory: inference.prefer_low_memory_cpu). TensorFlow turns them on by itself only on some CPUs (Intel with
# AVX-512); elsewhere, as on AMD EPYC, training without them is much slower (results/performance.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402  (after the check above)

from config import UserError  # noqa: E402


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


class BackendError(UserError):
    """A setting this backend cannot do; the message names what would work."""


def cpu_flags() -> set[str]:
    """The instruction-set flags of this machine's CPU as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bfloat16() -> bool:
    """True where mixed bfloat16 is the faster precision: on a CPU with bfloat16 matrix instructions (AMX,
    AVX512-BF16) under PyTorch or TensorFlow with oneDNN, whose kernels use them (JAX's do not gain)."""
    if name() == "tensorflow":
        if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
            return False
        import tensorflow as tf
        on_cpu = not tf.config.list_logical_devices("GPU")
    elif name() == "torch":
        import torch
        on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    else:
        return False
    return on_cpu and bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def jit_compile(xla: bool) -> bool:
    """Keras' jit_compile for the xla setting: TensorFlow compiles with XLA on request, JAX always does (XLA is
    its compiler), PyTorch has no XLA path here."""
    if name() == "jax":
        return True
    if name() == "torch" and xla:
        raise BackendError("xla=true: PyTorch has no XLA compilation here; use KERAS_BACKEND=tensorflow or jax "
                           "(JAX always compiles with XLA), or --set xla=false")
    return xla


@dataclasses.dataclass
class Replicas:
    """The devices one training step runs on: how many replicas share a global batch, which share of it this
    process feeds, whether this process writes checkpoints, and the scope to build and train in."""
    count: int = 1
    chief: bool = True
    process: tuple = (0, 1)            # (index, count): this process feeds rows index/count of each global batch
    scope: Callable[[], ContextManager] = contextlib.nullcontext
    name: str = "one device"


def replicas(strategy: str) -> Replicas:
    """Replicas for cfg.strategy: `default` is one device; `mirrored` is every device of this host
    (tf.distribute.MirroredStrategy, or keras.distribution.DataParallel under JAX); `multiworker` is the
    devices of several hosts (JAX only: keras.distribution.initialize, then DataParallel)."""
    if strategy == "default":
        return Replicas()
    if name() == "tensorflow":
        return _tensorflow_replicas(strategy)
    if name() == "jax":
        if strategy == "multiworker":
            # jax.distributed.initialize from KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID,
            # or from the cluster's own variables (SLURM, Cloud TPU, ...) when those are unset.
            keras.distribution.initialize()
        import jax
        devices = keras.distribution.list_devices()
        data_parallel = keras.distribution.DataParallel(devices=devices)
        index, count = jax.process_index(), jax.process_count()
        return Replicas(len(devices), index == 0, (index, count), data_parallel.scope,
                        f"keras.distribution.DataParallel over {len(devices)} device(s) in {count} process(es)")
    raise BackendError(f"strategy={strategy}: PyTorch training here runs on one device; use KERAS_BACKEND=jax or "
                       f"tensorflow for several devices, or --set strategy=default")


def _tensorflow_replicas(strategy: str) -> Replicas:
    if strategy == "multiworker":
        # Keras 3's fit cannot build a model under MultiWorkerMirroredStrategy: it all-reduces a PerReplica batch
        # and fails (https://github.com/keras-team/keras/issues/20585).
        raise BackendError("strategy=multiworker: Keras 3's fit does not run under TensorFlow's "
                           "MultiWorkerMirroredStrategy (keras-team/keras#20585); for several hosts use "
                           "KERAS_BACKEND=jax (keras.distribution.initialize), for one host's devices "
                           "strategy=mirrored")
    import tensorflow as tf
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]  # no GPU: the logical CPUs
    tf_strategy = tf.distribute.MirroredStrategy(devices)
    return Replicas(tf_strategy.num_replicas_in_sync, True, (0, 1), tf_strategy.scope,
                    f"tf.distribute.MirroredStrategy over {tf_strategy.num_replicas_in_sync} device(s)")


def sync_state(model: keras.Model) -> None:
    """Make the model's variables current during fit (JAX keeps the training state outside them until an epoch
    ends); needed before reading weights for a mid-epoch checkpoint."""
    if name() == "jax":
        model.jax_state_sync()


def is_out_of_memory(error: BaseException) -> bool:
    """True for the backend's device out-of-memory error."""
    text = str(error)
    if name() == "tensorflow":
        import tensorflow as tf
        return isinstance(error, tf.errors.ResourceExhaustedError) or (
            isinstance(error, tf.errors.InternalError) and ("RESOURCE_EXHAUSTED" in text or "OOM" in text))
    if name() == "jax":
        import jax
        return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in text
    import torch
    return isinstance(error, torch.OutOfMemoryError)
