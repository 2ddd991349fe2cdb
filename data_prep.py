"""Builds the paper's training and validation patch sets from DPDD as a fast patch store (raw uint16
scene arrays, memory-mapped, plus an index of kept patch corners), and opens that store for train.py.

Usage: python data_prep.py [--preset NAME] [--set key=value ...] [--split train|val|all] [--rebuild]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from config import REPO_DIR, Config, add_config_args, config_from_args
from dpdd import DatasetError, Scene, compare_with_official, find_dataset_root, list_scenes
from fileio import atomic_path, atomic_write_json, atomic_write_text, is_temporary
from images import ImageError, read_image

STORE_VERSION = 1
STORE_SPLITS = ("train", "val")
STORE_KEYS = ("working_width", "working_height", "patch_size", "overlap", "val_overlap", "discard_fraction",
              "sobel_ksizes", "dataset_root")
# Channel layout of every scene array (RGB order within each view).
CHANNELS = {"left": slice(0, 3), "right": slice(3, 6), "source": slice(6, 9), "target": slice(9, 12)}
NUM_CHANNELS = 12
INDEX_HEADER = ["split", "source", "row", "col"]


class StoreError(ValueError):
    """A patch store that is missing, incomplete, or built with other settings; the message says what to run."""


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

    def gather(self, split: str, rows, channels: slice = slice(None), out: np.ndarray | None = None) -> np.ndarray:
        """Patches `rows` of a split, channels `channels`, stacked into one uint16 array (B, P, P, C)."""
        start, stop, _ = channels.indices(NUM_CHANNELS)
        if out is None:
            out = np.empty((len(rows), self.patch_size, self.patch_size, stop - start), np.uint16)
        for k, i in enumerate(rows):
            copy_channels(self.patch(split, int(i)), channels, out[k])
        return out


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


def store_config(cfg: Config) -> dict:
    """The settings that define a store's content; a store built with other values is not reused."""
    d = cfg.to_dict()
    return {k: d[k] for k in STORE_KEYS}


def _resolved_root(value: str) -> str:
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(REPO_DIR, value))


def config_differences(stored: dict, cfg: Config) -> list[str]:
    """'key: X in the store, Y now' for every store setting that differs (dataset_root compared as a resolved path)."""
    now = store_config(cfg)
    out = []
    for key in STORE_KEYS:
        a, b = stored.get(key), now[key]
        if key == "dataset_root" and isinstance(a, str):
            same = _resolved_root(a) == _resolved_root(b)
        elif key == "sobel_ksizes" and isinstance(a, (list, tuple)):
            same = list(a) == list(b)
        else:
            same = a == b
        if not same:
            out.append(f"{key}: {a!r} in the store, {b!r} now")
    return out


