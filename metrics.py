"""The evaluation metrics of the paper's Table 1 (protocol "Evaluation"): PSNR, SSIM, MAE in this process, and
LPIPS (AlexNet, v0.1) of image files in a separate process that never imports TensorFlow (torch beside
TensorFlow in one process was seen to crash): this file, run as a script by `lpips_of_files`.

All metrics take float (H, W, 3) RGB arrays in [0, 1], ground truth first, before any quantisation;
LPIPS takes the files and reads them the same way (images.read_image, images.to_float).

    m = image_metrics(gt, pred)                      # {"psnr": .., "ssim": .., "mae": ..}
    try:
        values = lpips_of_files([(gt_png, pred_png), ...])   # [lpips, ...] in the same order
    except LpipsUnavailable as e:                    # one line: why (no torch/lpips, no AlexNet weights offline)
        values = None                                # report LPIPS as unavailable, never a made-up number
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
from skimage.metrics import structural_similarity

from config import UserError

RANGE_TOLERANCE = 0.01  # values in [-0.01, 1.01] are accepted (rounding); beyond that the input is wrong
DOWNLOAD_SOCKET_TIMEOUT_S = 15


class MetricError(UserError):
    """Inputs the metrics cannot be computed on (shape, channels, dtype, NaN/inf, range); one-line message."""


class LpipsUnavailable(UserError):
    """LPIPS cannot be computed (packages, weights offline, unreadable files, its process died); one line why."""


def check_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (ground truth, prediction) pair: same (H, W, 3) shape, float, finite, within [0, 1] (+-0.01)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    for name, a in (("ground truth", gt), ("prediction", pred)):
        if a.ndim != 3 or a.shape[-1] != 3:
            raise MetricError(f"{name} has shape {a.shape}, expected (H, W, 3) RGB")
        if a.dtype.kind != "f":
            raise MetricError(f"{name} is {a.dtype}, expected floats in [0, 1] (see images.to_float)")
    if gt.shape != pred.shape:
        raise MetricError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    for name, a in (("ground truth", gt), ("prediction", pred)):
        if not np.all(np.isfinite(a)):
            raise MetricError(f"{name} contains NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise MetricError(f"{name} has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")
    return gt, pred


def mse(gt, pred) -> float:
    """Mean squared error over all pixels and channels, accumulated in float64."""
    gt, pred = check_pair(gt, pred)
    return float(np.mean(np.square(gt.astype(np.float64) - pred.astype(np.float64))))


def psnr(gt, pred) -> float:
    """10*log10(1/MSE) in dB for data range 1; identical images give inf (callers averaging must handle it)."""
    err = mse(gt, pred)
    return float("inf") if err == 0 else float(10.0 * np.log10(1.0 / err))


def ssim(gt, pred) -> float:
    """scikit-image SSIM with its defaults (7x7 uniform window, mean over channels), data_range=1, in float64."""
    gt, pred = check_pair(gt, pred)
    if min(gt.shape[:2]) < 7:
        raise MetricError(f"images of {gt.shape[1]}x{gt.shape[0]} are smaller than SSIM's 7x7 window")
    return float(structural_similarity(gt.astype(np.float64), pred.astype(np.float64), data_range=1.0, channel_axis=-1))


def mae(gt, pred) -> float:
    """Mean absolute error over all pixels and channels, in float64."""
    gt, pred = check_pair(gt, pred)
    return float(np.mean(np.abs(gt.astype(np.float64) - pred.astype(np.float64))))


def image_metrics(gt, pred) -> dict:
    """PSNR, SSIM and MAE of one image pair: {"psnr": float, "ssim": float, "mae": float}."""
    return {"psnr": psnr(gt, pred), "ssim": ssim(gt, pred), "mae": mae(gt, pred)}


def lpips_of_files(pairs, random_backbone: bool = False, threads: int = 0, progress: bool = False) -> list[float]:
    """LPIPS (AlexNet, v0.1, RGB, [0, 1] inputs mapped to [-1, 1], ground truth first) of the image files
    [(gt_path, pred_path), ...], in that order, computed on the CPU by this file run as a separate process. A file
    given as (path, black, white) is read between those levels (images.to_float: raw frames).

    With no pairs it only checks that LPIPS can be computed (a few seconds), so that a caller can fail or warn
    before hours of inference. Raises LpipsUnavailable with one line saying why, e.g. that the AlexNet
    backbone weights are not in torchvision's cache under TORCH_HOME and cannot be downloaded, and where to put
    them. random_backbone: a seeded random AlexNet instead of the ImageNet weights, for tests (no download).
    threads: torch CPU threads (0: one per core). progress: a progress bar on stderr.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(threads or os.cpu_count() or 1)]
    cmd += ["--random-backbone"] * random_backbone + ["--progress"] * progress
    refs = [[_file_ref(a), _file_ref(b)] for a, b in pairs]
    proc = subprocess.run(cmd, input=json.dumps(refs), stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"error": f"LPIPS unavailable: its process exited with status {proc.returncode} "
                           f"(its messages, if any, are above)"}
    if "error" in answer:
        raise LpipsUnavailable(answer["error"])
    return answer["values"]


