"""export.py: the exported files compute the Keras model's function (dual and single, two sizes, every format),
the quantised LiteRT variants stay close, and each bad input is one clear error with nothing written."""

import importlib.util
import os

import keras
import numpy as np
import pytest

import export as E
from config import make_config
from evalkit import save_checkpoint, tiny_model
from inference import forward

TINY8 = {"base_filters": 8, "depth": 2}
SIZES = ((32, 48), (48, 64))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for mode in ("dual", "single"):
        model, cfg = tiny_model(mode, seed=1, **TINY8)
        out[mode] = save_checkpoint(model, cfg, str(tmp_path_factory.mktemp("ck") / mode))
    return out


def cli(*argv):
    """export.py's main in-process: (exit code, one-line message)."""
    try:
        return E.main(list(argv)), ""
    except SystemExit as e:
        return (1 if isinstance(e.code, str) else e.code or 0), (e.code if isinstance(e.code, str) else "")


def keras_output(weights, mode, x):
    cfg = make_config("single" if mode == "single" else "paper")
    model, _ = E.load_for_export(weights, cfg)
    return np.clip(forward(model, x[0]), 0, 1)[None]


@pytest.mark.parametrize("mode", ["dual", "single"])
def test_round_trips_every_format_two_sizes(tmp_path, checkpoints, mode, capsys):
    preset = "single" if mode == "single" else "paper"
    formats = ["litert", "saved_model"] + (["onnx"] if importlib.util.find_spec("tf2onnx") else [])
    for h, w in SIZES:
        for fmt in formats:
            out = str(tmp_path / f"{mode}_{h}x{w}_{fmt}{ {'litert': '.tflite', 'onnx': '.onnx'}.get(fmt, '')}")
            code, msg = cli("--weights", checkpoints[mode], "--preset", preset, "--format", fmt, "--out", out,
                            "--height", str(h), "--width", str(w), "--repeats", "1")
            assert (code, msg) == (0, "")
            # an independent run of each kept file on another input than the self-check's
            x = E.random_input(h, w, 6 if mode == "dual" else 3, seed=7)
            want = keras_output(checkpoints[mode], mode, x)
            for path in E.output_paths(fmt, out):
                got = E.runner(path, fmt)(x)
                diff = float(np.abs(got - want).max())
                print(f"{mode} {h}x{w} {os.path.basename(path)}: max|diff| {diff:.2e}, {E.file_size(path)} bytes")
                assert got.shape == (1, h, w, 3) and got.min() >= 0 and got.max() <= 1
                bound = 1e-2 if path.endswith("_int8.tflite") else 1e-3 if path.endswith("_float16.tflite") else 1e-5
                assert diff <= bound
            assert (E.file_size(E.output_paths(fmt, out)[0]) > E.file_size(E.output_paths(fmt, out)[-1])) == \
                (fmt == "litert")  # int8 weights take a quarter of the bytes
    # the SavedModel exported at the first size takes the second one too (dynamic height and width)
    h, w = SIZES[1]
    x = E.random_input(h, w, 6 if mode == "dual" else 3, seed=3)
    got = E.runner(str(tmp_path / f"{mode}_{SIZES[0][0]}x{SIZES[0][1]}_saved_model"), "saved_model")(x)
    np.testing.assert_allclose(got, keras_output(checkpoints[mode], mode, x), atol=1e-5)
    printed = capsys.readouterr().out
    assert printed.count("max|diff|") >= 2 and "Keras ms" in printed


def test_a_network_told_the_noise_level_exports_with_its_floor(tmp_path):
    """The noise-level layer (noise_input) is in every exported file with the floor the weights were trained at
    (1e-3 here, not the default 1e-4): on a noise-free input that reads below the floor and on a noisy one, each
    float32 file computes what Keras does within 1e-5, and the same weights at 1e-4 differ on the first."""
    import dataclasses
    from model import build_model
    model, cfg = tiny_model("dual", seed=1, noise_input=True, noise_floor=1e-3, **TINY8)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    clean = E.random_input(32, 48, 6, seed=7)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.02, clean.shape), 0, 1).astype(np.float32)
    layer = model.get_layer("noise_level")
    assert float(layer.sigma(clean)[0]) < 1e-3 < float(layer.sigma(noisy)[0])
    at_default = build_model(dataclasses.replace(cfg, noise_floor=1e-4))
    at_default.set_weights(model.get_weights())
    assert float(np.abs(np.asarray(at_default(clean)) - np.asarray(model(clean))).max()) > 1e-3
    formats = ["litert", "saved_model"] + (["onnx"] if importlib.util.find_spec("tf2onnx") else [])
    for fmt in formats:
        out = str(tmp_path / f"told{ {'litert': '.tflite', 'onnx': '.onnx'}.get(fmt, '')}")
        assert cli("--weights", ckpt, "--format", fmt, "--out", out, "--height", "32", "--width", "48",
                   "--repeats", "1") == (0, "")
        run = E.runner(E.output_paths(fmt, out)[0], fmt)
        for x in (clean, noisy):
            assert float(np.abs(run(x) - keras_output(ckpt, "dual", x)).max()) <= 1e-5, fmt


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, checkpoints, monkeypatch):
    out = str(tmp_path / "m.tflite")
    args = ["--weights", checkpoints["dual"], "--format", "litert", "--out", out, "--repeats", "1"]
    code, msg = cli(*args, "--height", "50", "--width", "48")
    assert code == 1 and msg == ("error: --height 50 is not a positive multiple of 4 (2**depth of the weights, "
                                 "depth 2); pad images to a multiple of 4 before the network")
    code, msg = cli(*args, "--height", "32", "--width", "48", "--preset", "single")
    assert code == 1 and "are DPDNet weights (6-channel input)" in msg and "\n" not in msg
    # a Keras model that is no DPDNet
    other = keras.Sequential([keras.Input((8, 8, 6)), keras.layers.Conv2D(3, 3, name="conv")])
    other_path = str(tmp_path / "other.keras")
    other.save(other_path)
    code, msg = cli("--weights", other_path, "--format", "litert", "--out", out, "--height", "32", "--width", "48")
    assert code == 1 and msg.startswith(f"error: {other_path}: not a DPDNet model")
    code, msg = cli(*args[:4], "--out", str(tmp_path / "m.bin"), "--height", "32", "--width", "48")
    assert (code, msg) == (1, f"error: --out {tmp_path / 'm.bin'}: a LiteRT file is named NAME.tflite")
    # a float32 file further from Keras than the tolerance is not kept
    code, msg = cli(*args, "--height", "32", "--width", "48", "--tolerance", "0")
    assert code == 1 and msg.startswith(f"error: {out}: differs from the Keras model by up to")
    assert sorted(os.listdir(tmp_path)) == ["other.keras"]  # no file, no temporary left behind
    # ONNX without its converter
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    code, msg = cli("--weights", checkpoints["dual"], "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 1 and msg.startswith("error: ONNX export needs tf2onnx: pip install tf2onnx==")