def open_store(cfg: Config) -> PatchStore:
    """Open the complete patch store in cfg.patch_dir that was built with cfg's store settings.

    Raises StoreError (one line) when it is missing, incomplete, damaged, or was built with other settings.
    """
    patch_dir = cfg.resolve_path("patch_dir")
    run_hint = "run `python data_prep.py` with the same --preset/--set first"
    manifest_path = os.path.join(patch_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise StoreError(f"{patch_dir}: no complete patch store (manifest.json missing); {run_hint}")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        version = manifest["version"]
        stored = manifest["store_config"]
        counts = manifest["counts"]
        entries = manifest["sources"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{manifest_path}: unreadable manifest ({e}); {run_hint}") from None
    if version != STORE_VERSION:
        raise StoreError(f"{manifest_path}: store version {version}, this code reads {STORE_VERSION}; {run_hint}")
    diffs = config_differences(stored, cfg)
    if diffs:
        raise StoreError(f"{patch_dir}: patch store built with other settings ({'; '.join(diffs)}); "
                         f"{run_hint}, or point --set patch_dir=... at another folder")
    store = PatchStore(patch_dir=patch_dir, patch_size=cfg.patch_size, manifest=manifest)
    for split in STORE_SPLITS:
        store.images[split], store.sources[split] = [], []
        for entry in entries.get(split, []):
            rel, size = entry["store_file"]
            path = os.path.join(patch_dir, rel)
            if not os.path.isfile(path) or os.path.getsize(path) != size:
                raise StoreError(f"{path}: missing or not the size the manifest records ({size} bytes); {run_hint}")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise StoreError(f"{path}: unreadable scene array ({e}); {run_hint}") from None
            if arr.dtype != np.uint16 or list(arr.shape) != list(entry["shape"]):
                raise StoreError(f"{path}: {arr.dtype} {arr.shape}, the manifest records uint16 {entry['shape']}; "
                                 f"{run_hint}")
            store.images[split].append(arr)
            store.sources[split].append(entry["source"])
    store.index = _read_index(os.path.join(patch_dir, "index.csv"), store, counts, run_hint)
    if not len(store.index["train"]):
        raise StoreError(f"{patch_dir}: the store has no train patches; run `python data_prep.py --split train`")
    return store


def _read_index(path: str, store: PatchStore, counts: dict, run_hint: str) -> dict:
    """index.csv -> split -> int32 (N, 3) (image_number, row, col), checked against the manifest and image sizes."""
    numbers = {split: {s: i for i, s in enumerate(store.sources[split])} for split in STORE_SPLITS}
    rows: dict = {split: [] for split in STORE_SPLITS}
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if next(reader, None) != INDEX_HEADER:
                raise StoreError(f"{path}: header is not {','.join(INDEX_HEADER)}; {run_hint}")
            for line_no, rec in enumerate(reader, start=2):
                try:
                    split, source, r, c = rec
                    rows[split].append((numbers[split][source], int(r), int(c)))
                except (ValueError, KeyError):
                    raise StoreError(f"{path}:{line_no}: unknown split/source or bad row {rec}; {run_hint}") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read the patch index ({e}); {run_hint}") from None
    p = store.patch_size
    index = {}
    for split in STORE_SPLITS:
        arr = np.asarray(rows[split], dtype=np.int32).reshape(-1, 3)
        if len(arr) != counts.get(split, 0):
            raise StoreError(f"{path}: {len(arr)} {split} patches, the manifest records {counts.get(split, 0)}; "
                             f"{run_hint}")
        if len(arr):
            shapes = np.array([img.shape[:2] for img in store.images[split]], dtype=np.int64)[arr[:, 0]]
            bad = (arr[:, 1] < 0) | (arr[:, 2] < 0) | (arr[:, 1] + p > shapes[:, 0]) | (arr[:, 2] + p > shapes[:, 1])
            if bad.any():
                i = int(np.argmax(bad))
                raise StoreError(f"{path}: {split} patch {i} at ({arr[i, 1]}, {arr[i, 2]}) does not fit its "
                                 f"{p}x{p} window in {store.sources[split][arr[i, 0]]}; {run_hint}")
        index[split] = arr
    return index


# ----------------------------------------------------------------------------------------------------------
# Patch geometry and the sharpness filter (the authors' rules, protocol.md "Training set")

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


# ----------------------------------------------------------------------------------------------------------
# One scene: read, check, bring to the working size, select, write

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


def read_scene(scene: Scene) -> dict[str, np.ndarray]:
    """The scene's four images (left, right, source, target) as read, checked for one bit depth and one shape."""
    paths = {"left": scene.left_path, "right": scene.right_path, "source": scene.source_path,
             "target": scene.target_path}
    imgs = {name: read_image(path) for name, path in paths.items()}
    first = "source"
    for name, img in imgs.items():
        if img.dtype != imgs[first].dtype:
            raise DatasetError(f"{paths[name]}: {bits_of(img)}-bit, but {paths[first]} is "
                               f"{bits_of(imgs[first])}-bit (a dataset must not mix bit depths)")
        if img.shape != imgs[first].shape:
            raise DatasetError(f"{paths[name]}: {img.shape[1]}x{img.shape[0]} pixels, but {paths[first]} is "
                               f"{imgs[first].shape[1]}x{imgs[first].shape[0]} (left, right, source and target "
                               f"of a scene must match)")
    return imgs


def bits_of(img: np.ndarray) -> int:
    return 8 if img.dtype == np.uint8 else 16


def scene_inputs(scene: Scene, root: str) -> list[list]:
    """[relative path, size, mtime_ns] of the scene's files (source, target, left, right): a changed file
    means the stored scene is rebuilt."""
    out = []
    for path in (scene.source_path, scene.target_path, scene.left_path, scene.right_path):
        st = os.stat(path)
        out.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    return out


def build_scene(scene: Scene, cfg: Config, patch_dir: str, root: str) -> dict:
    """Write one scene's (H, W, 12) uint16 array and its sidecar (both atomically, sidecar last); return the sidecar."""
    inputs = scene_inputs(scene, root)
    imgs = read_scene(scene)
    imgs = {k: to_working_size(v, cfg.working_width, cfg.working_height) for k, v in imgs.items()}
    h, w = imgs["target"].shape[:2]
    if h < cfg.patch_size or w < cfg.patch_size:
        raise DatasetError(f"{scene.source_path}: {w}x{h} pixels at the working size, smaller than the "
                           f"{cfg.patch_size}x{cfg.patch_size} patch")
    bits = bits_of(imgs["target"])
    candidates, kept = select_patches(imgs["target"], cfg, scene.split)
    stack = np.empty((h, w, NUM_CHANNELS), np.uint16)
    for name, sl in CHANNELS.items():
        if bits == 8:
            np.multiply(imgs[name], np.uint16(257), out=stack[:, :, sl], casting="unsafe")  # exact: x/255 == 257x/65535
        else:
            stack[:, :, sl] = imgs[name]
    rel = f"{scene.split}/{scene.source}.npy"
    npy_path = os.path.join(patch_dir, rel)
    with atomic_path(npy_path) as tmp:
        np.save(tmp, stack)
    sidecar = {"version": STORE_VERSION, "store_config": store_config(cfg), "split": scene.split,
               "source": scene.source, "inputs": inputs, "store_file": [rel, os.path.getsize(npy_path)],
               "shape": list(stack.shape), "bits": bits, "candidates": candidates,
               "patches": [list(rc) for rc in kept]}
    atomic_write_json(os.path.join(patch_dir, scene.split, f"{scene.source}.json"), sidecar)
    return sidecar


def reusable_scene(scene: Scene, cfg: Config, patch_dir: str, root: str) -> dict | None:
    """The sidecar of a complete stored scene built from the same files with the same settings, else None."""
    path = os.path.join(patch_dir, scene.split, f"{scene.source}.json")
    try:
        with open(path) as f:
            sidecar = json.load(f)
        if (sidecar.get("version") != STORE_VERSION or config_differences(sidecar["store_config"], cfg)
                or sidecar["inputs"] != scene_inputs(scene, root)):
            return None
        rel, size = sidecar["store_file"]
        npy_path = os.path.join(patch_dir, rel)
        if os.path.getsize(npy_path) != size:
            return None
        arr = np.load(npy_path, mmap_mode="r")
        if arr.dtype != np.uint16 or list(arr.shape) != sidecar["shape"]:
            return None
        return sidecar
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process cancels; started scenes finish whole
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since spawn, see _build_scenes
    cv2.setNumThreads(1)


# ----------------------------------------------------------------------------------------------------------
# The whole store

def _read_stored_config(patch_dir: str) -> tuple[str, dict] | None:
    """(file, store settings) of what an earlier run stored in patch_dir: its manifest, else (when scene files
    exist) its config.json or a scene's sidecar. None when nothing was stored (e.g. the earlier run failed)."""
    sidecars = [os.path.join(patch_dir, split, n) for split in STORE_SPLITS
                if os.path.isdir(os.path.join(patch_dir, split))
                for n in sorted(os.listdir(os.path.join(patch_dir, split))) if n.endswith(".json")]
    candidates = [(os.path.join(patch_dir, "manifest.json"), "store_config")]
    if sidecars:
        candidates += [(os.path.join(patch_dir, "config.json"), None), (sidecars[0], "store_config")]
    for path, key in candidates:
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                d = json.load(f)
            return path, (d[key] if key else {k: d[k] for k in STORE_KEYS})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path}: unreadable ({e}); pass --rebuild to clear the store") from None
    return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def clear_store(patch_dir: str) -> None:
    """Delete what data_prep wrote into patch_dir (manifest first, so the store is never taken as complete)."""
    for name in ("manifest.json", "index.csv", "config.json"):
        _remove(os.path.join(patch_dir, name))
    for split in STORE_SPLITS:
        folder = os.path.join(patch_dir, split)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.endswith((".npy", ".json")) or is_temporary(name):
                    _remove(os.path.join(folder, name))
    for name in os.listdir(patch_dir):
        if is_temporary(name):
            _remove(os.path.join(patch_dir, name))


def _clean_leftovers(patch_dir: str, split: str, keep: set[str]) -> None:
    """Remove temporary files of killed runs and scene files of scenes no longer in the dataset."""
    folder = os.path.join(patch_dir, split)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        stale = name.endswith((".npy", ".json")) and os.path.splitext(name)[0] not in keep
        if is_temporary(name) or stale:
            _remove(os.path.join(folder, name))


def _check_bits(seen: dict[int, str], sidecar: dict, root: str) -> None:
    seen.setdefault(sidecar["bits"], os.path.join(root, sidecar["inputs"][0][0]))
    if len(seen) > 1:
        raise DatasetError(f"the dataset mixes bit depths: {seen[8]} is 8-bit, {seen[16]} is 16-bit "
                           f"(convert all images to one depth)")


def build_store(cfg: Config, splits=STORE_SPLITS, rebuild: bool = False, progress: bool = True) -> dict:
    """Build (or complete) the patch store in cfg.patch_dir for `splits`; return the manifest.

    Splits not asked for stay in the store when all their scenes are already complete there.
    """
    root = find_dataset_root(cfg)
    patch_dir = cfg.resolve_path("patch_dir")
    os.makedirs(patch_dir, exist_ok=True)
    recorded = _read_stored_config(patch_dir)
    if recorded and not rebuild:
        diffs = config_differences(recorded[1], cfg)
        if diffs:
            raise StoreError(f"{patch_dir} holds a patch store built with other settings ({'; '.join(diffs)}; "
                             f"see {recorded[0]}): use another --set patch_dir=..., or pass --rebuild to delete "
                             f"its scene files and rebuild it")
    if rebuild:
        clear_store(patch_dir)
    cfg.save_json(os.path.join(patch_dir, "config.json"))
    print(f"dataset: {root}")
    print(f"patch store: {patch_dir}")

    scenes: dict[str, list[Scene]] = {}
    for split in STORE_SPLITS:
        if split in splits:
            scenes[split] = list_scenes(root, split)
        else:
            try:
                scenes[split] = list_scenes(root, split)
            except DatasetError:
                scenes[split] = []
        print(f"{split}: {len(scenes[split])} scenes")
        for warning in compare_with_official(split, scenes[split]) if scenes[split] else []:
            print(f"warning: {warning}")

    done: dict[str, dict] = {}
    todo: list[Scene] = []
    for split in STORE_SPLITS:
        cached = {s.source: reusable_scene(s, cfg, patch_dir, root) for s in scenes[split]}
        if split not in splits:
            if scenes[split] and not all(cached.values()):
                print(f"note: {split} split not (completely) built; run with --split {split} or --split all to add it")
                scenes[split] = []
            else:
                done.update({f"{split}/{k}": v for k, v in cached.items()})
            continue
        _clean_leftovers(patch_dir, split, {s.source for s in scenes[split]})
        done.update({f"{split}/{k}": v for k, v in cached.items() if v})
        todo += [s for s in scenes[split] if not cached[s.source]]
    seen_bits: dict[int, str] = {}
    for sidecar in done.values():
        _check_bits(seen_bits, sidecar, root)
    for name in os.listdir(patch_dir):
        if is_temporary(name):
            _remove(os.path.join(patch_dir, name))

    total = sum(len(v) for v in scenes.values())
    print(f"{total - len(todo)} scenes already complete, {len(todo)} to build with {cfg.data_workers} worker(s)")
    if todo:
        _remove(os.path.join(patch_dir, "manifest.json"))  # the store is incomplete until the end
        start = time.time()

        def on_done(sidecar: dict) -> None:
            _check_bits(seen_bits, sidecar, root)
            done[f"{sidecar['split']}/{sidecar['source']}"] = sidecar

        _run_scenes(todo, cfg, patch_dir, root, total, total - len(todo), progress, on_done)
        elapsed = time.time() - start
        print(f"built {len(todo)} scenes in {elapsed:.1f} s ({elapsed / len(todo):.2f} s per scene)")

    return _write_index_and_manifest(cfg, patch_dir, root, scenes, done)


def _run_scenes(todo: list[Scene], cfg: Config, patch_dir: str, root: str, total: int, initial: int,
                progress: bool, on_done) -> None:
    """Build the scenes over cfg.data_workers processes, calling on_done(sidecar) as each completes; on any
    error or Ctrl-C the scenes not started are cancelled and the running ones finish whole."""
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="scene", desc="scenes", disable=not progress) as bar:
        if cfg.data_workers == 1:
            for scene in todo:
                on_done(build_scene(scene, cfg, patch_dir, root))
                bar.update()
            return
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
                on_done(future.result())
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _write_index_and_manifest(cfg: Config, patch_dir: str, root: str, scenes: dict, done: dict) -> dict:
    """index.csv, then manifest.json last: the manifest's presence is what marks the store complete."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(INDEX_HEADER)
    sources: dict[str, list] = {}
    counts: dict[str, int] = {}
    for split in STORE_SPLITS:
        sources[split] = []
        counts[split] = 0
        for scene in scenes[split]:  # sorted by source name (dpdd.list_scenes)
            sidecar = done[f"{split}/{scene.source}"]
            for r, c in sidecar["patches"]:
                writer.writerow([split, scene.source, r, c])
            counts[split] += len(sidecar["patches"])
            sources[split].append({"source": scene.source, "files": [f[:2] for f in sidecar["inputs"]],
                                   "store_file": sidecar["store_file"], "shape": sidecar["shape"],
                                   "bits": sidecar["bits"], "candidates": sidecar["candidates"],
                                   "kept": len(sidecar["patches"])})
        counts[f"{split}_scenes"] = len(scenes[split])
    index_path = os.path.join(patch_dir, "index.csv")
    manifest_path = os.path.join(patch_dir, "manifest.json")
    text = buf.getvalue()
    try:
        with open(index_path, newline="") as f:
            same = f.read() == text
    except OSError:
        same = False
    if not same:
        _remove(manifest_path)
        atomic_write_text(index_path, text)
    manifest = {"version": STORE_VERSION, "store_config": store_config(cfg), "dataset_root_found": root,
                "counts": counts, "sources": sources, "config": cfg.to_dict()}
    atomic_write_json(manifest_path, manifest)
    for split in STORE_SPLITS:
        if scenes[split]:
            cands = sum(e["candidates"] for e in sources[split])
            print(f"{split}: {counts[split]} patches kept of {cands} candidates from {len(scenes[split])} scenes")
    print(f"wrote {index_path} and {manifest_path}")
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--split", choices=("train", "val", "all"), default="all",
                        help="which split to build (default all); complete splits already in the store are kept")
    parser.add_argument("--rebuild", action="store_true",
                        help="delete the scene files in patch_dir first (needed when its store has other settings)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    splits = STORE_SPLITS if args.split == "all" else (args.split,)
    try:
        build_store(cfg, splits, rebuild=args.rebuild, progress=not args.no_progress)
    except (DatasetError, ImageError, StoreError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # e.g. a full disk; what was completed is kept
        sys.exit(f"error: {e}")
    except concurrent.futures.process.BrokenProcessPool as e:
        sys.exit(f"error: a data_prep worker died ({e}); completed scenes are kept, run again to continue")
    except KeyboardInterrupt:
        print("\ninterrupted: completed scenes are kept; run the same command again to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
