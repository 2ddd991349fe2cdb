"""Shared test set-up: quiet TensorFlow, CPU only, the repository on sys.path (pytest.ini).

oneDNN is switched off for the whole suite before TensorFlow loads: test.py/deblur.py switch it off for
themselves (inference.prefer_low_memory_cpu), and results compared across processes (resume after a kill,
one replica against two) must come from the same CPU kernels.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
