"""Export a trained DPDNet for deployment with Keras' own model.export: a TensorFlow SavedModel (any size), a
LiteRT (TFLite) file plus its float16 and dynamic-range int8 variants, or ONNX (both at a fixed size). Each file
is run once on a random dual-pixel input before success is reported: largest difference to Keras, size, latency.

    python export.py --weights checkpoints/demo/best.keras --format onnx --out demo.onnx --height 208 --width 320
    python export.py --weights dpdnet.hdf5 --format litert --out dpdnet.tflite           # 1120x1680
    python export.py --weights dpdnet.hdf5 --format saved_model --out dpdnet_savedmodel  # any multiple of 16

The exported function takes NHWC float32 in [0, 1] (left view then right view, or the one image for
DPDNet-Single) and returns NHWC float32 in [0, 1]: the Keras model followed by the clamp test.py applies, one
pass (for weights trained with flips test.py and deblur.py average several; do that around the exported model).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time

import numpy as np

import backends  # before keras: one line if KERAS_BACKEND is not installed
import weights
from config import Config, UserError, add_config_args, config_from_args, exit_on_error
from fileio import atomic_dir, atomic_path

FORMATS = ("saved_model", "litert", "onnx")
KERAS_FORMAT = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
LITERT_VARIANTS = ("", "_float16", "_int8")  # file name suffixes: float32, float16 weights, int8 weights
FLOAT32_TOLERANCE = 1e-4  # largest |exported - Keras| accepted for the float32 files


class ExportError(UserError):
    """An export that cannot be made or that fails its check; one line for the user."""


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    with exit_on_error():
        model, model_cfg = load_for_export(args.weights, cfg)
        height, width = check_size(args.height, args.width, model_cfg)
        check_converter(args.format)
        report = export_model(model, model_cfg, args.format, args.out, height, width, overwrite=args.overwrite,
                              repeats=args.repeats, tolerance=args.tolerance)
    print_report(report, model_cfg, height, width)
    print(f"wrote {', '.join(r['path'] for r in report)}")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--weights", required=True, help="checkpoint (.keras), Keras 3 .weights.h5, or the "
                                                         "authors' Keras 2 .hdf5")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output path: a folder for saved_model, NAME.tflite for "
                                                     "litert (NAME_float16.tflite and NAME_int8.tflite beside it), "
                                                     "NAME.onnx for onnx")
    parser.add_argument("--height", type=int, default=1120, help="input height (default 1120; the SavedModel "
                                                                 "takes any size, this one is checked)")
    parser.add_argument("--width", type=int, default=1680, help="input width (default 1680)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per latency (median; default 3)")
    parser.add_argument("--tolerance", type=float, default=FLOAT32_TOLERANCE,
                        help=f"largest |difference| to Keras accepted for float32 files "
                             f"(default {FLOAT32_TOLERANCE:g})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_config_args(parser)
    return parser.parse_args(argv)


def load_for_export(path: str, cfg: Config):
    """(model, model_cfg) in float32 with weights.py's loaders; the weights must fit the config's input mode."""
    cfg = dataclasses.replace(cfg, precision="float32")  # deployment files are float32 (or quantised from it)
    model, model_cfg = weights.load_model(path, cfg)
    weights.check_input_mode(model_cfg, cfg, path)
    return model, model_cfg


def check_size(height: int, width: int, model_cfg: Config) -> tuple[int, int]:
    """The input size, which the U-Net's 2**depth poolings need as multiples of 2**depth."""
    multiple = 2 ** model_cfg.depth
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            raise ExportError(f"--{name} {value} is not a positive multiple of {multiple} (2**depth of the weights, "
                              f"depth {model_cfg.depth}); pad images to a multiple of {multiple} before the network")
    return height, width


def check_converter(fmt: str) -> None:
    """The converters Keras' export builds on: TensorFlow for all formats, tf2onnx and onnx for ONNX."""
    if backends.name() != "tensorflow":
        raise ExportError(f"export.py runs under the TensorFlow backend (KERAS_BACKEND={backends.name()}); "
                          f"weights are the same under every backend, so rerun with KERAS_BACKEND=tensorflow")
    if fmt == "onnx":
        missing = [p for p in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
        if missing:
            raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install tf2onnx==1.17.0 onnx==1.23.2 "
                              f"onnxruntime==1.32.0 (see README, 'Export')")


def deployable(model, model_cfg: Config, height: int | None, width: int | None):
    """The model followed by test.py's clamp to [0, 1], on an input of the given size (None: any size)."""
    import keras
    inputs = keras.Input((height, width, model_cfg.in_channels), name=model.inputs[0].name)
    outputs = keras.ops.clip(model(inputs, training=False), 0.0, 1.0)
    return keras.Model(inputs, outputs, name=model.name)


def output_paths(fmt: str, out: str) -> list[str]:
    if fmt == "litert":
        stem = out[:-len(".tflite")] if out.endswith(".tflite") else out
        return [f"{stem}{suffix}.tflite" for suffix in LITERT_VARIANTS]
    return [out]


