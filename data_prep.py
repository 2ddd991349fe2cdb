"""Builds the paper's training and validation patch sets from DPDD as a patch store that train.py memory-maps:
one raw uint16 array per scene (left, right, combined, target), index.csv with the kept patch corners, and
manifest.json, written last, which marks the store complete.

Usage: python data_prep.py [--preset NAME] [--set key=value ...] [--split train|val|all] [--rebuild]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from config import Config, UserError, add_config_args, config_from_args, exit_on_error
from dpdd import (DatasetError, Scene, check_levels, compare_with_official, find_dataset_root, list_scenes,
                  scene_levels)
from fileio import atomic_path, atomic_write_csv, atomic_write_json, is_temporary
from images import bit_depth, max_value, read_image, rescale

STORE_VERSION = 1
STORE_SPLITS = ("train", "val")
# The settings that decide a store's content: a store built with other values is refused, never mixed.
STORE_KEYS = ("working_width", "working_height", "patch_size", "overlap", "val_overlap", "discard_fraction",
              "sobel_ksizes", "dataset_root", "black_level", "white_level")
# Channel layout of every scene array (RGB order within each view), and its values: uint16, STORE_MAX = white
# (8-bit scenes are scaled up to it exactly).
CHANNELS = {"left": slice(0, 3), "right": slice(3, 6), "source": slice(6, 9), "target": slice(9, 12)}
NUM_CHANNELS = 12
STORE_MAX = 65535
INDEX_HEADER = ["split", "source", "row", "col"]


class StoreError(UserError):
    """A patch store that is missing, incomplete, or built with other settings; the message says what to run."""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--split", choices=("train", "val", "all"), default="all",
                        help="which split to build (default all); an up-to-date split already in the store is kept")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild from scratch, replacing a store built with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    splits = STORE_SPLITS if args.split == "all" else (args.split,)
    interrupted = "\ninterrupted: the store is incomplete (train.py will not use it); run the same command again"
    with exit_on_error(OSError, interrupted=interrupted):  # OSError: e.g. a full disk
        try:
            build_store(cfg, splits, rebuild=args.rebuild, progress=not args.no_progress)
        except concurrent.futures.BrokenExecutor as e:  # a worker process died
            raise StoreError(f"a data_prep worker died ({e}); run again to build the store") from None


def build_store(cfg: Config, splits=STORE_SPLITS, rebuild: bool = False, progress: bool = True) -> dict:
    """Build the patch store in cfg.patch_dir for `splits` and return its manifest.

    A split that the complete store already there holds from the same dataset files (names, sizes, times) is
    kept, so a rerun writes nothing and `--split val` keeps the train split; every other split asked for is
    rebuilt whole (0.2-0.5 s per scene). A store built with other settings is refused unless `rebuild`.
    """
    root = find_dataset_root(cfg)
    patch_dir = cfg.resolve_path("patch_dir")
    previous = None if rebuild else previous_store(cfg, patch_dir)
    print(f"dataset: {root}")
    print(f"patch store: {patch_dir}")

    entries: dict[str, list[dict]] = {}    # split -> manifest entry per scene, in source-name order
    corners: dict[str, list[list]] = {}    # split -> kept patch corners per scene
    todo: list[Scene] = []
    for split in STORE_SPLITS:
        scenes = split_scenes(root, split, required=split in splits)
        files = [scene_files(s, root) for s in scenes]
        old = previous.manifest["sources"].get(split, []) if previous else []
        if scenes and [e["files"] for e in old] == files:
            entries[split], corners[split] = old, _corners_by_scene(previous, split)
        elif split in splits:
            todo += scenes
        elif scenes:
            print(f"note: {split} split not built or out of date; run with --split {split} or --split all to add it")
    kept = [entry for split_entries in entries.values() for entry in split_entries]
    print(f"{len(kept)} scenes kept from the store, {len(todo)} to build with {cfg.data_workers} worker(s)")

    manifest = _manifest(cfg, root, entries)
    if not todo and previous and manifest == previous.manifest:
        print("the patch store is up to date")
        return manifest
    warning = check_levels(cfg, root, todo)
    if warning:
        print(warning, file=sys.stderr)
    _remove(os.path.join(patch_dir, "manifest.json"))  # the store is incomplete until the end
    clear_leftovers(patch_dir, keep=set(entries))
    if todo:
        start = time.time()
        built = run_scenes(todo, cfg, patch_dir, root, kept, progress)
        elapsed = time.time() - start
        print(f"built {len(todo)} scenes in {elapsed:.1f} s ({elapsed / len(todo):.2f} s per scene)")
        for scene in todo:  # back in source-name order
            entry, kept_corners = built[(scene.split, scene.source)]
            entries.setdefault(scene.split, []).append(entry)
            corners.setdefault(scene.split, []).append(kept_corners)
        manifest = _manifest(cfg, root, entries)
    write_store(cfg, patch_dir, manifest, corners)
    return manifest


def store_config(cfg: Config) -> dict:
    """The values of the store settings, as recorded in the manifest (dataset_root as an absolute path)."""
    d = cfg.to_dict()
    return {**{k: d[k] for k in STORE_KEYS}, "dataset_root": os.path.normpath(cfg.resolve_path("dataset_root"))}


def store_differences(stored: dict, cfg: Config) -> list[str]:
    """'key: X in the store, Y now' for every store setting that differs from cfg's."""
    return cfg.differences(stored, "in the store", keys=STORE_KEYS)


