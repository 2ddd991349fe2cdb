"""The whole pipeline on synthetic dual-pixel data, on a CPU, with nothing downloaded: synthesise a small set,
prepare patches, train DPDNet and DPDNet-Single for the same budget, evaluate both beside the blurry input
itself, and save a Table-1-style summary and a picture. A toy-scale demonstration, not the paper's numbers.

    python demo.py                  # about 10-15 minutes on 2 CPU cores (./run_demo.sh sets up .venv first)
    python demo.py --quick          # about 1-3 minutes: fewer scenes, a short budget (CI)
    python demo.py --minutes 0      # the preset's full 4,000 steps per network, however long they take
    python demo.py --root /tmp/d    # every output under another folder

Writes, under the repository (or --root): synthetic_demo/ (the data, DPDD layout), patches/demo/, checkpoints/
demo/ and checkpoints/demo_single/, and results/demo/: summary.md, summary.json, comparison.png, config.json,
index.html (the results page) and test.py's per-image results in dual/ and single/ (with --quick:
synthetic_demo_quick/, patches/demo_quick/, checkpoints/demo_quick/ and demo_quick_single/, results/demo_quick/).
A rerun reuses what is done.

Training fits in --minutes (15): a few timed steps of each network say how many steps this machine trains in
the time left, and where that is fewer than the preset's (as on CPUs without bfloat16 units, which train in
float32), both networks train that many, with the learning-rate decay moved with them. A shortened run that
is resumed keeps its budget (--fresh chooses again).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time

import cv2
import numpy as np

import dpdd
import results_page
import weights
from config import PATH_KEYS, REPO_DIR, ConfigError, add_config_args, config_from_args, exit_on_error, make_config
from dpdd import GROUPS, METRICS, PAPER_TABLE1
from fileio import atomic_write_json, atomic_write_text, json_safe
from images import quantize, read_image, to_float, write_image
from results_page import crop_box, format_metric, table1_markdown

import backends  # noqa: E402  (before keras: a KERAS_BACKEND that is not installed is a one-line exit)
from model import with_concrete_precision  # noqa: E402

# Synthetic scenes per split, and the synthesis seed (fixed, so the test split is the same whatever cfg.seed is).
SCENES = {"full": {"n_train": 400, "n_val": 10, "n_test": 20}, "quick": {"n_train": 16, "n_val": 2, "n_test": 4}}
SYNTH_SEED = 0
INPUT_LABEL = "Blurry input"
METHODS = (INPUT_LABEL, "DPDNet-Single", "DPDNet")
MINUTES = 15              # the demo's time budget (--minutes)
PROBE_STEPS = 12          # training steps timed per network to choose the budget (after 2 of compilation)
EVAL_STEPS = 250          # evaluation takes about as long as this many training steps (results/demo.md)
START_SECONDS = 15        # per network: building, compiling, the input's val loss
LOOP_FACTOR = 1.1         # validation and checkpoints on top of the median step
OVERRUN_TOLERANCE = 1.1   # the summary says the budget was overrun beyond this factor of --minutes
MIN_EPOCHS = 5            # below this the networks learn too little to compare; train that many anyway


# --------------------------------------------------------------------------------------------- settings

def demo_configs(args: argparse.Namespace):
    """(dual cfg, single cfg) from --quick/--preset/--set/--root; paths not set by --set go under --root."""
    if args.preset is None:
        args.preset = "demo_quick" if args.quick else "demo"
    root = os.path.abspath(args.root) if args.root else REPO_DIR
    try:
        preset_cfg = make_config(args.preset)
    except ConfigError as e:
        sys.exit(f"error: config: {e}")
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    for key in PATH_KEYS:
        value = getattr(preset_cfg, key)
        if key not in given and value and not os.path.isabs(value):
            args.overrides.append(f"{key}={os.path.join(root, value)}")
    cfg = config_from_args(args)
    if cfg.input_mode != "dual":
        sys.exit("error: config: input_mode: demo.py trains both models itself; use a dual preset (demo, demo_quick)")
    # `auto` decided now, for training and evaluation alike: importing test.py later sets TF_ENABLE_ONEDNN_OPTS=0
    # (too late for this process's TensorFlow), which `auto` reads.
    cfg = with_concrete_precision(cfg)
    single = dataclasses.replace(cfg, input_mode="single", run_name=cfg.run_name + "_single")
    single.validate()
    return cfg, single


def fit_to_time(args, cfg, single_cfg, seconds_spent: float):
    """(cfg, single_cfg, budget): the two configs with the number of epochs that fits in what is left of
    --minutes on this machine, timed by PROBE_STEPS steps of each network, or as they are (--quick, --minutes 0,
    --set epochs=..., epochs of a whole pass over the patches, a run being resumed, or when the preset's epochs
    fit). A resumed run that was shortened keeps that budget. budget says what was chosen (summary.json)."""
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    own_budget = args.minutes <= 0 or "epochs" in given
    import train
    last = cfg.checkpoint_path("last")
    if not args.fresh and os.path.isfile(last):
        saved = train.read_checkpoint_state(last).get("config", {})
        keep = {k: saved.get(k, getattr(cfg, k)) for k in ("epochs", "lr_decay_every")}
        if keep["epochs"] >= cfg.epochs or keep["lr_decay_every"] == cfg.lr_decay_every:
            return cfg, single_cfg, {"fitted": False, "resumed": True, "epochs": cfg.epochs}   # not shortened
        steps = cfg.steps_per_epoch
        if own_budget:
            raise train.TrainError(f"{last}: this run was shortened to {keep['epochs'] * steps} of the preset's "
                                   f"{cfg.epochs * steps} steps to fit the time budget; to train another number "
                                   f"start over with --fresh")
        print(f"[demo] budget: resuming {last}, shortened earlier to {keep['epochs'] * steps} steps per network",
              flush=True)
        return (dataclasses.replace(cfg, **keep), dataclasses.replace(single_cfg, **keep),
                {"fitted": True, "resumed": True, "preset_epochs": cfg.epochs, **keep})
    if args.quick or own_budget or not cfg.steps_per_epoch:
        return cfg, single_cfg, {"fitted": False, "epochs": cfg.epochs}
    t0 = time.perf_counter()
    step_s = {c.input_mode: train.time_steps(c, PROBE_STEPS) for c in (cfg, single_cfg)}
    seconds_left = args.minutes * 60 - seconds_spent - (time.perf_counter() - t0) - EVAL_STEPS * step_s["dual"]
    epochs, decay = epochs_that_fit(cfg.epochs, cfg.lr_decay_every, cfg.steps_per_epoch, seconds_left,
                                    sum(step_s.values()))
    budget = {"fitted": epochs < cfg.epochs, "minutes": args.minutes, "step_seconds": step_s,
              "probe_seconds": time.perf_counter() - t0, "preset_epochs": cfg.epochs, "epochs": epochs,
              "lr_decay_every": decay}
    steps = cfg.steps_per_epoch
    timing = " and ".join(f"{1000 * v:.0f} ms" for v in step_s.values())
    if epochs == cfg.epochs:
        print(f"[demo] budget: {cfg.epochs * steps} steps per network fit in {args.minutes:g} min (a step "
              f"takes {timing} for DPDNet and DPDNet-Single here)", flush=True)
        return cfg, single_cfg, budget
    print(f"[demo] budget: a step takes {timing} for DPDNet and DPDNet-Single here, so each trains "
          f"{epochs * steps} of the preset's {cfg.epochs * steps} steps to finish within {args.minutes:g} min "
          f"(learning rate decayed every {decay * steps} steps; --minutes 0 trains them all)", flush=True)
    needed = 2 * START_SECONDS + epochs * steps * sum(step_s.values()) * LOOP_FACTOR
    if epochs == MIN_EPOCHS and needed > seconds_left:
        print(f"[demo] budget: even {epochs * steps} steps (the fewest that compare the two networks) will take "
              f"longer than that", flush=True)
    keep = {"epochs": epochs, "lr_decay_every": decay}
    return dataclasses.replace(cfg, **keep), dataclasses.replace(single_cfg, **keep), budget


def epochs_that_fit(epochs: int, decay_every: int, steps_per_epoch: int, seconds: float,
                    step_seconds: float) -> tuple[int, int]:
    """(epochs, lr_decay_every): the most epochs, up to `epochs` and at least MIN_EPOCHS, whose steps of both
    networks (step_seconds together, plus LOOP_FACTOR for validation and checkpoints and START_SECONDS each)
    fit in `seconds`, and the decay interval scaled with them."""
    per_epoch = steps_per_epoch * step_seconds * LOOP_FACTOR
    fit = int(max(seconds - 2 * START_SECONDS, 0) // per_epoch)
    if fit >= epochs:
        return epochs, decay_every
    fit = min(max(fit, MIN_EPOCHS), epochs)
    return fit, max(1, round(decay_every * fit / epochs))


# --------------------------------------------------------------------------------------------- the table

def summary_markdown(summary: dict) -> str:
    """summary.md: Table 1's layout with a row per method (the blurry input, DPDNet-Single, DPDNet), the
    differences, and how the data and the networks were made."""
    groups = {m: summary["methods"][m]["groups"] for m in METHODS}
    lp = summary["lpips"]
    lpips_note = "n/a" if lp["status"] == "alexnet" else "n/a (unavailable)" if lp["status"] == "unavailable" else "n/a (off)"
    present = [g for g in GROUPS if g in groups[INPUT_LABEL]]
    table = table1_markdown([[method] + [lpips_note if m == "lpips" and groups[method][g][m] is None
                                         else format_metric(groups[method][g][m], m) for g in present for m in METRICS]
                             for method in METHODS], groups[INPUT_LABEL])
    paper = {model: f"{PAPER_TABLE1[model]['combined'][0]:.2f} dB" for model in PAPER_TABLE1}
    c = {m: summary["methods"][m] for m in METHODS}
    d_single = {k: c["DPDNet"][k] - c["DPDNet-Single"][k] for k in ("psnr", "ssim", "mae")}
    d_input = {k: c["DPDNet"][k] - c[INPUT_LABEL][k] for k in ("psnr", "ssim", "mae")}
    syn, tr, t = summary["data"], summary["training"], summary["seconds"]
    lines = [f"# Demo{' (--quick)' if summary['quick'] else ''}: DPDNet vs DPDNet-Single on synthetic dual-pixel data",
             "", table, "",
             "PSNR and SSIM: higher is better; MAE and LPIPS: lower is better. Per image on float outputs clamped "
             "to [0, 1], then averaged (test.py, the Table 1 protocol).", "",
             f"- DPDNet - DPDNet-Single (combined): {d_single['psnr']:+.2f} dB PSNR, {d_single['ssim']:+.4f} SSIM, "
             f"{d_single['mae']:+.4f} MAE",
             f"- DPDNet - blurry input (combined): {d_input['psnr']:+.2f} dB PSNR, {d_input['ssim']:+.4f} SSIM, "
             f"{d_input['mae']:+.4f} MAE",
             f"- Data: synthesize.py (seed {syn['seed']}), {syn['width']}x{syn['height']}, largest blur "
             f"{syn['max_coc_px']:.1f} px; {syn['n_train']} train / {syn['n_val']} val / {syn['n_test']} test scenes; "
             f"{tr['train_patches']} train patches of {tr['patch_size']}x{tr['patch_size']}.",
             f"- Both networks: base_filters {tr['base_filters']}, depth {tr['depth']}, {tr['head']} head, "
             f"{tr.get('activation', 'relu')}, " + ("told the input's noise level, " if tr.get("noise_input") else "") +
             f"{tr['loss']} loss, Adam lr {tr['learning_rate']:g} "
             f"x{tr['lr_decay_factor']:g} every "
             f"{tr['lr_decay_every'] * tr['steps_per_epoch']} steps, {tr['steps']} steps of batch {tr['batch_size']} "
             f"each in {tr.get('precision', 'float32')} (the same budget); weights: the checkpoint with the lowest "
             f"val loss.",
             *_budget_lines(tr.get("budget", {}), tr["steps_per_epoch"]),
             *_overrun_lines(tr.get("budget", {}), t, {"DPDNet": tr["steps"], "DPDNet-Single": tr["steps_single"]}),
             *([f"- Inference: {_ensemble_text(summary['self_ensemble'])}."] if "self_ensemble" in summary else []),
             "- Toy scale: a small network, a few minutes of CPU training, synthetic scenes. It shows what the second "
             f"view is worth, not the paper's numbers (Table 1: DPDNet {paper['DPDNet']}, DPDNet-Single "
             f"{paper['DPDNet-Single']} on DPDD).",
             f"- LPIPS: {'AlexNet v0.1' if lp['status'] == 'alexnet' else lp['reason'] or lp['status']}",
             "- Wall time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in t.items()),
             f"- Picture: comparison.png ({', '.join(summary['comparison_scenes'])})", ""]
    return "\n".join(lines)


def _budget_lines(budget: dict, steps_per_epoch: int) -> list[str]:
    """A line saying that training was shortened to fit --minutes, when it was."""
    if not budget.get("fitted"):
        return []
    if budget.get("resumed"):
        return [f"- Resumed a run shortened to fit its time budget: {budget['epochs'] * steps_per_epoch} of the "
                f"preset's {budget['preset_epochs'] * steps_per_epoch} steps (`--fresh --minutes 0` trains them all)."]
    ms = " and ".join(f"{1000 * v:.0f} ms" for v in budget["step_seconds"].values())
    return [f"- Shortened to fit {budget['minutes']:g} minutes on this machine (a step took {ms} for DPDNet and "
            f"DPDNet-Single): {budget['epochs'] * steps_per_epoch} of the preset's "
            f"{budget['preset_epochs'] * steps_per_epoch} steps, so the differences are smaller than with all of "
            f"them (`--minutes 0`)."]


def _overrun_lines(budget: dict, seconds: dict, steps: dict) -> list[str]:
    """A line saying that the run took longer than the --minutes it was fitted to, and how fast the steps went
    against the probe's timing: a machine that slows down mid-run (other load) is the usual cause."""
    minutes, probed = budget.get("minutes"), budget.get("step_seconds")
    if not probed or not minutes or seconds.get("total", 0) <= 60 * minutes * OVERRUN_TOLERANCE:
        return []
    went = {mode: seconds[f"train_{mode}"] / n for mode, n in zip(("dual", "single"), steps.values())
            if n and f"train_{mode}" in seconds}
    pace = " and ".join(f"{1000 * went[m]:.0f} ms" for m in went)
    timed = " and ".join(f"{1000 * probed[m]:.0f} ms" for m in went)
    return [f"- Over the {minutes:g}-minute budget ({seconds['total'] / 60:.1f} min): a training step took {pace} "
            f"for DPDNet and DPDNet-Single (with start-up, validation and checkpoints) against {timed} when timed before "
            f"training: this machine ran slower than when it was timed."]


