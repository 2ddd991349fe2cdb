"""The DPDD dataset layout: finding the root, pairing source/target/left/right per split, the official
split, the test set's indoor/outdoor labels (copies shipped in data/) and the paper's Table 1 on it."""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass

from config import REPO_DIR, Config, UserError
from images import IMAGE_EXTENSIONS, ImageError, bit_depth, levels, peak, read_image, white_from_values

SPLITS = ("train", "val", "test")
# Table 1 of the paper: the test set's groups, the metrics, and the published numbers (16-bit test images; in the
# order of METRICS; PROTOCOL.md, 'Evaluation').
GROUPS = ("indoor", "outdoor", "combined")
METRICS = ("psnr", "ssim", "mae", "lpips")
PAPER_TABLE1 = {
    "DPDNet": {"indoor": (27.48, 0.849, 0.029, 0.189), "outdoor": (22.90, 0.726, 0.052, 0.255),
               "combined": (25.13, 0.786, 0.041, 0.223)},
    "DPDNet-Single": {"indoor": (26.54, 0.816, 0.031, 0.239), "outdoor": (22.25, 0.682, 0.056, 0.313),
                      "combined": (24.34, 0.747, 0.044, 0.277)},
}
ROOT_NAMES = ("dd_dp_dataset_canon", "dd_dp_dataset_png")
OFFICIAL_SPLIT_CSV = os.path.join(REPO_DIR, "data", "dpdd_splits.csv")
TEST_CATEGORIES_CSV = os.path.join(REPO_DIR, "data", "dpdd_test_categories.csv")
HOW_TO_GET = ("Download DPDD (Abuolaim & Brown, ECCV 2020; see README, 'Data') and unpack it in the repository or the folder you run from, "
              "point --set dataset_root=PATH at it, or make a synthetic set with `python synthesize.py`.")


class DatasetError(UserError):
    """A missing or inconsistent dataset; the message names the path and what is wrong."""


@dataclass(frozen=True)
class Scene:
    split: str
    source: str        # the source file's name without extension, e.g. 1P0A0917
    source_path: str   # blurry combined image
    target_path: str   # all-in-focus image
    left_path: str
    right_path: str


def find_dataset_root(cfg: Config) -> str:
    """The configured dataset root, or a known alternative name beside it; DatasetError says where it looked."""
    configured = cfg.resolve_path("dataset_root")
    candidates = [configured]
    if os.path.basename(os.path.normpath(configured)) in ROOT_NAMES:
        parent = os.path.dirname(os.path.normpath(configured))
        candidates += [os.path.join(parent, n) for n in ROOT_NAMES]
        candidates += [os.path.join(os.getcwd(), n) for n in ROOT_NAMES]
    seen = []
    for c in candidates:
        if c not in seen:
            seen.append(c)
        if os.path.isdir(c):
            return c
    raise DatasetError(f"dataset not found; looked in: {', '.join(seen)}. {HOW_TO_GET}")


def _images_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith("."))


def split_folders(root: str, split: str) -> dict[str, str]:
    """The four folders of a split: source (blurry combined), target (all-in-focus), left and right views."""
    return {"source": os.path.join(root, f"{split}_c", "source"), "target": os.path.join(root, f"{split}_c", "target"),
            "left": os.path.join(root, f"{split}_l", "source"), "right": os.path.join(root, f"{split}_r", "source")}


