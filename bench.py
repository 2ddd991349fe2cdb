"""Speed and memory of DPDNet, measured: inference per 1680x1120 image, the bare training step and
train.py's whole loop (its loader, step and callbacks) beside it, train.py's loader alone, the FLOP count and
achieved FLOP/s next to the device's measured matrix rate, data_prep against PNG decoding, test.py's memory.

`python bench.py` prints one table and writes results/bench/<host>.md and .json. Each figure is the
median of several timed runs after a warm-up (min and max beside it). The network runs under every
Keras backend given by --backends (TensorFlow here; JAX and PyTorch on machines without TensorFlow);
each backend runs in its own process because Keras fixes its backend at import.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

from config import REPO_DIR, make_config

PAPER_STEPS = 280_000          # 200 epochs x 1,400 steps of batch 5
PAPER_TITANX_SECONDS = 0.5     # the paper's time for one 1680x1120 image
GOAL_INFER_S = 0.010           # per image, bf16, H100
GOAL_TRAIN_HOURS = 2.0


def conv_flops(cfg, height: int, width: int) -> int:
    """Multiply-adds x2 of every convolution for one HxW input (bias, ReLU, pooling and copies left out)."""
    total, skip_channels, h, w, c = 0, [], height, width, cfg.in_channels + cfg.noise_input
    for level in range(1, cfg.depth + 1):
        f = cfg.base_filters * 2 ** (level - 1)
        total += 2 * h * w * 9 * (c * f + f * f)
        skip_channels.append(f)
        c, h, w = f, h // 2, w // 2
    f = cfg.base_filters * 2 ** cfg.depth
    total += 2 * h * w * 9 * (c * f + f * f)
    c = f
    for level in range(cfg.depth, 0, -1):
        f = cfg.base_filters * 2 ** (level - 1)
        h, w = h * 2, w * 2
        total += 2 * h * w * 4 * c * f                       # 2x2 up-convolution
        total += 2 * h * w * 9 * ((skip_channels[level - 1] + f) * f + f * f)
        c = f
    total += 2 * h * w * (9 * c * 3 + 3 * 3)                 # head 3x3 and 1x1 output
    return total


def _timed(fn, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeats}


def _device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores)"


# ---------------------------------------------------------------- network worker (one backend per process)

def _backend_tools(xla: bool):
    """Per-backend: put an array on the device, a synchronised forward function, a matmul for the peak rate."""
    import backends  # noqa: F401  (before keras, as in train.py)
    import keras
    import numpy as np
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def forward_fn(model):
            fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            return lambda x: fn(tv, ntv, x).block_until_ready()

        def matmul_fn(n, dtype):
            a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype=dtype)
            b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype=dtype)
            f = jax.jit(lambda a, b: a @ b)
            return lambda: f(a, b).block_until_ready()
        to_device = lambda x: jnp.asarray(x)  # noqa: E731
        version = f"jax {jax.__version__}"
    elif backend == "torch":
        import torch

        def forward_fn(model):
            def run(x):
                with torch.no_grad():
                    y = model(x, training=False)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                return y
            return run

        def matmul_fn(n, dtype):
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            dt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
            a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)

            def run():
                a @ b
                if dev == "cuda":
                    torch.cuda.synchronize()
            return run
        to_device = lambda x: keras.ops.convert_to_tensor(x)  # noqa: E731
        version = f"torch {torch.__version__}"
    else:
        import tensorflow as tf

        def forward_fn(model):
            fn = tf.function(lambda x: model(x, training=False), jit_compile=xla)
            return lambda x: fn(x)[0, 0, 0, 0].numpy()

        def matmul_fn(n, dtype):
            a = tf.random.normal((n, n), dtype=dtype)
            b = tf.random.normal((n, n), dtype=dtype)
            f = tf.function(lambda a, b: a @ b)
            return lambda: f(a, b)[0, 0].numpy()
        to_device = tf.convert_to_tensor
        version = f"tensorflow {tf.__version__}"
    del np
    return backend, version, to_device, forward_fn, matmul_fn


def network_worker(args) -> list[dict]:
    """Time inference and training of the --preset's network (default the paper's) under this process's Keras
    backend."""
    import keras
    import numpy as np
    from model import build_model, dtype_policy

    precision, xla = args.precision, args.xla
    backend, version, to_device, forward_fn, matmul_fn = _backend_tools(xla)
    cfg = make_config(args.preset, {"precision": precision, "xla": xla})
    h, w = (args.height, args.width)
    import backends
    rows, base = [], {"backend": version, "precision": precision, "xla": backends.jit_compile(xla),
                      "network": args.preset}
    rng = np.random.default_rng(0)

    if args.matmul:
        n = args.matmul
        mm_dtype = "bfloat16" if precision != "float32" else "float32"
        t = _timed(matmul_fn(n, mm_dtype), 2, args.repeats)
        rate = lambda s: 2 * n ** 3 / s / 1e12  # noqa: E731
        rows.append({**base, "what": f"matmul {n}^3 {mm_dtype} (device rate)", "unit": "TFLOP/s", "n": t["n"],
                     "median": rate(t["median"]), "min": rate(t["max"]), "max": rate(t["min"])})

    if "infer" in args.parts:
        with dtype_policy(precision):
            model = build_model(cfg)
        flops = conv_flops(cfg, h, w)
        x = rng.random((1, h, w, 6), dtype=np.float32)
        xd = to_device(x)
        fwd = forward_fn(model)
        t = _timed(lambda: fwd(xd), args.warmup, args.repeats)
        rows.append({**base, "what": f"inference {w}x{h}, input on device", "unit": "s/image", **t,
                     "flops": flops, "tflops_achieved": flops / t["median"] / 1e12})
        t = _timed(lambda: model.predict_on_batch(x), 1, args.repeats)
        rows.append({**base, "what": f"inference {w}x{h}, from host array (predict_on_batch)", "unit": "s/image", **t})
        del model

    if "loader" in args.parts or "loop" in args.parts:
        rows += loop_rows(args, base)

    if "train" in args.parts:
        p, b = args.patch, args.batch
        with dtype_policy(precision):
            model = build_model(cfg)
        from train import make_loss
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=make_loss(cfg.loss),
                      jit_compile=backends.jit_compile(xla))
        x = to_device(rng.random((b, p, p, 6), dtype=np.float32))
        y = to_device(rng.random((b, p, p, 3), dtype=np.float32))
        t = _timed(lambda: model.train_on_batch(x, y), args.warmup, args.repeats)
        flops = 3 * conv_flops(cfg, p, p) * b
        rows.append({**base, "what": f"train step {p}x{p} batch {b}", "unit": "s/step", **t,
                     "patches_per_s": b / t["median"], "flops": flops, "tflops_achieved": flops / t["median"] / 1e12,
                     "paper_run_hours": PAPER_STEPS * t["median"] / 3600})
    return rows


def loop_rows(args, base: dict) -> list[dict]:
    """train.py's own loader (its PatchStream batches through its read-ahead Batches, asked for in order as Keras
    does) and its whole training loop, on the data section's store; the loop's steps/s leave out compilation
    and checkpoint writing."""
    import concurrent.futures
    import train
    from data_prep import open_store
    steps = args.warmup + args.repeats
    cfg = make_config(args.preset, {**json.loads(args.store_settings), "precision": args.precision,
                                    "xla": args.xla, "batch_size": args.batch})
    rows = []
    for workers in sorted({1, cfg.loader_workers}) if "loader" in args.parts else ():
        stream = train.PatchStream(open_store(cfg), cfg, cfg.batch_size)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            batches = train.Batches(stream.train_batch, 0, 8 * steps, pool, 2 * workers)
            batches[0]
            t0 = time.perf_counter()
            for i in range(1, len(batches)):
                batches[i]
            rate = (len(batches) - 1) * cfg.batch_size / (time.perf_counter() - t0)
        rows.append({**base, "what": f"train.py loader: {cfg.patch_size}x{cfg.patch_size} (L, R, target) batches of "
                                     f"{cfg.batch_size}, {workers} thread(s)", "unit": "patches/s", "n": 1,
                     "median": rate, "min": rate, "max": rate})
    if "loop" not in args.parts:
        return rows
    step_s = train.time_steps(cfg, steps)
    rows.append({**base, "what": f"train.py loop {cfg.patch_size}x{cfg.patch_size} batch {cfg.batch_size} "
                                 f"(loader, step, callbacks)", "unit": "s/step", "n": steps, "median": step_s,
                 "min": step_s, "max": step_s, "patches_per_s": cfg.batch_size / step_s,
                 "paper_run_hours": PAPER_STEPS * step_s / 3600})
    return rows


# ---------------------------------------------------------------- data pipeline (no TensorFlow in this process)

def make_dpdd_like(root: str, counts: dict, width: int, height: int, seed: int = 0) -> None:
    """Write a DPDD-shaped set of 16-bit PNGs (smooth content plus fine noise, so files compress like photos)."""
    import cv2
    import numpy as np
    from dpdd import split_folders
    from images import write_image
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        folders = split_folders(root, split)
        for i in range(n):
            name = f"B{split[:2]}{i:04d}"
            base = cv2.resize(rng.random((height // 16, width // 16, 3), dtype=np.float32), (width, height),
                              interpolation=cv2.INTER_CUBIC)
            views = {"source": base, "target": base, "left": np.roll(base, 2, axis=1),
                     "right": np.roll(base, -2, axis=1)}
            files = {"source": f"{name}.png", "target": f"T{name}.png", "left": f"{name}_L.png",
                     "right": f"{name}_R.png"}
            for kind, img in views.items():
                img = np.clip(img + rng.normal(0, 0.01, img.shape).astype(np.float32), 0, 1)
                write_image(os.path.join(folders[kind], files[kind]), img)


def _decode_scene(paths: list[str]) -> int:
    from images import read_image
    return sum(read_image(p).nbytes for p in paths)


def store_settings(args, workdir: str) -> dict:
    """The config values of the DPDD-shaped set and patch store that the data section and the loop part use."""
    return {"dataset_root": os.path.join(workdir, "dpdd_like"), "patch_dir": os.path.join(workdir, "patches"),
            "working_width": args.width, "working_height": args.height, "patch_size": args.patch,
            "data_workers": os.cpu_count() or 1}


def data_rows(args, workdir: str) -> list[dict]:
    """Writes a DPDD-shaped set and builds its patch store: data_prep's time against the PNG decoding alone."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    import data_prep
    import dpdd
    w, h = args.width, args.height
    workers = os.cpu_count() or 1
    settings = store_settings(args, workdir)
    root = settings["dataset_root"]
    counts = {"train": args.scenes, "val": max(1, args.scenes // 4)}
    print(f"[bench] writing {sum(counts.values())} DPDD-shaped scenes at {w}x{h} ...", flush=True)
    make_dpdd_like(root, counts, w, h)
    cfg = make_config(args.preset, settings)
    scenes = [sc for split in counts for sc in dpdd.list_scenes(root, split)]
    base = {"backend": "numpy/OpenCV", "precision": "uint16", "xla": False}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_scene, [[sc.source_path] for sc in scenes[:workers]]))  # start-up out of the timing
        t0 = time.perf_counter()
        list(pool.map(_decode_scene, [[sc.source_path, sc.target_path, sc.left_path, sc.right_path] for sc in scenes]))
        decode = (time.perf_counter() - t0) / len(scenes)
    t0 = time.perf_counter()
    data_prep.build_store(cfg, progress=False)
    prep = (time.perf_counter() - t0) / len(scenes)
    rows = [{**base, "what": f"data_prep, {len(scenes)} scenes {w}x{h}, {workers} workers", "unit": "s/scene",
             "median": prep, "min": prep, "max": prep, "n": 1, "ratio_to_decode": prep / decode},
            {**base, "what": f"PNG decode alone (4 files/scene), {workers} workers", "unit": "s/scene",
             "median": decode, "min": decode, "max": decode, "n": 1}]

    return rows