def previous_store(cfg: Config, patch_dir: str) -> PatchStore | None:
    """The complete store in patch_dir, or None when there is none or it is damaged (it is then rebuilt).

    StoreError when it was built with other settings: someone may still need it (use another patch_dir or
    --rebuild)."""
    try:
        manifest = read_manifest(patch_dir)
    except StoreError:
        return None
    diffs = store_differences(manifest["store_config"], cfg)
    if diffs:
        raise StoreError(f"{patch_dir} holds a patch store built with other settings ({'; '.join(diffs)}): use "
                         f"another --set patch_dir=..., or pass --rebuild to replace it")
    try:
        return load_store(patch_dir, cfg.patch_size, manifest)
    except StoreError:
        return None


def split_scenes(root: str, split: str, required: bool) -> list[Scene]:
    """The split's scenes (warning about differences from the official split); [] for a split that is not
    asked for and not in the dataset."""
    try:
        scenes = list_scenes(root, split)
    except DatasetError:
        if required:
            raise
        scenes = []
    print(f"{split}: {len(scenes)} scenes")
    for warning in compare_with_official(split, scenes) if scenes else []:
        print(f"warning: {warning}")
    return scenes


def scene_files(scene: Scene, root: str) -> list[list]:
    """[relative path, size, mtime_ns] of the scene's four files: what tells a rerun that the dataset changed."""
    out = []
    for path in (scene.source_path, scene.target_path, scene.left_path, scene.right_path):
        st = os.stat(path)
        out.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    return out


def _corners_by_scene(store: PatchStore, split: str) -> list[list]:
    """The kept corners [[row, col], ...] of each scene of a split of an opened store."""
    out: list[list] = [[] for _ in store.sources[split]]
    for n, r, c in store.index[split].tolist():
        out[n].append([r, c])
    return out


