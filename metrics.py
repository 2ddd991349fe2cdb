"""The evaluation metrics of the paper's Table 1 (protocol "Evaluation"): PSNR, SSIM, MAE in this process,
LPIPS (AlexNet, v0.1) in a separate worker process that never imports TensorFlow.

All metrics take float (H, W, 3) RGB arrays in [0, 1], ground truth first, before any quantisation.

    m = image_metrics(gt, pred)            # {"psnr": .., "ssim": .., "mae": ..}

    try:
        lp = LpipsClient()                 # starts lpips_worker.py, waits until its network is built
    except LpipsUnavailable as e:          # one sentence: why, and how to provide the weights
        lp = None                          # go on without LPIPS; report it as unavailable, never a number
    for name, gt, pred in images:
        ...
        if lp:
            lp.submit(name, gt, pred)      # returns at once (blocks only while max_pending pairs wait);
                                           # the worker computes while the caller runs the next inference
    values = lp.wait_all() if lp else {}   # {name: lpips}
    if lp:
        lp.close()                         # or use `with LpipsClient() as lp:`

The worker is a plain subprocess of this Python (not multiprocessing: spawn would re-import a caller that
imports TensorFlow, fork after TensorFlow is unsafe). Pairs travel as pickled float32 arrays over its stdin,
results come back over its stdout; it uses `threads` CPU threads and no GPU.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time

import numpy as np
from skimage.metrics import structural_similarity

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(REPO_DIR, "lpips_worker.py")
RANGE_TOLERANCE = 0.01  # values in [-0.01, 1.01] are accepted (rounding); beyond that the input is wrong


class MetricError(ValueError):
    """Inputs the metrics cannot be computed on (shape, channels, dtype, NaN/inf, range); one-line message."""


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be computed (missing weights, packages, or the worker died); the message says why and what to do."""


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