def list_scenes(root: str, split: str) -> list[Scene]:
    """All scenes of a split, sorted by source name; targets paired by position, views by name."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    src_dir, tgt_dir, l_dir, r_dir = split_folders(root, split).values()
    for d in (src_dir, l_dir, r_dir, tgt_dir):
        if not os.path.isdir(d):
            raise DatasetError(f"{d}: folder missing (DPDD layout: {split}_c/source, {split}_c/target, "
                               f"{split}_l/source, {split}_r/source)")
    sources = _images_in(src_dir)
    if not sources:
        raise DatasetError(f"{src_dir}: no images")
    targets = _images_in(tgt_dir)
    if len(targets) != len(sources):
        raise DatasetError(f"{tgt_dir}: {len(targets)} targets for {len(sources)} sources in {src_dir}")
    lefts = {os.path.splitext(f)[0]: f for f in _images_in(l_dir)}
    rights = {os.path.splitext(f)[0]: f for f in _images_in(r_dir)}
    scenes = []
    for i, name in enumerate(sources):
        stem = os.path.splitext(name)[0]
        if stem + "_L" not in lefts:
            raise DatasetError(f"{os.path.join(src_dir, name)}: left view {stem}_L missing in {l_dir}")
        if stem + "_R" not in rights:
            raise DatasetError(f"{os.path.join(src_dir, name)}: right view {stem}_R missing in {r_dir}")
        scenes.append(Scene(split, stem, os.path.join(src_dir, name), os.path.join(tgt_dir, targets[i]),
                            os.path.join(l_dir, lefts[stem + "_L"]), os.path.join(r_dir, rights[stem + "_R"])))
    extra = sorted(set(lefts) - {s.source + "_L" for s in scenes}) + sorted(set(rights) - {s.source + "_R" for s in scenes})
    if extra:
        raise DatasetError(f"{split}: view {extra[0]} has no source image in {src_dir}")
    return scenes


def dataset_levels(cfg: Config) -> tuple[int, int | None]:
    """(black, white) of the dataset's files: cfg.black_level and cfg.white_level, None for white_level 0 (each
    image's own bit depth's maximum), as images.to_float and images.rescale take them."""
    return cfg.black_level, cfg.white_level or None


def check_levels(cfg: Config, root: str, scenes: list[Scene]) -> str:
    """Before anything is written: the levels fit the first scene's files (scene_levels), and with white_level
    unset a 16-bit dataset whose ground-truth images all fit in 10 or 12 bits, as raw frames stored unscaled do, is
    refused (read as 16-bit they would train and test on nearly black images). Judged on all the scenes, not one
    (a dark scene of an ordinary dataset passes); stops reading at the first image above 14 bits. Returns a warning
    for the caller to print when all fit in 14 bits (a 14-bit sensor's raw frames, or a dark dataset), else ''."""
    if not scenes:
        return ""
    first = scenes[0]
    images = [read_image(p) for p in (first.target_path, first.source_path, first.left_path, first.right_path)]
    scene_levels(cfg, images, first.source_path)
    if cfg.white_level:
        return ""
    high = 0
    for img in itertools.chain(images[:1], (read_image(scene.target_path) for scene in scenes[1:])):
        high = max(high, int(img.max()))
        if bit_depth(img) != 16 or high > peak(14):
            return ""
    if high and white_from_values(16, high) == peak(16):
        return (f"warning: every value of the {len(scenes)} scenes' 16-bit ground truth is within 14 bits (largest "
                f"{high}): for a 14-bit sensor's raw frames stored unscaled, --set white_level={peak(14)}")
    if high:
        raw = white_from_values(16, high)
        raise DatasetError(f"{root}: every value of the {len(scenes)} scenes' 16-bit ground truth is within "
                           f"{raw.bit_length()} bits (largest {high}), as in raw frames stored unscaled: --set "
                           f"white_level={raw} reads them so (with --set black_level=N for the sensor's black "
                           f"level), --set white_level={peak(16)} as 16-bit")
    return ""


def scene_levels(cfg: Config, images: list, name: str) -> tuple[int, int | None]:
    """dataset_levels(cfg), checked against the bit depth of each of one scene's images as read."""
    for img in images:
        try:
            levels(img, black=cfg.black_level, white=cfg.white_level or peak(bit_depth(img)), name=name)
        except ImageError as e:
            raise DatasetError(f"{e} (the dataset's levels: --set black_level=N --set white_level=N)") from None
    return dataset_levels(cfg)


def official_split() -> dict[str, list[tuple[str, str]]]:
    """The official DPDD split: split -> [(source, target), ...] (350 / 74 / 76 scenes)."""
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    with open(OFFICIAL_SPLIT_CSV, newline="") as f:
        for row in csv.DictReader(f):
            out[row["split"]].append((row["source"], row["target"]))
    return out


def compare_with_official(split: str, scenes: list[Scene]) -> list[str]:
    """Warnings for scenes missing from, or not in, the official split (empty for synthetic sets' own names)."""
    official = {s for s, _ in official_split()[split]}
    have = {s.source for s in scenes}
    if not have & official:
        return [f"{split}: none of the {len(have)} scenes is in the official DPDD split (a custom or synthetic set)"]
    warnings = []
    missing, extra = sorted(official - have), sorted(have - official)
    if missing:
        warnings.append(f"{split}: {len(missing)} official scenes missing (first: {missing[0]})")
    if extra:
        warnings.append(f"{split}: {len(extra)} scenes not in the official split (first: {extra[0]})")
    return warnings


AUTHOR_LABEL_FILES = {"indoor": "indoor_labels.npy", "outdoor": "outdoor_labels.npy"}
SHIPPED_LABELS_NOTE = ("data/dpdd_test_categories.csv, a third-party copy of the DPDD test labels (37 indoor / 39 "
                       "outdoor, consistent with the paper) that has not been checked against the authors' own label "
                       "arrays; the per-category means depend on it, the combined mean does not.")


@dataclass(frozen=True)
class Labels:
    categories: dict   # test scene source name -> 'indoor' / 'outdoor'
    source: str        # the file(s) they came from
    note: str          # one sentence for result summaries
    disagreements: list  # per scene, where the authors' arrays and the CSV they replace differ


def load_test_labels(root: str | None = None) -> Labels:
    """The test set's indoor/outdoor labels and where they came from. The authors' indoor_labels.npy and
    outdoor_labels.npy in the dataset root win; then the dataset's own test_categories.csv; then the shipped copy.
    Where the authors' arrays win, each scene the CSV labels otherwise is listed in `disagreements`."""
    csv_path = TEST_CATEGORIES_CSV
    if root and os.path.isfile(os.path.join(root, "test_categories.csv")):
        csv_path = os.path.join(root, "test_categories.csv")
    with open(csv_path, newline="") as f:
        from_csv = {row["source"]: row["category"] for row in csv.DictReader(f)}
    csv_note = (f"{csv_path} (the dataset's own)." if csv_path != TEST_CATEGORIES_CSV else SHIPPED_LABELS_NOTE)
    authors = read_author_labels(root) if root else None
    if authors is None:
        return Labels(from_csv, csv_path, csv_note, [])
    disagreements = [f"{name}: {cat} in the authors' arrays, {from_csv[name]} in {os.path.basename(csv_path)}"
                     for name, cat in sorted(authors.items()) if name in from_csv and from_csv[name] != cat]
    files = " and ".join(os.path.join(root, n) for n in AUTHOR_LABEL_FILES.values())
    note = (f"{files}, the authors' own label arrays ({sum(c == 'indoor' for c in authors.values())} indoor / "
            f"{sum(c == 'outdoor' for c in authors.values())} outdoor); "
            + (f"{len(disagreements)} scene(s) labelled otherwise in {csv_path}." if disagreements
               else f"they agree with {csv_path} on every scene both label."))
    return Labels(authors, files, note, disagreements)


def read_author_labels(root: str) -> dict[str, str] | None:
    """{source: category} from the authors' label arrays in `root`, or None when neither file is there.

    Their format, as their test script (and Restormer's) uses it: each .npy holds a 1-D integer array of 1-based
    indices into the test scenes sorted by name (metric[indoor_labels - 1] are the indoor images)."""
    paths = {cat: os.path.join(root, name) for cat, name in AUTHOR_LABEL_FILES.items()}
    present = [p for p in paths.values() if os.path.isfile(p)]
    if not present:
        return None
    if len(present) == 1:
        missing = [p for p in paths.values() if p not in present][0]
        raise DatasetError(f"{missing}: missing beside {present[0]} (the authors' label files come as a pair)")
    import numpy as np
    scenes = list_scenes(root, "test")
    out: dict[str, str] = {}
    for cat, path in paths.items():
        try:
            indices = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: not a NumPy array of scene indices ({str(e).splitlines()[0]})") from None
        indices = np.asarray(indices).ravel()
        if indices.dtype.kind == "f" and np.all(indices == np.round(indices)):
            indices = indices.astype(np.int64)
        if indices.dtype.kind not in "iu":
            raise DatasetError(f"{path}: holds {indices.dtype} values; expected 1-based integer scene indices")
        for i in indices.tolist():
            if not 1 <= i <= len(scenes):
                raise DatasetError(f"{path}: index {i} is outside 1..{len(scenes)} (1-based indices into the "
                                   f"{len(scenes)} name-sorted test scenes)")
            name = scenes[i - 1].source
            if out.get(name, cat) != cat:
                raise DatasetError(f"{path}: scene {i} ({name}) is also in {paths[out[name]]}")
            out[name] = cat
    return out

