"""DPDNet structure: the paper's parameter counts, layer shapes, output range, errors, mixed precision, the
noise-level channel, and a build under a second Keras backend."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from config import REPO_DIR, make_config
from model import InputShapeError, NoiseLevel, build_model, count_params, dtype_policy


@pytest.fixture(scope="module")
def paper_512():
    return build_model(make_config("paper"), 512, 512)


def test_paper_and_single_parameter_counts():
    assert count_params(build_model(make_config("paper"))) == 31_035_151
    assert count_params(build_model(make_config("single"))) == 31_033_423


def test_layer_shapes_at_512(paper_512):
    expected = {
        "enc1_conv1": (512, 512, 64), "enc1_conv2": (512, 512, 64), "enc1_pool": (256, 256, 64),
        "enc2_conv2": (256, 256, 128), "enc2_pool": (128, 128, 128),
        "enc3_conv2": (128, 128, 256), "enc3_pool": (64, 64, 256),
        "enc4_conv2": (64, 64, 512), "enc4_dropout": (64, 64, 512), "enc4_pool": (32, 32, 512),
        "bottleneck_conv1": (32, 32, 1024), "bottleneck_conv2": (32, 32, 1024), "bottleneck_dropout": (32, 32, 1024),
        "dec4_upsample": (64, 64, 1024), "dec4_upconv": (64, 64, 512), "dec4_concat": (64, 64, 1024),
        "dec4_conv2": (64, 64, 512),
        "dec3_upconv": (128, 128, 256), "dec3_concat": (128, 128, 512), "dec3_conv2": (128, 128, 256),
        "dec2_upconv": (256, 256, 128), "dec2_concat": (256, 256, 256), "dec2_conv2": (256, 256, 128),
        "dec1_upconv": (512, 512, 64), "dec1_concat": (512, 512, 128), "dec1_conv2": (512, 512, 64),
        "head_conv": (512, 512, 3), "output": (512, 512, 3),
    }
    for name, shape in expected.items():
        assert tuple(paper_512.get_layer(name).output.shape[1:]) == shape, name
    convs = [l for l in paper_512.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 24  # the authors' conv2d_1 ... conv2d_24
    kernels = {l.name: l.kernel.shape[:2] for l in convs}
    assert kernels["dec4_upconv"] == (2, 2) and kernels["output"] == (1, 1) and kernels["head_conv"] == (3, 3)
    assert all(l.activation.__name__ == "relu" for l in convs if l.name != "output")
    assert paper_512.get_layer("output").activation.__name__ == "sigmoid"
    assert paper_512.get_layer("enc4_dropout").rate == pytest.approx(0.4)
    # the dropped tensor is both the skip and the pool's input
    assert paper_512.get_layer("enc4_pool").input is paper_512.get_layer("enc4_dropout").output
    assert paper_512.get_layer("dec4_concat").input[0] is paper_512.get_layer("enc4_dropout").output


def test_full_size_input_gives_full_size_output_in_unit_range():
    model = build_model(make_config("paper", {"base_filters": 4}))
    x = np.random.default_rng(0).random((1, 1120, 1680, 6), dtype=np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (1, 1120, 1680, 3)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1


def test_width_and_depth_from_config():
    small = build_model(make_config("paper", {"base_filters": 8, "depth": 2, "patch_size": 64}))
    names = [l.name for l in small.layers]
    assert "enc2_pool" in names and "enc3_conv1" not in names and "dec2_upconv" in names
    assert small.get_layer("bottleneck_conv1").filters == 32


def test_clear_errors_for_bad_shapes():
    cfg = make_config("paper", {"base_filters": 4})
    with pytest.raises(InputShapeError, match="not a multiple of 16"):
        build_model(cfg, 1000, 1500)
    model = build_model(cfg)
    with pytest.raises(Exception, match="multiples? of 16"):
        model.predict(np.zeros((1, 40, 48, 6), np.float32), verbose=0)
    with pytest.raises(Exception, match=r"takes 6 input channels|expected shape=\(None, None, None, 6\)"):
        model.predict(np.zeros((1, 48, 48, 3), np.float32), verbose=0)


def test_mixed_precision_output_is_float32():
    with dtype_policy("mixed_bfloat16"):
        model = build_model(make_config("paper", {"base_filters": 4}))
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    y = model(np.random.default_rng(1).random((1, 32, 32, 6), dtype=np.float32))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def test_residual_head_starts_as_view_mean():
    cfg = make_config("paper", {"base_filters": 4, "depth": 2, "patch_size": 64, "head": "residual"})
    x = np.random.default_rng(2).random((1, 32, 32, 6), dtype=np.float32)
    y = build_model(cfg)(x)
    np.testing.assert_allclose(np.asarray(y), (x[..., :3] + x[..., 3:]) / 2, atol=1e-6)


def test_residual_head_under_mixed_bfloat16_keeps_the_view_mean_in_float32():
    """Only the correction is computed in bfloat16: an untrained network returns the float32 mean of the views,
    not one rounded to bfloat16's 8 significant bits."""
    cfg = make_config("paper", {"base_filters": 4, "depth": 2, "patch_size": 64, "head": "residual"})
    x = np.random.default_rng(3).random((1, 32, 32, 6), dtype=np.float32)
    with dtype_policy("mixed_bfloat16"):
        model = build_model(cfg)
    assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(model(x)), (x[..., :3] + x[..., 3:]) / 2, atol=1e-7)