def export_model(model, model_cfg: Config, fmt: str, out: str, height: int, width: int, overwrite: bool = False,
                 repeats: int = 3, tolerance: float = FLOAT32_TOLERANCE) -> list[dict]:
    """Write the file(s) for `fmt` (three for litert), each run by check_export before it is moved into place; a
    float32 file further than `tolerance` from Keras is an ExportError and is not kept. Returns the reports."""
    if fmt == "litert" and not out.endswith(".tflite"):
        raise ExportError(f"--out {out}: a LiteRT file is named NAME.tflite")
    if fmt == "onnx" and not out.endswith(".onnx"):
        raise ExportError(f"--out {out}: an ONNX file is named NAME.onnx")
    paths = output_paths(fmt, out)
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise ExportError(f"{existing[0]} exists; pass --overwrite to replace it")
    import tensorflow as tf
    dynamic = fmt == "saved_model"
    net = deployable(model, model_cfg, None if dynamic else height, None if dynamic else width)
    shape = (None, None, None) if dynamic else (1, height, width)
    signature = [tf.TensorSpec(shape + (model_cfg.in_channels,), tf.float32, name=net.inputs[0].name)]
    reference = keras_reference(model, height, width, model_cfg.in_channels, repeats)
    report = []
    for path, variant in zip(paths, LITERT_VARIANTS if fmt == "litert" else [""]):
        kwargs = {}
        if variant:                      # dynamic-range quantisation of the weights (int8) ...
            kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]
        if variant == "_float16":        # ... or float16 weights instead
            kwargs["target_spec"] = {"supported_types": [tf.float16]}
        with (atomic_dir if dynamic else atomic_path)(path) as tmp:
            net.export(tmp, format=KERAS_FORMAT[fmt], input_signature=signature, verbose=False, **kwargs)
            r = {**check_export(tmp, fmt, reference, repeats), "path": path, "quantised": bool(variant)}
            if not variant and r["max_abs_diff"] > tolerance:
                raise ExportError(f"{path}: differs from the Keras model by up to {r['max_abs_diff']:.2e} (more "
                                  f"than {tolerance:g}); not written")
        report.append(r)
    return report


# --------------------------------------------------------------------------------------------- the check

def random_input(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """A (1, H, W, C) float32 input in [0, 1] that looks like a dual-pixel pair: a smooth random image and, for
    6 channels, the same image shifted by one pixel to each side as the left and right views."""
    import cv2
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    if channels == 3:
        return img[None]
    return np.concatenate([np.roll(img, 1, axis=1), np.roll(img, -1, axis=1)], axis=-1)[None]


def runner(path: str, fmt: str):
    """A function (1, H, W, C) float32 -> (1, H, W, 3) float32 that runs the exported file on the CPU."""
    if fmt == "saved_model":
        import tensorflow as tf
        loaded = tf.saved_model.load(path)  # kept alive by the closure: its variables die with it
        return lambda x: np.asarray(loaded.serve(tf.constant(x)))
    if fmt == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    interpreter = litert_interpreter(path)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x):
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])
    return run


def litert_interpreter(path: str):
    """The LiteRT interpreter: ai_edge_litert's where installed, else TensorFlow's tf.lite copy of it."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter
    else:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


def median_seconds(fn, x, repeats: int) -> tuple[float, np.ndarray]:
    """(median wall time of `repeats` calls after one warm-up call, the warm-up's output)."""
    y = fn(x)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), y


def file_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def keras_reference(model, height: int, width: int, channels: int, repeats: int = 3) -> dict:
    """The check's random input, the Keras model's clamped output on it and the Keras latency."""
    from inference import forward
    x = random_input(height, width, channels)
    seconds, y = median_seconds(lambda v: np.clip(forward(model, v[0]), 0.0, 1.0)[None], x, repeats)
    return {"x": x, "y": y, "seconds": seconds}


def check_export(path: str, fmt: str, reference: dict, repeats: int = 3) -> dict:
    """Run the exported file on the reference input: its differences to Keras, size and latency beside Keras'."""
    try:
        got_s, got = median_seconds(runner(path, fmt), reference["x"], repeats)
    except Exception as e:  # the runtime's own message, on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: the exported file does not run ({first})") from None
    got, want = np.asarray(got, dtype=np.float32), reference["y"]
    if got.shape != want.shape:
        raise ExportError(f"{path}: returns shape {got.shape}, Keras {want.shape}")
    diff = np.abs(got - want)
    return {"path": path, "format": fmt, "bytes": file_size(path), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "seconds": got_s, "keras_seconds": reference["seconds"]}


def print_report(report: list[dict], model_cfg: Config, height: int, width: int) -> None:
    print(f"\n{weights.mode_name(model_cfg.input_mode)} (base_filters {model_cfg.base_filters}, depth {model_cfg.depth}), "
          f"input 1x{height}x{width}x{model_cfg.in_channels} float32 in [0, 1], CPU, median of the timed runs:")
    print(f"{'file':<48} {'MB':>8} {'max|diff|':>10} {'mean|diff|':>10} {'ms':>9} {'Keras ms':>9}")
    for r in report:
        print(f"{r['path']:<48} {r['bytes'] / 1e6:8.2f} {r['max_abs_diff']:10.2e} {r['mean_abs_diff']:10.2e} "
              f"{r['seconds'] * 1e3:9.1f} {r['keras_seconds'] * 1e3:9.1f}")


if __name__ == "__main__":
    sys.exit(main())
