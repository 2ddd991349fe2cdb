"""Evaluate a trained DPDNet on the DPDD test split by the paper's Table 1 protocol: whole images, one pass
(weights trained with flips: the mean over them, see inference.ensemble_transforms), output clamped to
[0, 1], PSNR/SSIM/MAE on floats per image, then LPIPS in one pass over the saved 16-bit
outputs (a separate process), then indoor/outdoor/combined means.

    python test.py --weights checkpoints/dpdnet/best.keras        # or the authors' .hdf5
    python test.py --preset single --weights dpdnet_single.hdf5

Writes results/<run_name>/: images/<scene>.png (16-bit), metrics.csv (each image's metrics and its blurry
input's), summary.md, summary.json, config.json, run_info.json, and index.html, the results page (thumbnails in
page/). Indoor/outdoor labels: the authors' indoor_labels.npy/outdoor_labels.npy in the dataset root if there,
else test_categories.csv there, else the copy in data/. Images are streamed (the next scene is read while the
current one runs), so memory does not grow with the
number of test images; a re-run resumes where an interrupted one stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dpdd
import results_page
import weights
from config import (Config, UserError, add_config_args, add_inference_args, config_from_args, differences,
                    exit_on_error)
from dpdd import GROUPS, METRICS, PAPER_TABLE1
from fileio import atomic_write_json, atomic_write_text, is_temporary, json_safe
from images import ImageError, bit_depth, read_image, to_float, write_image
from inference import ensemble_transforms, prefer_low_memory_cpu, pyramid_levels
from results_page import format_metric, inference_text, table1_markdown

prefer_low_memory_cpu()  # before TensorFlow is imported
import backends  # noqa: E402  (after the line above, before keras)

COLUMNS = METRICS + tuple("input_" + m for m in METRICS)  # the output's metrics, then the blurry input's
CSV_HEADER = ["name", "category"] + list(COLUMNS)


class EvalError(UserError):
    """A problem with the results folder or the run's inputs; one line for the user."""


# --------------------------------------------------------------------------------------------- reading

def load_scene(scene: dpdd.Scene, cfg: Config) -> dict:
    """Read one test scene and build the network input and the float ground truth (runs in the prefetch thread)."""
    from inference import network_input
    target, combined = read_image(scene.target_path), read_image(scene.source_path)
    views = [read_image(scene.left_path), read_image(scene.right_path)] if cfg.input_mode == "dual" else [combined]
    paths = (scene.left_path, scene.right_path) if cfg.input_mode == "dual" else (scene.source_path,)
    for p, img in ((paths[0], views[0]), (scene.source_path, combined)):
        if target.shape != img.shape:
            raise ImageError(f"{scene.target_path} is {target.shape[1]}x{target.shape[0]} but {p} is "
                             f"{img.shape[1]}x{img.shape[0]}: a scene's images must have the same size")
    black, white = dpdd.scene_levels(cfg, [target, combined, *views], scene.source_path)
    floats = [to_float(img, black, white) for img in views]
    x = (network_input(cfg, *floats, names=paths) if cfg.input_mode == "dual" else
         network_input(cfg, combined=floats[0]))
    return {"x": x, "gt": to_float(target, black, white), "blurry": to_float(combined, black, white),
            "bits": input_bits(views), "size": (target.shape[1], target.shape[0])}


def input_bits(images: list) -> list[int]:
    """The bit depths of the network's input images (not the target's), as the summary reports them."""
    return sorted({bit_depth(img) for img in images})


def input_traits(scene: dpdd.Scene, input_mode: str) -> tuple[tuple[int, int], list[int]]:
    """(width, height) and input_bits of a scene that an earlier run evaluated, read again for the summary."""
    views = ([read_image(scene.left_path), read_image(scene.right_path)] if input_mode == "dual"
             else [read_image(scene.source_path)])
    return (views[0].shape[1], views[0].shape[0]), input_bits(views)


