"""Builds the paper's training and validation patch sets from DPDD as a fast patch store (raw uint16
scene arrays, memory-mapped, plus an index of kept patch corners), and opens that store for train.py.

Usage: python data_prep.py [--preset NAME] [--set key=value ...] [--split train|val|all] [--rebuild]
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

import numpy as np

from config import REPO_DIR, Config

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

    def gather(self, split: str, rows, channels: slice = slice(None)) -> np.ndarray:
        """Patches `rows` of a split stacked into one uint16 array (B, P, P, C)."""
        rows = np.asarray(rows)
        first = self.patch(split, int(rows[0]), channels) if len(rows) else None
        depth = first.shape[2] if first is not None else NUM_CHANNELS
        out = np.empty((len(rows), self.patch_size, self.patch_size, depth), np.uint16)
        for k, i in enumerate(rows):
            out[k] = self.patch(split, int(i), channels)
        return out


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