def test_rows(args, workdir: str) -> list[dict]:
    """Peak resident memory and seconds per image of test.py (a subprocess) for two test-set sizes."""
    import resource
    w, h = args.width, args.height
    root = os.path.join(workdir, "dpdd_like_test")
    small, large = args.test_images
    make_dpdd_like(root, {"test": large}, w, h, seed=1)
    weights = os.path.join(workdir, "paper_random.keras")
    subprocess.run([sys.executable, "-c", "import sys; from config import make_config; from model import build_model; "
                    "build_model(make_config('paper')).save(sys.argv[1])", weights], cwd=REPO_DIR, check=True)
    rows, walls = [], {}
    for n in (small, large):
        probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                 "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
                 "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        cmd = [sys.executable, "-c", probe, sys.executable, os.path.join(REPO_DIR, "test.py"), "--weights", weights,
               "--no-lpips", "--overwrite", "--limit", str(n), "--out", os.path.join(workdir, f"results{n}"),
               "--set", f"dataset_root={root}"]
        print(f"[bench] test.py on {n} images of {w}x{h} ...", flush=True)
        rc, wall, rss_kb = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_DIR).stdout.split()
        if rc != "0":
            rows.append({"backend": "tensorflow", "precision": "float32", "xla": False, "what": "FAILED",
                         "error": f"test.py exited {rc} on {n} images"})
            return rows
        walls[n] = float(wall)
        rss = int(rss_kb) / 2 ** 20
        rows.append({"backend": "tensorflow", "precision": "float32", "xla": False, "unit": "GiB", "n": 1,
                     "what": f"test.py peak resident memory, {n} images {w}x{h}", "median": rss, "min": rss, "max": rss})
    per = (walls[large] - walls[small]) / (large - small)
    rows.append({"backend": "tensorflow", "precision": "float32", "xla": False, "unit": "s/image", "n": 1,
                 "what": f"test.py per image (marginal, {large} vs {small} images), metrics included",
                 "median": per, "min": per, "max": per})
    del resource
    return rows