class Prefetcher:
    """Reads scene i+1 in a background thread while scene i runs: at most two scenes are in memory."""

    def __init__(self, scenes: list, cfg: Config):
        self._scenes, self._cfg = scenes, cfg
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._next = self._submit(0)

    def _submit(self, i):
        return self._pool.submit(load_scene, self._scenes[i], self._cfg) if i < len(self._scenes) else None

    def __iter__(self):
        for i, scene in enumerate(self._scenes):
            data = self._next.result()
            self._next = self._submit(i + 1)
            yield scene, data
            del data

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------- results file

def format_row(name: str, category: str, values: dict) -> str:
    """One metrics.csv line; floats in repr form so a resumed run reproduces them exactly."""
    cells = [name, category] + [("" if values.get(k) is None else repr(float(values[k]))) for k in COLUMNS]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def read_rows(path: str) -> tuple[list[dict], int]:
    """The complete rows of metrics.csv and how many lines were dropped (a torn last line from a kill, or
    garbage). A row without its final newline is torn, since rows are written whole and then fsynced."""
    if not os.path.isfile(path):
        return [], 0
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    tail = lines.pop()          # '' when the file ends with a newline, else a torn line
    dropped = 1 if tail else 0
    if not lines or lines[0].strip().split(",") != CSV_HEADER:
        raise EvalError(f"{path}: not a metrics.csv of this version of test.py (header "
                        f"{lines[0][:60] if lines else ''!r}); move it away or rerun with --overwrite")
    rows = []
    for line in lines[1:]:
        try:
            cells = next(csv.reader([line]))
            if len(cells) != len(CSV_HEADER):
                raise ValueError
            row = {"name": cells[0], "category": cells[1]}
            for key, cell in zip(COLUMNS, cells[2:]):
                row[key] = float(cell) if cell else None
            rows.append(row)
        except (ValueError, StopIteration):
            dropped += 1
    return rows, dropped


class ResultsWriter:
    """metrics.csv, appended one complete, fsynced line per image, only after that image's PNG is in place."""

    def __init__(self, path: str, rows: list[dict]):
        self.path = path
        atomic_write_text(path, "".join([",".join(CSV_HEADER) + "\n"] +
                                        [format_row(r["name"], r["category"], r) for r in rows]))
        self._f = open(path, "a", newline="")

    def append(self, name: str, category: str, values: dict) -> None:
        self._f.write(format_row(name, category, values))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        self._f.close()


# --------------------------------------------------------------------------------------------- summary

def summarize(rows: list[dict]) -> dict:
    """{group: {"count": n, metric: mean or None}} for indoor, outdoor, combined (and any other label).

    A metric's mean is None when any row of the group lacks it (LPIPS unavailable for some images)."""
    groups = {g: [] for g in GROUPS}
    for r in rows:
        groups.setdefault(r["category"], []).append(r)
        groups["combined"].append(r)
    out = {}
    for g, members in groups.items():
        entry = {"count": len(members)}
        for k in METRICS:
            vals = [r[k] for r in members]
            entry[k] = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
            if k == "lpips":
                entry["lpips_count"] = sum(v is not None for v in vals)
        out[g] = entry
    return out