def _file_ref(ref) -> list:
    """[path, black, white] of a path or of a (path, black, white) tuple; white None: the bit depth's maximum."""
    path, black, white = (ref, 0, None) if isinstance(ref, (str, os.PathLike)) else ref
    return [str(path), black, white]


# --------------------------------------------------------------------------------------------- the LPIPS process

def _lpips_main() -> None:
    """Run by lpips_of_files: JSON [[[gt_path, black, white], [pred_path, black, white]], ...] on stdin, one JSON
    line on stdout, {"values": [...]} or {"error": "one line"}. Imports torch and lpips, never TensorFlow."""
    parser = argparse.ArgumentParser(description="LPIPS of image file pairs (run by metrics.lpips_of_files)")
    parser.add_argument("--random-backbone", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: stop quietly, the caller reports it
    warnings.filterwarnings("ignore", category=UserWarning)
    answer, sys.stdout = sys.stdout, sys.stderr  # libraries' prints go to stderr; stdout carries the answer
    try:
        result = {"values": _lpips_values(json.load(sys.stdin), args)}
    except (LpipsUnavailable, MetricError) as e:
        result = {"error": str(e)}
    except Exception as e:  # anything else: still one line for the caller
        result = {"error": f"LPIPS unavailable: {type(e).__name__}: {e}"}
    print(json.dumps(result), file=answer, flush=True)


def _lpips_values(pairs: list, args) -> list[float]:
    try:
        import lpips
        import torch
        from torchvision.models import AlexNet_Weights
        from tqdm import tqdm
    except ImportError as e:
        raise LpipsUnavailable(f"LPIPS unavailable: cannot import {e.name} ({e}); install requirements.txt") from e
    from images import ImageError, read_image, to_float
    torch.set_num_threads(max(1, args.threads))
    if args.random_backbone:
        torch.manual_seed(0)
    else:
        _ensure_alexnet_weights(torch, AlexNet_Weights.IMAGENET1K_V1.url)
    net = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=args.random_backbone, verbose=False).eval()
    values = []
    for gt_ref, pred_ref in tqdm(pairs, desc="lpips", unit="pair", disable=not args.progress, dynamic_ncols=True):
        try:
            gt, pred = check_pair(*(to_float(read_image(path), black, white)
                                    for path, black, white in (gt_ref, pred_ref)))
        except (ImageError, MetricError) as e:
            raise MetricError(f"LPIPS of {pred_ref[0]} against {gt_ref[0]}: {e}") from e
        with torch.inference_mode():
            t_gt, t_pred = (torch.from_numpy(a).permute(2, 0, 1)[None] for a in (gt, pred))
            values.append(float(net(t_gt, t_pred, normalize=True).item()))  # normalize: [0,1] -> [-1,1]
    return values


def _ensure_alexnet_weights(torch, url: str) -> None:
    """Make sure torchvision's cache holds the AlexNet weights: download them with a short network timeout,
    or fail saying where to put them."""
    name = os.path.basename(url)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return
    fix = (f"put {name} (from {url}) at {path} (torchvision's cache under TORCH_HOME="
           f"{os.path.dirname(torch.hub.get_dir())}; set TORCH_HOME to use another folder)")
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    print(f"LPIPS: downloading {url} to {path}", file=sys.stderr)
    try:
        os.makedirs(folder, exist_ok=True)
        match = re.search(r"-([a-f0-9]+)\.", name)
        torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None, progress=True)
    except Exception as e:
        reason = str(getattr(e, "reason", e)) or type(e).__name__
        raise LpipsUnavailable(f"LPIPS unavailable: the AlexNet backbone weights are not cached and could not be "
                               f"downloaded ({reason}); {fix}") from e


if __name__ == "__main__":
    _lpips_main()