# ---------------------------------------------------------------- orchestration

def _run_worker(backend: str, precision: str, xla: bool, args) -> list[dict]:
    cmd = [sys.executable, os.path.join(REPO_DIR, "bench.py"), "--worker", "--precision", precision,
           "--preset", args.preset, "--height", str(args.height), "--width", str(args.width),
           "--patch", str(args.patch), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--parts", ",".join(args.parts), "--matmul", str(args.matmul),
           "--store-settings", args.store_settings] + (["--xla"] if xla else [])
    env = dict(os.environ, KERAS_BACKEND=backend)
    label = f"{backend} {precision}{' xla' if xla else ''}"
    print(f"[bench] {label} ...", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"[bench] {label} failed: {' | '.join(tail)}", flush=True)
        return [{"backend": backend, "precision": precision, "xla": xla, "what": "FAILED", "error": " | ".join(tail)}]
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    print(f"[bench] {label} done in {time.time() - t0:.0f}s", flush=True)
    return rows


def _cells(row: dict) -> list[str]:
    """A row of the results table: backend, precision, XLA, what, median, min, max, notes."""
    if row["what"] == "FAILED":
        return [row["backend"], row["precision"], str(row["xla"]), "FAILED", "", "", "", row.get("error", "")[:120]]
    unit = row["unit"]
    scale, shown = (1e3, "ms") if unit in ("s/image", "s/step") and row["median"] < 1 else (1, unit)
    note = []
    if "ratio_to_decode" in row:
        note.append(f"{row['ratio_to_decode']:.2f}x the PNG decode time")
    if "tflops_achieved" in row:
        note.append(f"{row['flops'] / 1e12:.2f} TFLOP, {row['tflops_achieved']:.1f} TFLOP/s achieved")
    if "patches_per_s" in row:
        paper = row.get("network", "paper") == "paper"  # the 280k-step projection is the paper recipe's
        note.append(f"{row['patches_per_s']:.1f} patches/s"
                    + (f"; 280k steps = {row['paper_run_hours']:.2f} h" if paper else ""))
    return [row["backend"], row["precision"], str(row["xla"]), row["what"], f"{row['median'] * scale:.3f} {shown}",
            f"{row['min'] * scale:.3f}", f"{row['max'] * scale:.3f}", "; ".join(note)]