def summary_markdown(summary: dict) -> str:
    """summary.md: Table 1's layout (indoor / outdoor / combined x PSNR, SSIM, MAE, LPIPS), ours beside the paper's."""
    model = summary["model"]
    groups = summary["groups"]
    lp = summary["lpips"]
    paper, diff = summary["paper"], summary["difference"]

    def cell(group, metric, value):
        if metric == "lpips" and value is None:
            if lp["status"] == "unavailable":
                return "n/a (LPIPS weights unavailable)"
            if lp["status"] == "off":
                return "n/a (LPIPS off)"
            return f"n/a ({groups[group]['lpips_count']} of {groups[group]['count']} images)"
        return format_metric(value, metric)

    table = table1_markdown([
        [f"{model} (paper)"] + [f"{v:.2f}" if m == "psnr" else f"{v:.3f}"
                                for g in GROUPS for m, v in zip(METRICS, paper[g])],
        [f"{model} (ours)"] + [cell(g, m, groups[g][m]) for g in GROUPS for m in METRICS],
        ["ours - paper"] + [format_metric(diff[g][m], m, signed=True) for g in GROUPS for m in METRICS]], groups)
    lines = [f"# {model} on the DPDD test set", "", table, "",
             "PSNR and SSIM: higher is better; MAE and LPIPS: lower is better. PSNR/SSIM/MAE on float outputs clamped "
             "to [0, 1], before quantisation, LPIPS on the saved 16-bit outputs, per image, then averaged "
             "(PROTOCOL.md, 'Evaluation (Table 1)').", ""]
    lines.append(f"- Weights: `{summary['weights']}`")
    lines.append(f"- Images: {summary['images']} from `{summary['dataset_root']}` "
                 f"({', '.join(f'{b}-bit' for b in summary['input_bits'])} input, "
                 f"{', '.join(summary['image_sizes'])})")
    lines.append(f"- Inference: {inference_text(summary)}")
    if lp["status"] == "alexnet":
        lines.append("- LPIPS: AlexNet, version 0.1 (the `lpips` package), RGB, ground truth first.")
    elif lp["status"] == "random":
        lines.append("- LPIPS: RANDOM AlexNet backbone (test mode): the LPIPS numbers are meaningless.")
    elif lp["status"] == "unavailable":
        lines.append(f"- LPIPS: n/a ({lp['reason']})")
    else:
        lines.append("- LPIPS: not computed (--no-lpips).")
    run = summary["run"]
    lines.append(f"- Backend: {run['backend']} {run['backend_version']}, precision {run['precision']}"
                 + (f"; weights SHA-256 {run['weights_sha256']}" if run.get("weights_sha256") else ""))
    lines.append(f"- Indoor/outdoor labels: {summary['categories_note']}")
    for line in summary["categories_disagreements"]:
        lines.append(f"  - label differs: {line}")
    for note in summary["protocol_notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def build_summary(rows: list[dict], info: dict) -> dict:
    groups = summarize(rows)
    blurry = summarize([{"name": r["name"], "category": r["category"], **{m: r.get("input_" + m) for m in METRICS}}
                        for r in rows])
    paper = PAPER_TABLE1[info["model"]]
    diff = {g: {m: (None if groups[g][m] is None else groups[g][m] - paper[g][i]) for i, m in enumerate(METRICS)}
            for g in GROUPS}
    return {**info, "groups": groups, "input_groups": blurry, "paper": paper, "difference": diff}


# --------------------------------------------------------------------------------------------- evaluation

def _lpips(mode: str, pairs: list = (), progress: bool = False) -> tuple[list | None, str, str]:
    """(values or None, status, reason) of LPIPS over (target, image) file pairs for lpips mode auto / require /
    off / random. With no pairs, a check (a few seconds) that LPIPS can run, before any image is done."""
    if mode == "off":
        return None, "off", ""
    from metrics import LpipsUnavailable, lpips_of_files
    try:
        values = lpips_of_files(pairs, random_backbone=(mode == "random"), progress=progress)
    except LpipsUnavailable as e:
        if mode == "require":
            raise
        print(f"warning: {e}; LPIPS is reported as n/a (--require-lpips makes this an error)", file=sys.stderr)
        return None, "unavailable", str(e).removeprefix("LPIPS unavailable: ")
    return values, ("random" if mode == "random" else "alexnet"), ""


def evaluate(cfg: Config, weights_path: str | None = None, out_dir: str | None = None, overwrite: bool = False,
             lpips: str = "auto", limit: int = 0, progress: bool = True) -> dict:
    """Run the Table 1 evaluation and return the summary dict (also written to out_dir/summary.json).

    weights_path: default checkpoints/<run_name>/best.keras. out_dir: default results/<run_name>.
    lpips: "auto" (n/a when unavailable), "require" (LpipsUnavailable), "off", "random" (tests only).
    limit: evaluate only the first `limit` scenes (0: all). Raises a UserError, LpipsUnavailable or MetricError
    with a one-line message.
    """
    root = dpdd.find_dataset_root(cfg)
    every_scene = dpdd.list_scenes(root, "test")
    scenes = every_scene[:limit] if limit else every_scene
    labels = dpdd.load_test_labels(root)
    for line in labels.disagreements:
        print(f"warning: labels differ: {line}", file=sys.stderr)
    out_dir = out_dir or cfg.results_folder()
    weights_path = weights_path or weights.default_path(cfg)
    model, model_cfg = load_for_test(weights_path, cfg)
    warning = dpdd.check_levels(cfg, root, scenes)
    if warning:
        print(warning, file=sys.stderr)

    run_info = {**weights.file_stamp(weights_path), "input_mode": model_cfg.input_mode, "tile": model_cfg.tile,
                "tile_overlap": model_cfg.tile_overlap, "self_ensemble": len(ensemble_transforms(model_cfg)),
                "scales": first_pyramid(model_cfg, scenes), "precision": model_cfg.precision, **backends.info(),
                "dataset_root": root, "black_level": cfg.black_level, "white_level": cfg.white_level,
                "lpips_random": lpips == "random"}
    done = resumable_rows(out_dir, run_info, scenes, overwrite)
    rows = [done[s.source] for s in scenes if s.source in done]
    _, lp_status, lp_reason = _lpips(lpips)  # may fail (--require-lpips): nothing written yet
    writer = prepare_folder(out_dir, {**run_info, "lpips": lp_status, "lpips_reason": lp_reason,
                                      "categories_source": labels.source}, model_cfg, rows)
    if done:
        print(f"resuming: {len(done)} of {len(scenes)} images already done in {out_dir} (--overwrite to redo them)")
    seen = run_scenes(model, model_cfg, [s for s in scenes if s.source not in done], labels, out_dir, writer,
                      rows, len(scenes), progress)
    if lp_status in ("alexnet", "random"):
        lp_status, lp_reason = (add_lpips(rows, scenes, out_dir, lpips, progress, dpdd.dataset_levels(cfg))
                                or (lp_status, lp_reason))
    write_in_scene_order(os.path.join(out_dir, "metrics.csv"), rows, scenes)
    for s in scenes:  # sizes and bit depths of resumed images, for the notes: the inputs', as for new images
        if s.source in done:
            size, bits = input_traits(s, model_cfg.input_mode)
            seen["sizes"].add(size)
            seen["bits"].update(bits)

    info = {"model": weights.mode_name(model_cfg.input_mode), "weights": weights_path, "dataset_root": root,
            "images": len(scenes), "input_bits": sorted(seen["bits"]),
            "image_sizes": [f"{w}x{h}" for w, h in sorted(seen["sizes"])],
            "tile": model_cfg.tile, "tile_overlap": model_cfg.tile_overlap,
            "self_ensemble": len(ensemble_transforms(model_cfg)), "scales": largest_pyramid(model_cfg, seen["sizes"]),
            "lpips": {"status": lp_status, "reason": lp_reason},
            "categories_source": labels.source, "categories_note": labels.note,
            "categories_disagreements": labels.disagreements,
            "run": {k: run_info.get(k) for k in ("precision", "backend", "backend_version", "weights_sha256")},
            "protocol_notes": protocol_notes(scenes, len(every_scene), seen["sizes"], seen["bits"], model_cfg),
            "seconds_per_image": float(np.mean(seen["seconds"])) if seen["seconds"] else None}
    summary = build_summary(rows, info)
    atomic_write_json(os.path.join(out_dir, "summary.json"), json_safe(summary))
    atomic_write_text(os.path.join(out_dir, "summary.md"), summary_markdown(summary))
    results_page.make_thumbnails(out_dir, rows, {s.source: s for s in scenes}, model_cfg.input_mode == "dual",
                                 dpdd.dataset_levels(cfg))
    results_page.render_page(out_dir, rows, summary, model_cfg.input_mode == "dual")
    return summary


def load_for_test(path: str, cfg: Config):
    """(model, model_cfg) of a weights file whose input mode fits the config."""
    model, model_cfg = weights.load_model(path, cfg)
    weights.check_input_mode(model_cfg, cfg, path)
    return model, model_cfg


def resumable_rows(out_dir: str, run_info: dict, scenes: list, overwrite: bool) -> dict[str, dict]:
    """{name: row} of the scenes an earlier run of the same weights and settings finished (row and image written);
    results of another run are refused rather than mixed."""
    csv_path, info_path = os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "run_info.json")
    if overwrite or not os.path.isfile(csv_path):
        return {}
    if os.path.isfile(info_path):
        with open(info_path) as f:
            old = json.load(f)
        changed = differences(old, run_info, "then", defaults={"self_ensemble": 1, "scales": 1,  # older runs: one size
                                                              "black_level": 0, "white_level": 0})
        if changed:
            raise EvalError(f"{out_dir} holds results of another run ({changed[0]}); rerun with --overwrite or "
                            f"--set run_name=NEW")
    rows, dropped = read_rows(csv_path)
    if dropped:
        print(f"note: dropped {dropped} incomplete line(s) of {csv_path} (an interrupted run); redoing them")
    wanted = {s.source for s in scenes}
    return {r["name"]: r for r in rows if r["name"] in wanted
            and os.path.isfile(os.path.join(out_dir, "images", r["name"] + ".png"))}


