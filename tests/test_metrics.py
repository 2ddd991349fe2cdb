"""Metrics: PSNR/SSIM/MAE against hand computations, input validation, and LPIPS through its worker process
(random AlexNet or a fake cached one, so nothing is downloaded; direct torch computations run in a
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

from metrics import (LpipsClient, LpipsUnavailable, MetricError, image_metrics, lpips_available, mae, psnr,
                     ssim)

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


# --- LPIPS through the worker ---

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """LPIPS of one pair computed directly with lpips/torch in a TensorFlow-free subprocess, plus a fake cache."""
    tmp = tmp_path_factory.mktemp("lpips_ref")
    gt, pred = textured(), noisy(textured(), 0.08)
    np.savez(tmp / "pair.npz", gt=gt, pred=pred)
    env = dict(os.environ, TORCH_HOME=str(tmp / "torch_home"), https_proxy=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY,
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", REFERENCE, str(tmp / "pair.npz"), ALEXNET_FILE], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"gt": gt, "pred": pred, "torch_home": tmp / "torch_home", **json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def rand_client():
    with LpipsClient(pnet_rand=True, seed=0, threads=1) as client:
        yield client


def test_lpips_worker_matches_direct_rgb_scaled_computation(rand_client, reference):
    gt, pred = reference["gt"], reference["pred"]
    rand_client.submit("pair", gt, pred)
    rand_client.submit("swapped", pred, gt)
    value = rand_client.result("pair", timeout=60)
    assert value == pytest.approx(reference["rand"], rel=1e-5, abs=1e-7)
    assert rand_client.result("swapped", timeout=60) == pytest.approx(value, rel=1e-5)
    # for this image channel order and [-1, 1] scaling change the value, so the match above checks both
    assert abs(reference["rand_bgr"] - reference["rand"]) > 0.02 * reference["rand"]
    assert abs(reference["rand_unscaled"] - reference["rand"]) > 0.02 * reference["rand"]
    assert rand_client.info["tensorflow_imported"] is False and rand_client.info["threads"] == 1


def test_lpips_zero_for_identical_and_monotone_in_noise(rand_client):
    gt = textured(seed=3)
    sigmas = [0.0, 0.02, 0.05, 0.1, 0.2]
    for s in sigmas:
        rand_client.submit(("noise", s), gt, noisy(gt, s, seed=4))
    done = rand_client.wait_all(timeout=60)
    values = [done[("noise", s)] for s in sigmas]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_lpips_submit_validates_before_sending(rand_client):
    with pytest.raises(MetricError, match="differ in shape"):
        rand_client.submit("bad", np.zeros((64, 64, 3)), np.zeros((64, 32, 3)))
    rand_client.submit("once", textured(), textured())
    with pytest.raises(ValueError, match="already submitted"):
        rand_client.submit("once", textured(), textured())
    with pytest.raises(KeyError):
        rand_client.result("never")


def test_lpips_uses_weights_cached_under_torch_home(reference, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(reference["torch_home"]))
    with LpipsClient(download=False, threads=1) as client:
        client.submit(0, reference["gt"], reference["pred"])
        value = client.result(0, timeout=60)
    assert value == pytest.approx(reference["cached"], rel=1e-5, abs=1e-7)
    assert abs(value - reference["rand"]) > 1e-4  # the cached file was used, not a random backbone


def test_lpips_offline_fails_fast_saying_where_weights_go(tmp_path, monkeypatch):
    home = tmp_path / "empty_torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    start = time.monotonic()
    with pytest.raises(LpipsUnavailable) as info:
        LpipsClient(download=False)
    message = str(info.value)
    assert time.monotonic() - start < 30
    expected = os.path.join(str(home), "hub", "checkpoints", ALEXNET_FILE)
    assert "TORCH_HOME" in message and expected in message and "\n" not in message

    # with downloading allowed, a network failure gives the same advice (the proxy refuses at once)
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, DEAD_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    ok, why = lpips_available(threads=1)
    assert not ok and "could not be downloaded" in why and expected in why and "TORCH_HOME" in why
    assert time.monotonic() - start < 30
    assert not os.path.exists(expected)


def test_lpips_worker_death_is_reported_not_hung():
    client = LpipsClient(pnet_rand=True, threads=1)
    try:
        client.submit("a", textured(), textured())
        assert client.result("a", timeout=60) == 0.0
        client._proc.kill()
        start = time.monotonic()
        with pytest.raises(LpipsUnavailable, match="exited"):
            for i in range(10):  # the pipe may still take a pair or two before it breaks
                client.submit(i, textured(), textured())
            client.wait_all(timeout=30)
        assert time.monotonic() - start < 20
    finally:
        client.close()
