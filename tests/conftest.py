"""Shared test set-up: quiet TensorFlow, CPU only, the repository on sys.path (pytest.ini).

oneDNN is switched off for the whole suite before TensorFlow loads: test.py/deblur.py switch it off for
themselves (inference.prefer_low_memory_cpu), and results compared across processes (resume after a kill,
one replica against two) must come from the same CPU kernels. JAX keeps what it compiles in a folder the
suite's processes share (and removes at the end): its random initializers compile for every weight shape, about
0.7 s each on a 2-core CPU, and the tests' subprocesses build the same small networks again.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dpdnet_tests_jax_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