def prepare_folder(out_dir: str, run_info: dict, model_cfg: Config, rows: list[dict]) -> ResultsWriter:
    """images/ without a killed write's leftovers, run_info.json, config.json, and metrics.csv holding `rows`."""
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    for name in os.listdir(img_dir):  # leftovers of a killed atomic write
        if is_temporary(name):
            os.remove(os.path.join(img_dir, name))
    atomic_write_json(os.path.join(out_dir, "run_info.json"), run_info)
    model_cfg.save_json(os.path.join(out_dir, "config.json"))
    return ResultsWriter(os.path.join(out_dir, "metrics.csv"), rows)


def run_scenes(model, model_cfg: Config, todo: list, labels, out_dir: str, writer: ResultsWriter,
               rows_in_order: list[dict], total: int, progress: bool) -> dict:
    """Deblur and measure each scene of `todo` (read one ahead), writing its image and then its metrics.csv row,
    appended to rows_in_order; returns the sizes, input bit depths and seconds per image it saw."""
    from inference import predict_image
    from metrics import image_metrics
    from tqdm import tqdm
    img_dir = os.path.join(out_dir, "images")
    bits, sizes, seconds = set(), set(), []
    prefetch = Prefetcher(todo, model_cfg) if todo else None
    bar = tqdm(total=total, initial=total - len(todo), desc="test", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for scene, data in (prefetch or []):
            t0 = time.perf_counter()
            pred = predict_image(model, data["x"], model_cfg)
            seconds.append(time.perf_counter() - t0)
            values = image_metrics(data["gt"], pred)
            blurry = {"input_" + k: v for k, v in image_metrics(data["gt"], data["blurry"]).items()}
            write_image(os.path.join(img_dir, scene.source + ".png"), pred, bits=16)
            bits.update(data["bits"])
            sizes.add(data["size"])
            row = {"name": scene.source, "category": labels.categories.get(scene.source, "unlabelled"),
                   **values, "lpips": None, **blurry, "input_lpips": None}
            writer.append(row["name"], row["category"], row)
            rows_in_order.append(row)
            del data, pred
            bar.update(1)
            bar.set_postfix({k: f"{np.mean([r[k] for r in rows_in_order]):.4g}" for k in ("psnr", "ssim", "mae")})
    finally:
        bar.close()
        if prefetch:
            prefetch.close()
        writer.close()
    return {"bits": bits, "sizes": sizes, "seconds": seconds}


def add_lpips(rows: list[dict], scenes: list, out_dir: str, mode: str, progress: bool,
              levels: tuple = (0, None)) -> tuple[str, str] | None:
    """LPIPS of the saved outputs and of the blurry inputs for the rows that lack it, in one pass in its own
    process; the LPIPS (status, reason) after the pass, or None when every row had it. levels: (black, white) of
    the dataset's files (the saved outputs are full-range)."""
    unscored = [r for r in rows if r["lpips"] is None or r["input_lpips"] is None]
    by_name = {s.source: s for s in scenes}
    at = (lambda path: path) if levels == (0, None) else (lambda path: (path, *levels))  # a dataset file's levels
    pairs = [(at(by_name[r["name"]].target_path), ref) for r in unscored
             for ref in (os.path.join(out_dir, "images", r["name"] + ".png"), at(by_name[r["name"]].source_path))]
    if not pairs:
        return None
    values, status, reason = _lpips(mode, pairs, progress)
    for i, r in enumerate(unscored if values is not None else []):
        r["lpips"], r["input_lpips"] = values[2 * i], values[2 * i + 1]
    return status, reason


def write_in_scene_order(csv_path: str, rows: list[dict], scenes: list) -> None:
    """Sort the rows into scene order and rewrite metrics.csv if its lines are in another order, so that a resumed
    run's metrics.csv equals a clean run's."""
    order = {s.source: i for i, s in enumerate(scenes)}
    rows.sort(key=lambda r: order[r["name"]])
    with open(csv_path) as f:
        current = f.read()
    final = "".join([",".join(CSV_HEADER) + "\n"] + [format_row(r["name"], r["category"], r) for r in rows])
    if current != final:
        atomic_write_text(csv_path, final)


def protocol_notes(scenes: list, total: int, sizes: set, bits: set, model_cfg: Config) -> list[str]:
    """Where this run departs from Table 1's protocol, so nobody compares unlike numbers."""
    notes = []
    n = len(scenes)
    if {s.source for s in scenes} != {s for s, _ in dpdd.official_split()["test"]}:
        notes.append(f"Not the Table 1 test set: {n} images" + (f" (the first {n} of {total})" if n != total else "")
                     + ", not the 76 official DPDD test scenes; the paper's numbers are beside ours for orientation "
                       "only.")
    if sizes and sizes != {(1680, 1120)}:
        notes.append("Image size differs from the paper's 1680x1120 (the network was run on reflection-padded "
                     "inputs cropped back).")
    if bits and bits != {16}:
        notes.append("8-bit input: the paper's numbers are for the 16-bit images.")
    if model_cfg.tile:
        notes.append("Tiled inference: the paper ran whole images in one pass.")
    passes = len(ensemble_transforms(model_cfg))
    if passes > 1:
        notes.append(f"Self-ensemble: each output is the mean of {passes} passes over flips of the input; the paper "
                     f"ran one.")
    levels = largest_pyramid(model_cfg, sizes)
    if levels > 1:
        notes.append(f"Scales: images ran at up to {levels} sizes, each half the last, merged (weights trained on "
                     f"{model_cfg.working_width}x{model_cfg.working_height} frames; scales={model_cfg.scales}); the paper ran the "
                     f"full size only.")
    return notes


def largest_pyramid(model_cfg: Config, sizes) -> int:
    """The most sizes any of the (width, height) images ran at (inference.pyramid_levels)."""
    return max((pyramid_levels(model_cfg, h, w) for w, h in sizes), default=1)


def first_pyramid(model_cfg: Config, scenes: list) -> int:
    """The sizes the first scene's images run at, for run_info: a resumed run must run them as the first did."""
    if not scenes or model_cfg.scales == 1:
        return 1
    (w, h), _ = input_traits(scenes[0], model_cfg.input_mode)
    return pyramid_levels(model_cfg, h, w)


# --------------------------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_inference_args(parser)
    parser.add_argument("--out", help="results folder (default: results/<run_name>)")
    parser.add_argument("--overwrite", action="store_true", help="redo images already done by an earlier run")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N test scenes")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--require-lpips", action="store_true", help="fail if LPIPS cannot be computed")
    group.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    lpips = "require" if args.require_lpips else "off" if args.no_lpips else "auto"

    with exit_on_error(interrupted="interrupted: the images and rows written so far are complete; rerun the same "
                                   "command to continue"):
        summary = evaluate(cfg, args.weights, args.out, overwrite=args.overwrite, lpips=lpips, limit=args.limit)
    print(summary_markdown(summary))
    print(f"wrote {args.out or cfg.results_folder()}/ (images/, metrics.csv, summary.md, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