def test_auto_precision_is_bfloat16_only_on_a_cpu_with_bfloat16_matrix_units(monkeypatch):
    """auto: bfloat16 with AMX or AVX512-BF16 flags (not under JAX, nor TensorFlow without oneDNN), else float32."""
    import backends
    from model import compute_precision
    native = "float32" if backends.name() == "jax" else "mixed_bfloat16"
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile"})
    if backends.name() == "tensorflow":
        for off in ("0", "false"):
            monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", off)
            assert compute_precision("auto") == "float32"
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert compute_precision("auto") == native
    with dtype_policy("auto"):
        model = build_model(make_config("paper", {"base_filters": 4, "depth": 2, "patch_size": 64}))
    assert model.get_layer("enc1_conv1").compute_dtype == ("float32" if native == "float32" else "bfloat16")
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert compute_precision("auto") == native
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert compute_precision("auto") == "float32"
    assert [compute_precision(p) for p in ("float32", "mixed_bfloat16", "mixed_float16")] == [
        "float32", "mixed_bfloat16", "mixed_float16"]


def test_onednn_kernels_are_on_unless_the_process_chose_before_keras_loads():
    """backends turns TensorFlow's oneDNN CPU kernels on (TensorFlow itself does only on some CPUs), while test.py
    and deblur.py, which choose the low-memory kernels first (inference.prefer_low_memory_cpu), keep theirs."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    show = "import backends, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    for first, expected in (("", "1"), ("import inference; inference.prefer_low_memory_cpu(); ", "0")):
        out = subprocess.run([sys.executable, "-c", first + show], cwd=REPO_DIR, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] == expected


def test_leaky_relu_units_pass_negative_inputs_at_a_fifth(tmp_path):
    """activation=leaky_relu: the first conv's output equals a NumPy 3x3 convolution followed by max(z, 0.2 z),
    so a unit below zero still passes a gradient; the setting survives a save and weights.load_model."""
    import weights
    cfg = make_config("paper", {"base_filters": 4, "depth": 2, "patch_size": 64, "activation": "leaky_relu"})
    model = build_model(cfg)
    x = np.random.default_rng(3).random((1, 16, 16, 6), dtype=np.float32) - 0.5
    first = keras.Model(model.inputs, model.get_layer("enc1_conv1").output)
    got = np.asarray(first(x))[0]
    kernel, bias = model.get_layer("enc1_conv1").get_weights()
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    z = bias + sum(padded[dy:dy + 16, dx:dx + 16] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(got, np.where(z > 0, z, 0.2 * z), atol=1e-5)
    assert (got < 0).any()
    path = str(tmp_path / "leaky.keras")
    model.save(path)
    assert weights.load_model(path, make_config("paper"))[1].activation == "leaky_relu"


def _noisy_views(sigma, seed=0, h=96, w=128, disparity=3):
    """Smooth content, the right view shifted by `disparity` px, white noise of std `sigma` in each view."""
    import cv2
    rng = np.random.default_rng(seed)
    content = cv2.GaussianBlur(rng.random((h, w + disparity, 3)).astype(np.float32), (0, 0), 2)
    left, right = content[:, :w], content[:, disparity:]
    views = np.concatenate([left, right], axis=-1) + rng.normal(0, sigma, (h, w, 6))
    return views[None].astype(np.float32)


@pytest.mark.parametrize("sigma", [0.003, 0.02, 0.06])
def test_noise_level_reads_the_std_of_white_noise_in_each_view(sigma):
    """NoiseLevel on two views that differ by disparity and by white noise of known std: sigma within 6%, for the
    combined image (its own noise: sigma / sqrt(2)) likewise; the channel the network sees is log10(sigma) + 2."""
    x = _noisy_views(sigma)
    assert float(NoiseLevel("dual").sigma(x)[0]) == pytest.approx(sigma, rel=0.06)
    combined = (x[..., :3] + x[..., 3:]) / 2
    assert float(NoiseLevel("single").sigma(combined)[0]) == pytest.approx(sigma / np.sqrt(2), rel=0.06)
    channel = np.asarray(NoiseLevel("dual")(x))
    assert channel.shape == (1, 96, 128, 1) and np.ptp(channel) == 0
    assert channel[0, 0, 0, 0] == pytest.approx(np.log10(sigma) + 2, abs=0.03)


def test_noise_level_of_a_noise_free_input_is_the_floor_and_each_image_gets_its_own():
    """Noise-free views that agree (an in-focus scene) read as the floor, 1e-4 unless set; noise of std 5e-4
    reads as itself above that floor and as a floor of 1e-3; a noisy image beside them reads its own."""
    x = np.concatenate([_noisy_views(0.0, disparity=0), _noisy_views(0.0005, seed=2, disparity=0),
                        _noisy_views(0.03, seed=1)])
    channel = np.asarray(NoiseLevel("dual")(x))[:, 0, 0, 0]
    np.testing.assert_allclose(channel, np.log10([1e-4, 5e-4, 0.03]) + 2, atol=0.03)
    raised = np.asarray(NoiseLevel("dual", floor=1e-3)(x))[:, 0, 0, 0]
    np.testing.assert_allclose(raised, np.log10([1e-3, 1e-3, 0.03]) + 2, atol=0.03)


def test_noise_input_adds_one_input_channel_survives_save_and_keeps_its_estimate_in_float32(tmp_path):
    """noise_input: the first conv takes 7 channels (9 x 16 more weights for the demo), the untrained residual
    network still returns the view mean, a saved model loads with the setting, and under mixed bfloat16 the
    estimate is the float32 one (bfloat16 rounds the views to steps of 2**-8, coarser than low noise)."""
    import weights
    plain, told = (make_config("demo", {"noise_input": on}) for on in (False, True))
    model = build_model(told)
    assert model.get_layer("enc1_conv1").kernel.shape == (3, 3, 7, 16)
    assert count_params(model) - count_params(build_model(plain)) == 9 * 16
    x = _noisy_views(0.002)[:, :64, :64]
    np.testing.assert_allclose(np.asarray(model(x)), (x[..., :3] + x[..., 3:]) / 2, atol=1e-6)
    with dtype_policy("mixed_bfloat16"):
        mixed = build_model(told)
    level = keras.Model(mixed.inputs, mixed.get_layer("noise_level").output)
    assert float(np.asarray(level(x))[0, 0, 0, 0]) == pytest.approx(np.log10(0.002) + 2, abs=0.05)
    path = str(tmp_path / "told.keras")
    model.save(path)
    loaded, loaded_cfg = weights.load_model(path, make_config("demo"))
    assert loaded_cfg.noise_input is True
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


def _level(model, x):
    return float(np.asarray(keras.Model(model.inputs, model.get_layer("noise_level").output)(x))[0, 0, 0, 0])


def test_the_noise_floor_is_saved_with_the_weights_and_older_files_keep_theirs(tmp_path):
    """A network built with noise_floor 1e-3 loads with that floor whatever the config asks, also when rebuilt in
    another precision, and tells a noise-free input -1; a file saved before the floor was a setting (its layer
    config without `floor`) loads with the floor it was trained at, 1e-4."""
    import json
    import zipfile
    import weights
    x = _noisy_views(0.0, disparity=0)[:, :64, :64]
    path = str(tmp_path / "floor.keras")
    build_model(make_config("demo", {"noise_floor": 1e-3, "precision": "float32"})).save(path)
    for precision in ("float32", "mixed_bfloat16"):
        loaded, loaded_cfg = weights.load_model(path, make_config("demo", {"precision": precision}))
        assert loaded_cfg.noise_floor == 1e-3 and _level(loaded, x) == pytest.approx(-1.0)
    older = str(tmp_path / "older.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(older, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                saved = json.loads(data)
                layer, = (l for l in saved["config"]["layers"] if l["class_name"] == "NoiseLevel")
                del layer["config"]["floor"]
                data = json.dumps(saved).encode()
            dst.writestr(item, data)
    loaded, loaded_cfg = weights.load_model(older, make_config("demo", {"noise_floor": 1e-3}))
    assert loaded_cfg.noise_floor == 1e-4 and _level(loaded, x) == pytest.approx(-2.0)


def _backend_available(name):
    probe = {"torch": "torch", "jax": "jax"}[name]
    return subprocess.run([sys.executable, "-c", f"import {probe}"], capture_output=True).returncode == 0


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_builds_and_runs_under_another_backend(backend):
    if not _backend_available(backend):
        pytest.skip(f"{backend} not installed")
    code = ("import sys, numpy as np\n"
            "from config import make_config\nfrom model import build_model, count_params\n"
            "import keras\nassert keras.backend.backend() == sys.argv[1]\n"
            "m = build_model(make_config('paper'))\nprint(count_params(m))\n"
            "y = m.predict(np.random.rand(1, 48, 32, 6).astype('float32'), verbose=0)\n"
            "assert y.shape == (1, 48, 32, 3) and 0 <= y.min() and y.max() <= 1\n"
            "from model import NoiseLevel\nrng = np.random.default_rng(0)\n"
            "x = (rng.random((2, 40, 56, 6)) * 0.2 + rng.normal(0, 0.01, (2, 40, 56, 6))).astype('float32')\n"
            "print(*np.asarray(NoiseLevel('dual')(x))[:, 0, 0, 0])\n"
            "print('tensorflow' in sys.modules)\n")
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", code, backend], cwd=REPO_DIR, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, level0, level1, tf_imported = out.stdout.split()[-4:]
    assert count == "31035151"
    rng = np.random.default_rng(0)   # the same views here, under this process's backend: the same noise level
    x = (rng.random((2, 40, 56, 6)) * 0.2 + rng.normal(0, 0.01, (2, 40, 56, 6))).astype("float32")
    np.testing.assert_allclose([float(level0), float(level1)], np.asarray(NoiseLevel("dual")(x))[:, 0, 0, 0],
                               atol=1e-5)
    assert tf_imported == "False"
