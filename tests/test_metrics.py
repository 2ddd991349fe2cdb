"""Metrics: PSNR/SSIM/MAE against hand computations, input validation, and LPIPS of image files through its
own process (random AlexNet or a fake cached one, so nothing is downloaded; direct torch computations run in a
subprocess because other test files import TensorFlow into this one)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from config import REPO_DIR
from images import read_image, to_float, write_image
from metrics import LpipsUnavailable, MetricError, image_metrics, lpips_of_files, mae, psnr, ssim

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
DEAD_PROXY = "http://127.0.0.1:9"  # connection refused at once: any download attempt fails, nothing leaves


def textured(h=64, w=96, seed=0):
    """A float64 RGB image whose channels differ (R noise, G ramp, B blobs), so swapping R and B matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = rng.uniform(0.1, 0.9, (h, w))
    g = 0.1 + 0.8 * x / (w - 1)
    b = 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.stack([r, g, b], axis=-1)


def noisy(img, sigma, seed=1):
    return np.clip(img + sigma * np.random.default_rng(seed).standard_normal(img.shape), 0, 1)


# --- PSNR, SSIM, MAE ---

def test_constant_offset_gives_20db_and_mae_01():
    gt = np.random.default_rng(0).uniform(0, 0.9, (16, 20, 3))
    for dtype in (np.float64, np.float32):
        m = image_metrics(gt.astype(dtype), (gt + 0.1).astype(dtype))
        assert m["psnr"] == pytest.approx(20.0, abs=1e-5)
        assert m["mae"] == pytest.approx(0.1, abs=1e-6)
        assert set(m) == {"psnr", "ssim", "mae"} and all(isinstance(v, float) for v in m.values())


def test_psnr_and_mae_by_hand():
    gt = np.zeros((4, 4, 3))
    pred = gt.copy()
    pred[:2] = 0.2  # half of all values off by 0.2: MSE 0.02, MAE 0.1
    assert psnr(gt, pred) == pytest.approx(10 * np.log10(1 / 0.02), abs=1e-9)
    assert mae(gt, pred) == pytest.approx(0.1, abs=1e-12)
    assert psnr(gt, gt) == float("inf") and mae(gt, gt) == 0.0


def test_ssim_is_skimage_default_uniform_window_mean_over_channels():
    gt = textured(32, 40)
    pred = noisy(gt, 0.1)
    value = ssim(gt, pred)
    assert value == structural_similarity(gt, pred, data_range=1, channel_axis=-1)
    per_channel = [structural_similarity(gt[..., c], pred[..., c], data_range=1) for c in range(3)]
    assert value == pytest.approx(np.mean(per_channel), abs=1e-12)
    gaussian = structural_similarity(gt, pred, data_range=1, channel_axis=-1, gaussian_weights=True)
    assert abs(value - gaussian) > 1e-3
    assert ssim(gt.astype(np.float32), pred.astype(np.float32)) == pytest.approx(value, abs=1e-6)
    assert ssim(gt, gt) == 1.0 and 0 < value < 1


@pytest.mark.parametrize("gt, pred, words", [
    (np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), "differ in shape"),
    (np.zeros((8, 8)), np.zeros((8, 8)), "expected (H, W, 3)"),
    (np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), "expected (H, W, 3)"),
    (np.zeros((8, 8, 3), np.uint16), np.zeros((8, 8, 3), np.uint16), "uint16"),
    (np.zeros((8, 8, 3)), np.full((8, 8, 3), np.nan), "NaN"),
    (np.full((8, 8, 3), np.inf), np.zeros((8, 8, 3)), "NaN or inf"),
    (np.zeros((8, 8, 3)), np.full((8, 8, 3), 1.5), "expected [0, 1]"),
    (np.full((8, 8, 3), -0.2), np.zeros((8, 8, 3)), "expected [0, 1]"),
])
def test_bad_inputs_raise_one_line_metric_error(gt, pred, words):
    for fn in (psnr, ssim, mae, image_metrics):
        with pytest.raises(MetricError) as info:
            fn(gt, pred)
        assert words in str(info.value) and "\n" not in str(info.value)
    assert issubclass(MetricError, ValueError)


def test_rounding_slack_accepted_and_small_images_rejected_by_ssim():
    gt = np.full((8, 8, 3), 1.005)
    assert psnr(gt, np.clip(gt, 0, 1)) > 40
    with pytest.raises(MetricError, match="7x7"):
        ssim(np.zeros((6, 8, 3)), np.zeros((6, 8, 3)))


# --- LPIPS of image files, in its own process ---

