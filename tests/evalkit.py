"""Helpers shared by test_eval.py, test_deblur.py and test_data_prep.py: a tiny DPDD-layout test split, a copy
of a dataset as raw frames, tiny checkpoints saved the way train.py saves them, a Keras 2.2.4-style HDF5 writer,
and loading test.py (whose name clashes with the standard library's `test` package) as a module."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import cv2
import h5py
import keras
import numpy as np

from config import REPO_DIR, make_config
from images import write_image
from model import build_model

TINY = {"base_filters": 4, "depth": 2}


def load_script(name: str):
    """Import a top-level script (test.py, deblur.py) by path."""
    spec = importlib.util.spec_from_file_location(f"dpdnet_{name}", os.path.join(REPO_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene_images(rng, h: int, w: int) -> dict:
    """A smooth random sharp image and blurry left/right/combined views of it, floats in [0, 1]."""
    sharp = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
    sharp = (sharp - sharp.min()) / (sharp.max() - sharp.min() + 1e-6)
    blurry = cv2.GaussianBlur(sharp, (0, 0), 1.5)
    return {"target": sharp, "source": blurry, "left": np.roll(blurry, 1, axis=1), "right": np.roll(blurry, -1, axis=1)}


def make_test_split(root: str, n: int = 4, h: int = 52, w: int = 70, bits: int = 16, seed: int = 0,
                    categories: list[str] | None = None) -> list[str]:
    """A DPDD-layout test split of n scenes (source names S000..., targets T000...) plus test_categories.csv."""
    rng = np.random.default_rng(seed)
    names, rows = [], []
    categories = categories or ["indoor" if i % 2 == 0 else "outdoor" for i in range(n)]
    for i in range(n):
        src, tgt = f"S{i:03d}", f"T{i:03d}"
        img = scene_images(rng, h, w)
        for folder, name, key in (("test_c/source", src, "source"), ("test_c/target", tgt, "target"),
                                  ("test_l/source", src + "_L", "left"), ("test_r/source", src + "_R", "right")):
            write_image(os.path.join(root, folder, name + ".png"), img[key], bits=bits)
        names.append(src)
        rows.append(f"{i + 1},{src},{tgt},{categories[i]}")
    with open(os.path.join(root, "test_categories.csv"), "w") as f:
        f.write("index,source,target,category\n" + "\n".join(rows) + "\n")
    return names


def as_raw(root: str, out: str, black: int, white: int) -> None:
    """A copy of a 16-bit dataset as raw frames are often stored: values from black to white, unscaled in 16-bit
    files (other files copied as they are)."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            src, dst = os.path.join(dirpath, name), os.path.join(out, os.path.relpath(dirpath, root), name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not name.endswith(".png"):
                shutil.copy(src, dst)
                continue
            img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
            cv2.imwrite(dst, np.rint(img / 65535.0 * (white - black) + black).astype(np.uint16))


def tiny_model(input_mode: str = "dual", seed: int = 0, **overrides):
    """A tiny DPDNet with random weights and random biases (so that every layer matters)."""
    keras.utils.set_random_seed(seed)
    cfg = make_config("paper", {**TINY, "input_mode": input_mode, **overrides})
    model = build_model(cfg)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype(np.float32))
    return model, cfg


def save_checkpoint(model, cfg, folder: str) -> str:
    """best.keras and config.json in `folder`, as train.py writes them."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "best.keras")
    model.save(path)
    cfg.save_json(os.path.join(folder, "config.json"))
    return path


def write_keras2_hdf5(model, path: str, bgr: bool = True) -> None:
    """Write `model` as Keras 2.2.4 would have saved the authors' BGR network: automatic layer names (conv2d_1 ...,
    max_pooling2d_1 ...), root attrs keras_version/backend/model_config, group model_weights with layer_names,
    per-layer weight_names 'conv2d_k/kernel:0' and datasets under <layer>/<layer>/kernel:0. With bgr=True the
    first conv's input channels and the output conv's channels are permuted so the file expects BGR input."""
    kinds = {"Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "Dropout": "dropout",
             "UpSampling2D": "up_sampling2d", "Concatenate": "concatenate", "InputLayer": "input"}
    counters: dict[str, int] = {}
    entries = []
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer in model.layers:
        kind = kinds.get(type(layer).__name__)
        if kind is None:  # our InputGuard has no Keras 2 counterpart
            continue
        counters[kind] = counters.get(kind, 0) + 1
        name = f"{kind}_{counters[kind]}"
        arrays = []
        if kind == "conv2d":
            kernel, bias = (np.array(w) for w in layer.get_weights())
            if bgr and layer is convs[0]:
                c = kernel.shape[2]
                kernel = kernel[:, :, [2, 1, 0, 5, 4, 3][:c], :]
            if bgr and layer is convs[-1]:
                kernel, bias = kernel[..., [2, 1, 0]], bias[[2, 1, 0]]
            arrays = [("kernel:0", kernel), ("bias:0", bias)]
        entries.append((name, arrays))
    config = {"class_name": "Model", "config": {"name": "model_1", "layers": [
        {"class_name": "Conv2D" if n.startswith("conv2d") else "Layer", "name": n, "config": {"name": n}}
        for n, _ in entries]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_("2.2.4")
        f.attrs["backend"] = np.bytes_("tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(config))
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([n.encode() for n, _ in entries])
        g.attrs["backend"] = np.bytes_("tensorflow")
        g.attrs["keras_version"] = np.bytes_("2.2.4")
        for name, arrays in entries:
            lg = g.create_group(name)
            lg.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for w, _ in arrays], dtype="S")
            for w, a in arrays:
                lg.create_dataset(f"{name}/{w}", data=a)
        f.create_group("optimizer_weights")