def clear_leftovers(patch_dir: str, keep: set[str]) -> None:
    """Empty the split folders except those of the kept splits, and remove every temporary file of a killed run."""
    for split in STORE_SPLITS:
        folder = os.path.join(patch_dir, split)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if is_temporary(name) or (split not in keep and name.endswith((".npy", ".json"))):
                _remove(os.path.join(folder, name))
    for name in os.listdir(patch_dir) if os.path.isdir(patch_dir) else []:
        if is_temporary(name):
            _remove(os.path.join(patch_dir, name))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def run_scenes(todo: list[Scene], cfg: Config, patch_dir: str, root: str, kept: list[dict], progress: bool) -> dict:
    """{(split, source): (entry, corners)} of the scenes, built over cfg.data_workers processes, stopping at the
    first scene whose bit depth differs from the others' (kept ones included). On an error or Ctrl-C the scenes
    not started are cancelled and the running ones finish, so no temporary file is left."""
    from tqdm import tqdm
    built: dict = {}
    bits: dict[int, str] = {}

    def check_bits(entry: dict) -> None:
        bits.setdefault(entry["bits"], os.path.join(root, entry["files"][0][0]))
        if len(bits) > 1:
            raise DatasetError(f"the dataset mixes bit depths: {bits[8]} is 8-bit, {bits[16]} is 16-bit "
                               f"(convert all images to one depth)")

    def collect(entry: dict, kept_corners: list) -> None:
        check_bits(entry)
        built[(entry["split"], entry["source"])] = (entry, kept_corners)
        bar.update()

    for entry in kept:
        check_bits(entry)
    with tqdm(total=len(kept) + len(todo), initial=len(kept), unit="scene", desc="scenes",
              disable=not progress) as bar:
        if cfg.data_workers == 1:
            for scene in todo:
                collect(*build_scene(scene, cfg, patch_dir, root))
            return built
        # spawn: workers start clean (no TensorFlow or threads inherited from a parent that has them)
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(cfg.data_workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init)
        try:
            # Workers start (now or later, from the pool's manager thread) with SIGINT blocked, so a Ctrl-C
            # during their start-up cannot print a traceback; the mask is inherited by that thread and by
            # the spawned processes, and _worker_init lifts it once SIGINT is ignored.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                futures = [pool.submit(build_scene, scene, cfg, patch_dir, root) for scene in todo]
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            for future in concurrent.futures.as_completed(futures):
                collect(*future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return built


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process cancels; started scenes finish whole
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since spawn, see run_scenes
    cv2.setNumThreads(1)


def build_scene(scene: Scene, cfg: Config, patch_dir: str, root: str) -> tuple[dict, list]:
    """Write one scene's (H, W, 12) uint16 array atomically; return its manifest entry and kept corners."""
    files = scene_files(scene, root)
    imgs, bits = read_scene(scene, cfg)
    imgs = {k: to_working_size(v, cfg.working_width, cfg.working_height) for k, v in imgs.items()}
    h, w = imgs["target"].shape[:2]
    if h < cfg.patch_size or w < cfg.patch_size:
        raise DatasetError(f"{scene.source_path}: {w}x{h} pixels at the working size, smaller than the "
                           f"{cfg.patch_size}x{cfg.patch_size} patch")
    candidates, kept = select_patches(imgs["target"], cfg, scene.split)
    stack = np.empty((h, w, NUM_CHANNELS), np.uint16)
    scale = np.uint16(STORE_MAX // max_value(imgs["target"]))  # 8-bit x257 is exact: x/255 == 257x/65535
    for name, channels in CHANNELS.items():
        np.multiply(imgs[name], scale, out=stack[:, :, channels], casting="unsafe")
    rel = f"{scene.split}/{scene.source}.npy"
    with atomic_path(os.path.join(patch_dir, rel)) as tmp:
        np.save(tmp, stack)
    entry = {"split": scene.split, "source": scene.source, "files": files,
             "store_file": [rel, os.path.getsize(os.path.join(patch_dir, rel))], "shape": list(stack.shape),
             "bits": bits, "candidates": candidates, "kept": len(kept)}
    return entry, [list(rc) for rc in kept]


def read_scene(scene: Scene, cfg: Config) -> tuple[dict[str, np.ndarray], int]:
    """The scene's four images (left, right, source, target), checked for one bit depth and one shape, at the
    dataset's levels (dpdd.scene_levels: full-range 16-bit for raw frames); and the files' bit depth."""
    paths = {"left": scene.left_path, "right": scene.right_path, "source": scene.source_path,
             "target": scene.target_path}
    imgs = {name: read_image(path) for name, path in paths.items()}
    first = imgs["source"]
    for name, img in imgs.items():
        if img.dtype != first.dtype:
            raise DatasetError(f"{paths[name]}: {bit_depth(img)}-bit, but {paths['source']} is "
                               f"{bit_depth(first)}-bit (a dataset must not mix bit depths)")
        if img.shape != first.shape:
            raise DatasetError(f"{paths[name]}: {img.shape[1]}x{img.shape[0]} pixels, but {paths['source']} is "
                               f"{first.shape[1]}x{first.shape[0]} (left, right, source and target of a scene "
                               f"must match)")
    black, white = scene_levels(cfg, list(imgs.values()), scene.source_path)
    return {name: rescale(img, black, white) for name, img in imgs.items()}, bit_depth(first)


# ----------------------------------------------------------------------------------------------------------
# Working size, patch geometry and the sharpness filter (the authors' rules)

def to_working_size(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Portrait -> landscape (90 degrees clockwise); larger than width x height -> area-downscaled to fit inside
    it, keeping the aspect ratio (6720x4480 -> 1680x1120); otherwise unchanged, bit for bit."""
    if img.shape[0] > img.shape[1]:
        img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    h, w = img.shape[:2]
    if w > width or h > height:
        scale = min(width / w, height / h)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def select_patches(target: np.ndarray, cfg: Config, split: str) -> tuple[int, list[tuple[int, int]]]:
    """(number of candidates, kept corners) of one working-size image; train patches go through the filter."""
    h, w = target.shape[:2]
    stride = cfg.train_stride if split == "train" else cfg.val_stride
    coords = patch_grid(h, w, cfg.patch_size, stride)
    if split != "train":
        return len(coords), coords
    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)  # = the authors' BGR2GRAY on OpenCV's BGR array
    energies = sharpness_energies(gray, coords, cfg.patch_size, cfg.sobel_ksizes)
    return len(coords), [coords[i] for i in select_sharpest(energies, cfg.discard_fraction)]


def patch_grid(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the candidate patches, in the authors' order.

    A stride grid over the image where only whole patches are placed, plus the right-edge patch of each row,
    the bottom-edge patch of each column and the bottom-right corner. The order (and the rare duplicate) is
    that of the authors' loop: it visits r, c in range(0, size, stride) and, where a patch does not fit, adds the
    first not-yet-added edge patch of right edge, bottom edge, corner. So the corner comes right after the first
    row when two grid columns overhang the right edge (1120x1680: index 7), and when size - patch is a multiple
    of the stride the edge patch repeats the last grid patch. Both shape the 'ties to the first index' rule.
    """
    if height < patch or width < patch:
        raise ValueError(f"a {height}x{width} image cannot hold a {patch}x{patch} patch")
    coords: list[tuple[int, int]] = []
    edges: set[tuple[int, int]] = set()
    bottom, right = height - patch, width - patch
    for r in range(0, height, stride):
        for c in range(0, width, stride):
            r_fits, c_fits = r + patch <= height, c + patch <= width
            if r_fits and c_fits:
                coords.append((r, c))
                continue
            if r_fits:
                candidate = (r, right)
            elif c_fits:
                candidate = (bottom, c)
            else:
                candidate = (bottom, right)
            if candidate in edges and candidate != (bottom, right):
                candidate = (bottom, right)  # the authors' elif chain falls through to the corner
            if candidate not in edges:
                edges.add(candidate)
                coords.append(candidate)
    return coords


def sharpness_energies(gray: np.ndarray, coords, patch: int, ksizes) -> np.ndarray:
    """(len(ksizes), N) float64: per patch and Sobel kernel size, the sum over the patch of sqrt(gx^2 + gy^2),
    with cv2.Sobel (float64 output) run on the patch alone, as the authors did (patch borders reflect)."""
    out = np.empty((len(ksizes), len(coords)), np.float64)
    for j, (r, c) in enumerate(coords):
        window = np.ascontiguousarray(gray[r:r + patch, c:c + patch])
        for i, k in enumerate(ksizes):
            gx = cv2.Sobel(window, cv2.CV_64F, 1, 0, ksize=k)
            gy = cv2.Sobel(window, cv2.CV_64F, 0, 1, ksize=k)
            np.multiply(gx, gx, out=gx)        # same operations, in the same order, as sqrt(gx*gx + gy*gy)
            np.multiply(gy, gy, out=gy)
            np.add(gx, gy, out=gx)
            np.sqrt(gx, out=gx)
            out[i, j] = gx.sum()               # contiguous (P, P): numpy's pairwise order, as on a fresh array
    return out


def select_sharpest(energies: np.ndarray, discard_fraction: float) -> list[int]:
    """Indices of the kept patches, in their original order: each energy row min-max normalised (a row with
    all values equal counts as 0), fitness = product over rows, int(discard_fraction * N) lowest dropped with
    ties to the lower index (a stable sort, the same as the authors' repeated argmin)."""
    n = energies.shape[1]
    fitness = np.ones(n, np.float64)
    for row in energies:
        spread = row - row.min()
        top = spread.max()
        # The authors divided by zero here (NaN for every patch, so their argmin dropped the first ones):
        # zeros everywhere drop the same patches.
        fitness = fitness * (spread / top if top > 0 else np.zeros(n))
    drop = int(discard_fraction * n)
    dropped = set(np.argsort(fitness, kind="stable")[:drop].tolist())
    return [i for i in range(n) if i not in dropped]


# ----------------------------------------------------------------------------------------------------------
# Writing the store

def _manifest(cfg: Config, root: str, entries: dict[str, list[dict]]) -> dict:
    """The manifest of a store holding `entries`: its settings, counts, and per scene its files and array."""
    counts = {}
    for split in STORE_SPLITS:
        counts[split] = sum(e["kept"] for e in entries.get(split, []))
        counts[f"{split}_scenes"] = len(entries.get(split, []))
    return {"version": STORE_VERSION, "store_config": store_config(cfg), "dataset_root_found": root,
            "counts": counts, "sources": {split: entries.get(split, []) for split in STORE_SPLITS}}


def write_store(cfg: Config, patch_dir: str, manifest: dict, corners: dict[str, list[list]]) -> None:
    """index.csv (one row per kept patch) and config.json, then manifest.json last: it marks the store complete."""
    rows = [[split, entry["source"], r, c] for split in STORE_SPLITS
            for entry, scene_corners in zip(manifest["sources"][split], corners.get(split, []))
            for r, c in scene_corners]
    atomic_write_csv(os.path.join(patch_dir, "index.csv"), INDEX_HEADER, rows)
    cfg.save_json(os.path.join(patch_dir, "config.json"))
    atomic_write_json(os.path.join(patch_dir, "manifest.json"), manifest)
    for split in STORE_SPLITS:
        if manifest["sources"][split]:
            candidates = sum(e["candidates"] for e in manifest["sources"][split])
            print(f"{split}: {manifest['counts'][split]} patches kept of {candidates} candidates from "
                  f"{manifest['counts'][f'{split}_scenes']} scenes")
    print(f"wrote {os.path.join(patch_dir, 'manifest.json')}")


# ----------------------------------------------------------------------------------------------------------
# Reading the store (train.py)

@dataclass
class PatchStore:
    """An opened patch store: per split, the scene arrays (memmaps, (H, W, 12) uint16), their source names,
    and the kept patches as int32 rows (image_number, row, col)."""
    patch_dir: str
    patch_size: int
    images: dict = field(default_factory=dict)    # split -> [np.memmap (H, W, 12) uint16]
    sources: dict = field(default_factory=dict)   # split -> [source name]
    index: dict = field(default_factory=dict)     # split -> int32 (N, 3): image_number, row, col
    manifest: dict = field(default_factory=dict)

    def patch(self, split: str, i: int, channels: slice = slice(None)) -> np.ndarray:
        """A view (P, P, C) of patch i of a split; no copy until the caller converts it."""
        n, r, c = self.index[split][i]
        p = self.patch_size
        return self.images[split][n][r:r + p, c:c + p, channels]

    def train_fingerprint(self) -> str:
        """A short hash of the train scenes this store was cut from (each file's name, size and time) and the
        patches kept of each: what a checkpoint trained on, so that a run resumes only on the same data."""
        text = json.dumps(self.manifest["sources"]["train"], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def gather(self, split: str, rows, channels: slice = slice(None)) -> np.ndarray:
        """Patches `rows` of a split, channels `channels`, stacked into one uint16 array (B, P, P, C)."""
        start, stop, _ = channels.indices(NUM_CHANNELS)
        out = np.empty((len(rows), self.patch_size, self.patch_size, stop - start), np.uint16)
        for k, i in enumerate(rows):
            copy_channels(self.patch(split, int(i)), channels, out[k])
        return out


RUN_HINT = "run `python data_prep.py` with the same --preset/--set first"


def open_store(cfg: Config) -> PatchStore:
    """Open the complete patch store in cfg.patch_dir that was built with cfg's store settings.

    Raises StoreError (one line) when it is missing, incomplete, damaged, or was built with other settings.
    """
    patch_dir = cfg.resolve_path("patch_dir")
    manifest = read_manifest(patch_dir)
    diffs = store_differences(manifest["store_config"], cfg)
    if diffs:
        raise StoreError(f"{patch_dir}: patch store built with other settings ({'; '.join(diffs)}); "
                         f"{RUN_HINT}, or point --set patch_dir=... at another folder")
    store = load_store(patch_dir, cfg.patch_size, manifest)
    if not len(store.index["train"]):
        raise StoreError(f"{patch_dir}: the store has no train patches; run `python data_prep.py --split train`")
    return store


def read_manifest(patch_dir: str) -> dict:
    """manifest.json of a complete store; StoreError when it is missing, unreadable or of another version."""
    path = os.path.join(patch_dir, "manifest.json")
    if not os.path.isfile(path):
        raise StoreError(f"{patch_dir}: no complete patch store (manifest.json missing); {RUN_HINT}")
    try:
        with open(path) as f:
            manifest = json.load(f)
        version, _, _, _ = (manifest[k] for k in ("version", "store_config", "counts", "sources"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: unreadable manifest ({e}); {RUN_HINT}") from None
    if version != STORE_VERSION:
        raise StoreError(f"{path}: store version {version}, this code reads {STORE_VERSION}; {RUN_HINT}")
    return manifest


def load_store(patch_dir: str, patch_size: int, manifest: dict) -> PatchStore:
    """The store's scene arrays (memory-mapped) and patch index, checked against its manifest."""
    store = PatchStore(patch_dir=patch_dir, patch_size=patch_size, manifest=manifest)
    for split in STORE_SPLITS:
        store.images[split], store.sources[split] = [], []
        for entry in manifest["sources"].get(split, []):
            rel, size = entry["store_file"]
            path = os.path.join(patch_dir, rel)
            if not os.path.isfile(path) or os.path.getsize(path) != size:
                raise StoreError(f"{path}: missing or not the size the manifest records ({size} bytes); {RUN_HINT}")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise StoreError(f"{path}: unreadable scene array ({e}); {RUN_HINT}") from None
            if arr.dtype != np.uint16 or list(arr.shape) != list(entry["shape"]):
                raise StoreError(f"{path}: {arr.dtype} {arr.shape}, the manifest records uint16 {entry['shape']}; "
                                 f"{RUN_HINT}")
            store.images[split].append(arr)
            store.sources[split].append(entry["source"])
    store.index = _read_index(os.path.join(patch_dir, "index.csv"), store, manifest["counts"])
    return store


def _read_index(path: str, store: PatchStore, counts: dict) -> dict:
    """index.csv -> split -> int32 (N, 3) (image_number, row, col), checked against the manifest and image sizes."""
    numbers = {split: {s: i for i, s in enumerate(store.sources[split])} for split in STORE_SPLITS}
    rows: dict = {split: [] for split in STORE_SPLITS}
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if next(reader, None) != INDEX_HEADER:
                raise StoreError(f"{path}: header is not {','.join(INDEX_HEADER)}; {RUN_HINT}")
            for line_no, rec in enumerate(reader, start=2):
                try:
                    split, source, r, c = rec
                    rows[split].append((numbers[split][source], int(r), int(c)))
                except (ValueError, KeyError):
                    raise StoreError(f"{path}:{line_no}: unknown split/source or bad row {rec}; {RUN_HINT}") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read the patch index ({e}); {RUN_HINT}") from None
    p = store.patch_size
    index = {}
    for split in STORE_SPLITS:
        arr = np.asarray(rows[split], dtype=np.int32).reshape(-1, 3)
        if len(arr) != counts.get(split, 0):
            raise StoreError(f"{path}: {len(arr)} {split} patches, the manifest records {counts.get(split, 0)}; "
                             f"{RUN_HINT}")
        if len(arr):
            shapes = np.array([img.shape[:2] for img in store.images[split]], dtype=np.int64)[arr[:, 0]]
            bad = (arr[:, 1] < 0) | (arr[:, 2] < 0) | (arr[:, 1] + p > shapes[:, 0]) | (arr[:, 2] + p > shapes[:, 1])
            if bad.any():
                i = int(np.argmax(bad))
                raise StoreError(f"{path}: {split} patch {i} at ({arr[i, 1]}, {arr[i, 2]}) does not fit its "
                                 f"{p}x{p} window in {store.sources[split][arr[i, 0]]}; {RUN_HINT}")
        index[split] = arr
    return index


def copy_channels(src: np.ndarray, channels: slice, out: np.ndarray) -> None:
    """out[...] = src[..., channels] for a (.., 12) uint16 patch view, about twice as fast as numpy's own copy
    (each pixel's channel run is moved as one opaque item instead of element by element)."""
    start, stop, step = channels.indices(src.shape[-1])
    if step != 1 or src.strides[-1] != 2 or out.strides[-1] != 2 or src.dtype != np.uint16:
        out[...] = src[..., channels]
        return
    width = 2 * (stop - start)
    run = np.dtype({"names": ["c"], "formats": [f"V{width}"], "offsets": [2 * start], "itemsize": 2 * src.shape[-1]})
    out.view(f"V{width}")[..., 0] = src.view(run)[..., 0]["c"]


if __name__ == "__main__":
    main()