class LpipsClient:
    """LPIPS (AlexNet, v0.1, RGB, [0,1] inputs mapped to [-1,1], ground truth first) computed by lpips_worker.py.

    The constructor starts the worker and waits until its network is built (a few seconds); if that fails it
    raises LpipsUnavailable with one sentence saying why (e.g. the AlexNet weights are not in torchvision's
    cache under TORCH_HOME and cannot be downloaded, and where to put them).

    pnet_rand: randomly initialised AlexNet (seeded by `seed`; for tests, needs no download).
    threads: torch CPU threads in the worker. download: fetch missing AlexNet weights (15 s network timeout).
    max_pending: pairs queued before submit() blocks (each full-size pair is ~45 MB as float32).
    Keys are any picklable hashable values (e.g. image names); each may be submitted once.
    """

    def __init__(self, pnet_rand: bool = False, seed: int = 0, threads: int = 2, download: bool = True,
                 max_pending: int = 4, startup_timeout: float = 120.0):
        cmd = [sys.executable, WORKER, "--threads", str(threads), "--seed", str(seed)]
        cmd += ["--pnet-rand"] if pnet_rand else []
        cmd += [] if download else ["--no-download"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
        self._cond = threading.Condition()
        self._results: dict = {}
        self._errors: dict = {}
        self._submitted: set = set()
        self._dead: str | None = None  # why the worker cannot be used any more
        self._ready = False
        self._closed = False
        self.info: dict = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._read_loop, name="lpips-reader", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="lpips-sender", daemon=True)
        self._reader.start()
        self._sender.start()
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self._dead is not None, timeout=startup_timeout)
            failure = self._dead if not self._ready else None
            if not self._ready and failure is None:
                failure = f"LPIPS unavailable: the LPIPS worker did not start within {startup_timeout:g} s"
        if failure is not None:
            self.close(wait=False)
            raise LpipsUnavailable(failure)

    # --- caller side ---

    def submit(self, key, gt, pred) -> None:
        """Queue one pair (RGB floats in [0,1], ground truth first); returns once queued, the worker computes it."""
        gt, pred = check_pair(gt, pred)
        with self._cond:
            self._raise_if_dead()
            if self._closed:
                raise RuntimeError("LpipsClient is closed")
            if key in self._submitted:
                raise ValueError(f"LPIPS: key {key!r} was already submitted")
            try:
                pickle.dumps(key)
            except Exception as e:
                raise ValueError(f"LPIPS: key {key!r} cannot be sent to the worker ({e})") from None
            self._submitted.add(key)
        item = (key, np.ascontiguousarray(gt, dtype=np.float32), np.ascontiguousarray(pred, dtype=np.float32))
        while True:  # block while max_pending pairs wait, but never on a dead worker
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                with self._cond:
                    self._raise_if_dead()

    def collect(self) -> dict:
        """The results received so far, {key: lpips}; does not wait."""
        with self._cond:
            return dict(self._results)

    def result(self, key, timeout: float | None = None) -> float:
        """The LPIPS of one submitted pair, waiting for it (LpipsUnavailable if the worker died or timed out)."""
        with self._cond:
            if key not in self._submitted:
                raise KeyError(f"LPIPS: key {key!r} was never submitted")
            self._cond.wait_for(lambda: key in self._results or key in self._errors or self._dead is not None,
                                       timeout=timeout)
            if key in self._results:
                return self._results[key]
            if key in self._errors:
                raise LpipsUnavailable(f"LPIPS failed for {key!r}: {self._errors[key]}")
            self._raise_if_dead()
            raise LpipsUnavailable(f"LPIPS: no result for {key!r} within {timeout:g} s")

    def wait_all(self, timeout: float | None = None) -> dict:
        """Wait for every submitted pair and return {key: lpips} (raises like result())."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            keys = list(self._submitted)
        for key in keys:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.result(key, timeout=left)
        return self.collect()

    def close(self, wait: bool = True) -> None:
        """Stop the worker: after the queued pairs when wait=True, at once otherwise. Safe to call twice."""
        with self._cond:
            already = self._closed
            self._closed = True
        if not already and wait and self._dead is None:
            self._queue.put(None)
            self._sender.join(timeout=300)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if not already:
            with self._cond:
                if self._dead is None:
                    self._dead = "LPIPS unavailable: the LPIPS client was closed"
                self._cond.notify_all()
            try:
                self._queue.put_nowait(None)  # release the sender if it still waits
            except queue.Full:
                pass
            self._reader.join(timeout=5)
            self._sender.join(timeout=5)
            for f in (self._proc.stdin, self._proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(wait=exc_type is None)

    # --- threads ---

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise LpipsUnavailable(self._dead)

    def _mark_dead(self, why: str) -> None:
        with self._cond:
            if self._dead is None:
                self._dead = why
            self._cond.notify_all()

    def _send_loop(self) -> None:
        stdin = self._proc.stdin
        while True:
            item = self._queue.get()
            try:
                pickle.dump(item, stdin, protocol=pickle.HIGHEST_PROTOCOL)
                stdin.flush()
                if item is None:
                    stdin.close()
                    return
            except Exception:  # broken pipe: the worker is gone
                self._mark_dead(self._exit_reason())
                return

    def _read_loop(self) -> None:
        stdout = self._proc.stdout
        while True:
            try:
                msg = pickle.load(stdout)
            except Exception:  # end of file (worker gone) or a torn message
                with self._cond:
                    clean = self._closed and self._ready
                if not clean:
                    self._mark_dead(self._exit_reason())
                else:
                    self._mark_dead("LPIPS unavailable: the LPIPS client was closed")
                return
            kind = msg.get("type")
            with self._cond:
                if kind == "ready":
                    self._ready = True
                    self.info = {k: v for k, v in msg.items() if k != "type"}
                elif kind == "result":
                    self._results[msg["key"]] = msg["value"]
                elif kind == "error":
                    self._errors[msg["key"]] = msg["message"]
                elif kind == "fatal":
                    self._dead = msg["message"]
                self._cond.notify_all()

    def _exit_reason(self) -> str:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        state = "stopped answering" if code is None else f"exited with status {code}"
        return f"LPIPS unavailable: the LPIPS worker {state} (its messages, if any, are above)"


def lpips_available(**kwargs) -> tuple[bool, str]:
    """(True, "") if an LpipsClient(**kwargs) starts (it is then closed again; takes a few seconds), else (False, why)."""
    try:
        LpipsClient(**kwargs).close()
        return True, ""
    except LpipsUnavailable as e:
        return False, str(e)