REFERENCE = textwrap.dedent("""
    import json, os, sys
    import numpy as np, torch, lpips, torchvision
    torch.set_num_threads(1)
    d = np.load(sys.argv[1])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]
    gt, pred = d["gt"], d["pred"]
    torch.manual_seed(0)
    rand = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
    # a fake ImageNet AlexNet in torchvision's cache, then the official (cached, no download) construction
    folder = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints")
    os.makedirs(folder)
    torch.manual_seed(123)
    torch.save(torchvision.models.alexnet().state_dict(), os.path.join(folder, sys.argv[2]))
    cached = lpips.LPIPS(pretrained=True, net="alex", version="0.1", verbose=False)
    with torch.no_grad():
        out = {"rand": rand(2 * t(gt) - 1, 2 * t(pred) - 1).item(),
               "rand_bgr": rand(2 * t(gt[..., ::-1]) - 1, 2 * t(pred[..., ::-1]) - 1).item(),
               "rand_unscaled": rand(t(gt), t(pred)).item(),
               "cached": cached(2 * t(gt) - 1, 2 * t(pred) - 1).item()}
    print(json.dumps(out))
""")


def png(path, img, bits=16):
    write_image(str(path), img, bits=bits)
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One pair as 16-bit PNGs, and its LPIPS computed directly with lpips/torch from the floats those files
    hold, in a TensorFlow-free subprocess; plus a fake cached AlexNet under torch_home."""
    tmp = tmp_path_factory.mktemp("lpips_ref")
    gt_path, pred_path = png(tmp / "gt.png", textured()), png(tmp / "pred.png", noisy(textured(), 0.08))
    np.savez(tmp / "pair.npz", gt=to_float(read_image(gt_path)), pred=to_float(read_image(pred_path)))
    env = dict(os.environ, TORCH_HOME=str(tmp / "torch_home"), https_proxy=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY,
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", REFERENCE, str(tmp / "pair.npz"), ALEXNET_FILE], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"gt": gt_path, "pred": pred_path, "torch_home": tmp / "torch_home",
            **json.loads(proc.stdout.strip().splitlines()[-1])}


def test_lpips_matches_direct_rgb_scaled_computation_in_order(reference, tmp_path):
    gt, pred = reference["gt"], reference["pred"]
    flat = png(tmp_path / "flat.png", textured(seed=3))
    noise = [png(tmp_path / f"noise{s}.png", noisy(textured(seed=3), s, seed=4)) for s in (0.02, 0.05, 0.1, 0.2)]
    values = lpips_of_files([(gt, pred), (pred, gt), (flat, flat)] + [(flat, n) for n in noise],
                            random_backbone=True, threads=1)
    assert values[0] == pytest.approx(reference["rand"], rel=1e-5, abs=1e-7)
    assert values[1] == pytest.approx(values[0], rel=1e-5)
    # for this image channel order and [-1, 1] scaling change the value, so the match above checks both
    assert abs(reference["rand_bgr"] - reference["rand"]) > 0.02 * reference["rand"]
    assert abs(reference["rand_unscaled"] - reference["rand"]) > 0.02 * reference["rand"]
    assert values[2] == 0.0 and all(a < b for a, b in zip(values[2:], values[3:])), values  # monotone in noise


def test_lpips_process_never_imports_tensorflow():
    code = "import sys, metrics, images; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_lpips_bad_files_fail_with_one_line_naming_them(tmp_path):
    small = png(tmp_path / "small.png", textured(64, 32))
    with pytest.raises(LpipsUnavailable) as info:
        lpips_of_files([(png(tmp_path / "gt.png", textured()), small)], random_backbone=True, threads=1)
    assert "differ in shape" in str(info.value) and small in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LpipsUnavailable, match="nowhere.png: file not found"):
        lpips_of_files([(small, str(tmp_path / "nowhere.png"))], random_backbone=True, threads=1)


def test_lpips_uses_weights_cached_under_torch_home(reference, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(reference["torch_home"]))
    value, = lpips_of_files([(reference["gt"], reference["pred"])], threads=1)
    assert value == pytest.approx(reference["cached"], rel=1e-5, abs=1e-7)
    assert abs(value - reference["rand"]) > 1e-4  # the cached file was used, not a random backbone


def test_lpips_offline_fails_fast_saying_where_weights_go(tmp_path, monkeypatch):
    home = tmp_path / "empty_torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for var in ("https_proxy", "HTTPS_PROXY"):  # the proxy refuses at once: the download fails, nothing leaves
        monkeypatch.setenv(var, DEAD_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(LpipsUnavailable) as info:
        lpips_of_files([], threads=1)  # no pairs: only the check that LPIPS can run
    assert time.monotonic() - start < 30
    message = str(info.value)
    expected = os.path.join(str(home), "hub", "checkpoints", ALEXNET_FILE)
    assert "could not be downloaded" in message and expected in message and "TORCH_HOME" in message
    assert "\n" not in message and not os.path.exists(expected)


def test_lpips_process_dying_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits 1 at once, answering nothing
    with pytest.raises(LpipsUnavailable, match=r"^LPIPS unavailable: its process exited with status 1 "):
        lpips_of_files([("a.png", "b.png")])