def render(rows: list[dict], meta: dict) -> str:
    from results_page import markdown_table
    lines = [f"# DPDNet benchmark: {meta['device']}", "",
             f"{meta['date']} · host {meta['host']} · python {meta['python']} · {meta['command']}", "",
             markdown_table(["backend", "precision", "XLA", "what", "median", "min", "max", "notes"],
                            [_cells(r) for r in rows])]
    peak = max((r["median"] for r in rows if r.get("unit") == "TFLOP/s"), default=None)
    infer = [r for r in rows if r.get("what", "").startswith("inference") and "input on device" in r["what"]]
    train = [r for r in rows if r.get("what", "").startswith("train step")]
    lines += ["", "## Against the goals and the limit", ""]
    if meta.get("network", "paper") != "paper":
        lines.append(f"- The {meta['network']} preset's network, not the paper's: the goals below do not apply.")
        infer, train = [], []
    elif meta["sizes"]["image"] != [1680, 1120] or meta["sizes"]["patch"] != 512 or meta["sizes"]["batch"] != 5:
        lines.append(f"- Sizes {meta['sizes']} are not the paper's: the goals below do not apply.")
        infer, train = [], []
    if peak:
        lines.append(f"- Measured matrix rate of this device: {peak:.0f} TFLOP/s.")
    if meta["device"].startswith("CPU"):
        lines.append("- CPU run: the GPU goals (10 ms per image, 2 h for the paper's training) are not compared here.")
        infer, train = [], []
    for r in infer:
        frac = f", {r['tflops_achieved'] / peak:.0%} of the measured matrix rate" if peak else ""
        floor = f"; floor at the matrix rate {r['flops'] / peak / 1e12 * 1e3:.1f} ms" if peak else ""
        goal = "meets" if r["median"] < GOAL_INFER_S else f"misses by {r['median'] / GOAL_INFER_S:.1f}x"
        lines.append(f"- Inference {r['backend']} {r['precision']}: {r['median'] * 1e3:.1f} ms/image{frac}{floor}; "
                     f"paper 500 ms on a TITAN X ({PAPER_TITANX_SECONDS / r['median']:.0f}x faster); "
                     f"goal 10 ms (bf16, H100): {goal}.")
    for r in train:
        frac = f", {r['tflops_achieved'] / peak:.0%} of the matrix rate" if peak else ""
        goal = "meets" if r["paper_run_hours"] < GOAL_TRAIN_HOURS else f"misses by {r['paper_run_hours'] / GOAL_TRAIN_HOURS:.1f}x"
        lines.append(f"- Training {r['backend']} {r['precision']}: {r['median'] * 1e3:.1f} ms/step{frac}; "
                     f"the paper's 280k steps project to {r['paper_run_hours']:.2f} h (goal 2 h: {goal}).")
    loops = [r for r in rows if r.get("what", "").startswith("train.py loop")]
    bare = {(r["backend"], r["precision"], r["xla"]): r for r in rows if r.get("what", "").startswith("train step")}
    for r in loops:
        step = bare.get((r["backend"], r["precision"], r["xla"]))
        if step:
            lines.append(f"- train.py {r['backend']} {r['precision']}: {1 / r['median']:.2f} steps/s against the bare "
                         f"step's {1 / step['median']:.2f} ({step['median'] / r['median']:.2f}x; goal >= 0.95x).")
    loaders = [r for r in rows if r.get("what", "").startswith("train.py loader")]
    if loaders:
        best = max(loaders, key=lambda r: r["median"])
        lines.append(f"- train.py's loader: {best['median']:.0f} patches/s ({best['what'].split(', ')[-1]}; goal >= "
                     f"400 for 512x512 batches of 5 on 2 cores).")
    extra = meta.get("notes") or []
    lines += [f"- {n}" for n in extra]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: under 3 minutes on a CPU")
    parser.add_argument("--preset", default="paper", help="whose network, loss and patch-store settings the network "
                                                          "and data sections use; the sizes still come from "
                                                          "--width/--height/--patch/--batch (default: paper)")
    parser.add_argument("--backends", default="", help="comma list of Keras backends (default: tensorflow if installed, "
                                                       "else jax,torch)")
    parser.add_argument("--precisions", default="", help="comma list; default float32 on CPU, float32,mixed_bfloat16 on GPU")
    parser.add_argument("--parts", default="infer,train,loader,loop",
                        help="of the network section: infer, train (the bare step), loader (train.py's), loop "
                             "(train.py's whole training loop)")
    parser.add_argument("--sections", default="network,data,test",
                        help="network (every backend; the loader and loop parts too), data (data_prep, decode), test (test.py memory)")
    parser.add_argument("--scenes", type=int, default=8, help="train scenes for the data section")
    parser.add_argument("--test-images", default="5,10", help="two test-set sizes for the test.py section")
    parser.add_argument("--height", type=int, default=1120)
    parser.add_argument("--width", type=int, default=1680)
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul", type=int, default=-1, help="size of the matmul for the device rate (0: skip)")
    parser.add_argument("--worker-timeout", type=int, default=1800)
    parser.add_argument("--tag", default="", help="suffix for the output file names")
    parser.add_argument("--out", default=os.path.join(REPO_DIR, "results", "bench"))
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store-settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    args.sections = [p for p in args.sections.split(",") if p]
    args.test_images = [int(n) for n in args.test_images.split(",")]

    if args.worker:
        for row in network_worker(args):
            print(json.dumps(row), flush=True)
        return

    device = _device_name()
    gpu = not device.startswith("CPU")
    if args.quick:
        args.height, args.width, args.patch, args.batch = 224, 336, 128, 2
        args.repeats = args.repeats or 3
        args.warmup = 1
        args.scenes, args.test_images = 4, [2, 4]
    args.repeats = args.repeats or (20 if gpu else 3)
    if args.matmul < 0:
        args.matmul = 8192 if gpu else 0
    if args.backends:
        backends = args.backends.split(",")
    else:
        has_tf = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True).returncode == 0
        backends = ["tensorflow"] if has_tf else ["jax", "torch"]
    precisions = args.precisions.split(",") if args.precisions else (
        ["float32", "mixed_bfloat16"] if gpu else ["float32"])
    rows = []
    import tempfile
    with tempfile.TemporaryDirectory(prefix="dpdnet_bench_") as workdir:
        args.store_settings = json.dumps(store_settings(args, workdir))
        if "data" in args.sections or ("network" in args.sections and {"loader", "loop"} & set(args.parts)):
            # the loader and loop parts read the data section's store
            rows += data_rows(args, workdir)
        if "network" in args.sections:
            for backend in backends:
                for precision in precisions:
                    xlas = [False, True] if backend == "tensorflow" and gpu else [False]
                    for xla in xlas:
                        rows += _run_worker(backend, precision, xla, args)
        if "test" in args.sections:
            if "tensorflow" in backends:
                rows += test_rows(args, workdir)
            else:
                print("[bench] test.py section skipped: TensorFlow is not installed here", flush=True)

    meta = {"device": device, "host": socket.gethostname(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "command": " ".join(["python bench.py"] + sys.argv[1:]),
            "sizes": {"image": [args.width, args.height], "patch": args.patch, "batch": args.batch},
            "network": args.preset}
    text = render(rows, meta)
    print(text)
    from fileio import atomic_write_json, atomic_write_text
    name = device.split(":")[-1].strip() if gpu else f"CPU_{os.cpu_count()}cores_{socket.gethostname()}"
    name = name.replace(" ", "_").replace("/", "_")
    if args.quick:
        name += "_quick"
    if args.preset != "paper":
        name += f"_{args.preset}"
    if args.tag:
        name += f"_{args.tag}"
    atomic_write_text(os.path.join(args.out, f"{name}.md"), text)
    atomic_write_json(os.path.join(args.out, f"{name}.json"), {"meta": meta, "rows": rows})
    print(f"wrote {os.path.join(args.out, name)}.md and .json")


if __name__ == "__main__":
    main()