def _ensemble_text(passes: dict) -> str:
    """How each network was run (test.py's self-ensemble or one pass)."""
    return "; ".join(f"{label} {results_page.passes_text(n)}" for label, n in passes.items())


def method_entry(groups: dict, rows: list[dict]) -> dict:
    """A method's combined means at the top level (psnr, ssim, mae, lpips) plus the per-group table."""
    return {**{m: groups["combined"][m] for m in METRICS}, "groups": groups, "images": len(rows)}


# --------------------------------------------------------------------------------------------- the picture

def _label(panel: np.ndarray, text: str, bar: int = 20) -> np.ndarray:
    """The panel under a dark bar with white text."""
    out = np.full((panel.shape[0] + bar, panel.shape[1], 3), 40, np.uint8)
    out[bar:] = panel
    cv2.putText(out, text, (5, bar - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def comparison_image(scenes: list[dict], zoom: int = 4, gap: int = 6) -> np.ndarray:
    """One block per scene: the four full images (input, single, dual, sharp) with the crop marked, and under
    them the crop enlarged `zoom` times (nearest neighbour, so no detail is invented). uint8 RGB."""
    blocks = []
    for s in scenes:
        imgs = [quantize(im, 8) for im in s["images"]]
        h, w = imgs[0].shape[:2]
        cw, ch = max(8, w // zoom), max(8, h // zoom)
        x, y, cw, ch = crop_box(s["images"][0], s["images"][-1], cw, ch)
        top, bottom = [], []
        for img, label in zip(imgs, s["labels"]):
            full = img.copy()
            cv2.rectangle(full, (x, y), (x + cw - 1, y + ch - 1), (255, 220, 0), 1)
            top.append(_label(full, label))
            crop = cv2.resize(img[y:y + ch, x:x + cw], (cw * zoom, ch * zoom), interpolation=cv2.INTER_NEAREST)
            bottom.append(_label(crop, f"{zoom}x crop"))
        rows = []
        for row in (top, bottom):
            height = max(p.shape[0] for p in row)
            width = sum(p.shape[1] for p in row) + gap * (len(row) - 1)
            canvas = np.full((height, width, 3), 255, np.uint8)
            xo = 0
            for p in row:
                canvas[:p.shape[0], xo:xo + p.shape[1]] = p
                xo += p.shape[1] + gap
            rows.append(canvas)
        title = np.full((24, rows[0].shape[1], 3), 255, np.uint8)
        cv2.putText(title, s["title"], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in [title] + rows]
        blocks.append(np.vstack([rows[0], rows[1], np.full((gap, width, 3), 255, np.uint8), rows[2]]))
    width = max(b.shape[1] for b in blocks)
    spacer = np.full((3 * gap, width, 3), 255, np.uint8)
    out = []
    for i, b in enumerate(blocks):
        out += ([spacer] if i else []) + [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255)]
    return np.vstack(out)


def pick_scenes(rows: list[dict], count: int = 2) -> list[str]:
    """The test scenes where the blurry input is worst (lowest PSNR), one per category first: chosen before
    looking at any network's output."""
    order = sorted(rows, key=lambda r: r["psnr"])
    picked, seen = [], set()
    for r in order:
        if r["category"] not in seen:
            picked.append(r["name"])
            seen.add(r["category"])
    for r in order:
        if r["name"] not in picked:
            picked.append(r["name"])
    return picked[:count]


def save_comparison(path: str, scenes_by_name: dict, names: list[str], per_image: dict, out_dirs: dict) -> None:
    """comparison.png: comparison_image of the named scenes, each image labelled with its PSNR."""
    blocks = []
    for name in names:
        scene = scenes_by_name[name]
        images = [to_float(read_image(scene.source_path)),
                  to_float(read_image(os.path.join(out_dirs["DPDNet-Single"], "images", name + ".png"))),
                  to_float(read_image(os.path.join(out_dirs["DPDNet"], "images", name + ".png"))),
                  to_float(read_image(scene.target_path))]
        labels = [f"{m}  {per_image[m][name]['psnr']:.2f} dB" for m in METHODS] + ["Sharp (target)"]
        category = per_image[INPUT_LABEL][name]["category"]
        blocks.append({"images": images, "labels": labels, "title": f"{name} ({category}): PSNR per image"})
    write_image(path, comparison_image(blocks), bits=8)


# --------------------------------------------------------------------------------------------- pipeline

def run(args: argparse.Namespace) -> dict:
    """The five steps, each resumed or reused where an earlier run did it; returns the summary it writes."""
    cfg, single_cfg = demo_configs(args)
    weights.check_tile(cfg, "config")   # before the training it would follow
    mode = "quick" if args.quick else "full"
    progress = not args.no_progress
    out_dir = cfg.results_folder()
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    import synthesize
    print(f"\n[demo] 1/5 synthesising {SCENES[mode]} scenes at {cfg.working_width}x{cfg.working_height} into "
          f"{cfg.resolve_path('dataset_root')}", flush=True)
    with stage(seconds, "synthesize"):
        try:
            syn = synthesize.synthesize(cfg.resolve_path("dataset_root"), width=cfg.working_width,
                                        height=cfg.working_height, seed=SYNTH_SEED, workers=cfg.data_workers,
                                        progress=progress, **SCENES[mode])
        except synthesize.SynthesisError as e:   # a folder of an older synthesize.py: the networks must retrain too
            raise synthesize.SynthesisError(f"{e}; for the demo: remove it and run again with --fresh, or use "
                                            f"--root DIR") from None

    import data_prep
    print(f"\n[demo] 2/5 preparing {cfg.patch_size}x{cfg.patch_size} patches in {cfg.resolve_path('patch_dir')}",
          flush=True)
    with stage(seconds, "prepare"):
        data_prep.build_store(cfg, progress=progress)
        store = data_prep.open_store(cfg)

    cfg, single_cfg, budget = fit_to_time(args, cfg, single_cfg, time.perf_counter() - t_start)
    import train
    results = {}
    for label, c, step in (("DPDNet", cfg, "3/5"), ("DPDNet-Single", single_cfg, "4/5")):
        print(f"\n[demo] {step} training {label} ({c.epochs} x {c.steps_per_epoch or 'all'} steps) into "
              f"{c.checkpoint_folder()}", flush=True)
        with stage(seconds, f"train_{c.input_mode}"):
            results[label] = train.train(c, resume=False if args.fresh else None, verbose=1 if progress else 2)

    print(f"\n[demo] 5/5 evaluating on the synthetic test split into {out_dir}", flush=True)
    out_dirs = {"DPDNet": os.path.join(out_dir, "dual"), "DPDNet-Single": os.path.join(out_dir, "single")}
    with stage(seconds, "evaluate"):
        summaries, rows = evaluate_both({"DPDNet": cfg, "DPDNet-Single": single_cfg}, results, out_dirs,
                                        "off" if args.no_lpips else "auto", progress)
    with stage(seconds, "picture"):
        names = pick_scenes(rows[INPUT_LABEL], count=2)
        os.makedirs(out_dir, exist_ok=True)
        scenes = {s.source: s for s in dpdd.list_scenes(summaries["DPDNet"]["dataset_root"], "test")}
        save_comparison(os.path.join(out_dir, "comparison.png"), scenes, names,
                        {label: {r["name"]: r for r in rows[label]} for label in METHODS}, out_dirs)
    results_page.render_page(out_dirs["DPDNet"], rows["DPDNet"], summaries["DPDNet"], dual=True,  # DPDNet's page,
                             page_path=os.path.join(out_dir, "index.html"),                    # linking Single's
                             links={"DPDNet-Single": "single/index.html"})
    seconds["total"] = time.perf_counter() - t_start

    summary = demo_summary(args, cfg, syn, store, results, summaries, rows, names, seconds, budget)
    atomic_write_json(os.path.join(out_dir, "summary.json"), json_safe(summary))
    text = summary_markdown(summary)
    atomic_write_text(os.path.join(out_dir, "summary.md"), text)
    cfg.save_json(os.path.join(out_dir, "config.json"))
    print("\n" + text)
    print(f"[demo] wrote {os.path.join(out_dir, 'summary.md')}, summary.json, comparison.png and index.html "
          f"in {seconds['total'] / 60:.1f} min")
    return summary


@contextlib.contextmanager
def stage(seconds: dict, name: str):
    """Time one step of the demo into seconds[name] and say how long it took."""
    t0 = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t0
    print(f"[demo] {name}: {seconds[name]:.1f} s", flush=True)


def evaluate_both(cfgs: dict, results: dict, out_dirs: dict, lpips: str, progress: bool) -> tuple[dict, dict]:
    """test.py's evaluation of both networks' best checkpoints: their summaries, and per method its per-image rows
    (the blurry input's are the input_ columns of the DPDNet run)."""
    import test
    summaries, rows = {}, {}
    for label, c in cfgs.items():
        checkpoint = results[label]["best"] or results[label]["last"]
        summaries[label] = test.evaluate(c, checkpoint, out_dirs[label], overwrite=True, lpips=lpips,
                                         progress=progress)
        if summaries[label]["lpips"]["status"] != "alexnet":
            lpips = "off"   # do not wait for a second failure
        rows[label], _ = test.read_rows(os.path.join(out_dirs[label], "metrics.csv"))
    rows[INPUT_LABEL] = [{"name": r["name"], "category": r["category"], **{m: r["input_" + m] for m in METRICS}}
                         for r in rows["DPDNet"]]
    summaries[INPUT_LABEL] = {"groups": summaries["DPDNet"]["input_groups"], "lpips": summaries["DPDNet"]["lpips"]}
    return summaries, rows


def demo_summary(args, cfg, syn: dict, store, results: dict, summaries: dict, rows: dict, names: list[str],
                 seconds: dict, budget: dict) -> dict:
    """summary.json: each method's means and table, how the data and the networks were made, and the wall times."""
    mode = "quick" if args.quick else "full"
    steps = {label: results[label]["global_step"] for label in results}
    return {
        "quick": bool(args.quick), "preset": args.preset,
        "methods": {label: method_entry(summaries[label]["groups"], rows[label]) for label in METHODS},
        "lpips": summaries["DPDNet"]["lpips"],
        "data": {"root": summaries["DPDNet"]["dataset_root"], "seed": SYNTH_SEED, "width": cfg.working_width,
                 "height": cfg.working_height, "max_coc_px": float(syn["settings"]["max_coc_px"]), **SCENES[mode]},
        "training": {"steps": steps["DPDNet"], "steps_single": steps["DPDNet-Single"],
                     "precision": cfg.precision,
                     "train_patches": len(store.index["train"]), "val_patches": len(store.index["val"]),
                     "best_epoch": {k: v["best_epoch"] for k, v in results.items()},
                     **{k: getattr(cfg, k) for k in ("patch_size", "base_filters", "depth", "head", "activation",
                                                     "noise_input", "loss", "learning_rate", "lr_decay_factor",
                                                     "lr_decay_every", "steps_per_epoch", "epochs", "batch_size")},
                     "budget": budget},
        "checkpoints": {k: v["best"] or v["last"] for k, v in results.items()},
        "self_ensemble": {k: summaries[k]["self_ensemble"] for k in results},
        "comparison_scenes": names,
        "seconds": seconds,
        **backends.info(),
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_error(OSError, interrupted="\ninterrupted: run the same command again to go on where it stopped"):
        run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="a few scenes and a short budget (about 1-3 min; CI)")
    parser.add_argument("--root", default=None, help="folder for the data, patches, checkpoints and results "
                                                     "(default: the repository)")
    parser.add_argument("--fresh", action="store_true", help="train both networks from scratch (default: resume "
                                                              "or reuse the checkpoints of an earlier run)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (needs AlexNet weights; n/a offline)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    parser.add_argument("--minutes", type=float, default=MINUTES,
                        help=f"fit training in this many minutes of the whole run: fewer steps where this machine "
                             f"is too slow for the preset's (default {MINUTES}; 0: the preset's steps)")
    add_config_args(parser, default=None, default_text="demo, or demo_quick with --quick")
    return parser


if __name__ == "__main__":
    sys.exit(main())
