"""data_prep.py: the authors' patch grid and sharpness filter (against slow literal references), the stored
pixels (pass-through, rotation, area downscaling, 8-bit), bad input, idempotence and interrupted runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import data_prep
from config import REPO_DIR, make_config
from evalkit import as_raw
from fileio import is_temporary
from images import write_image

SMALL = {"working_width": 240, "working_height": 160, "patch_size": 64, "data_workers": 1}


# ---------------------------------------------------------------------------------------------------------
# Slow, literal references (the authors' loops, written out again)

def authors_grid(h, w, p, stride):
    """The authors' slice_stride loop: stride grid, then right edge / bottom edge / corner via an elif chain."""
    coords, seen = [], [[0, 0, 0, 0]]
    for r in range(0, h, stride):
        for c in range(0, w, stride):
            if r + p <= h and c + p <= w:
                coords.append((r, c))
            elif r + p <= h and [r, r + p, w - p, w] not in seen:
                coords.append((r, w - p))
                seen.append([r, r + p, w - p, w])
            elif c + p <= w and [h - p, h, c, c + p] not in seen:
                coords.append((h - p, c))
                seen.append([h - p, h, c, c + p])
            elif [h - p, h, w - p, w] not in seen:
                coords.append((h - p, w - p))
                seen.append([h - p, h, w - p, w])
    return coords


def reference_selection(target_rgb, p, stride, ksizes, fraction):
    """Kept corners and the fitness, computed patch by patch on the BGR array as the authors' code did."""
    coords = authors_grid(target_rgb.shape[0], target_rgb.shape[1], p, stride)
    bgr = target_rgb[:, :, ::-1]
    fitness = np.ones(len(coords))
    for k in ksizes:
        energy = []
        for r, c in coords:
            gray = cv2.cvtColor(np.ascontiguousarray(bgr[r:r + p, c:c + p]), cv2.COLOR_BGR2GRAY)
            gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=k)
            gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=k)
            energy.append(np.sum(np.sqrt(gx * gx + gy * gy)))
        energy = np.asarray(energy)
        spread = energy - energy.min()
        fitness = fitness * (spread / spread.max() if spread.max() > 0 else np.zeros(len(coords)))
    drop = int(fraction * len(coords))
    order = sorted(range(len(coords)), key=lambda i: (fitness[i], i))
    dropped = set(order[:drop])
    return [coords[i] for i in range(len(coords)) if i not in dropped], fitness, drop


# ---------------------------------------------------------------------------------------------------------
# Small DPDD-layout datasets

def textured(rng, h, w):
    """An RGB float image whose sharpness varies over the frame (so the filter has something to choose)."""
    sharp = rng.random((h, w, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    mask = cv2.resize(rng.random((3, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[:, :, None]
    return mask * sharp + (1 - mask) * blurred


def make_scene(root, split, name, h, w, rng, bits=16, target=None):
    """Write one scene (source, target, left, right) in the DPDD layout; return {role: (path, written array)}."""
    target = textured(rng, h, w) if target is None else target
    source = cv2.GaussianBlur(target, (0, 0), 1.5)
    images = {"target": (f"{split}_c/target/{name}_t.png", target), "source": (f"{split}_c/source/{name}.png", source),
              "left": (f"{split}_l/source/{name}_L.png", np.roll(source, 1, axis=1)),
              "right": (f"{split}_r/source/{name}_R.png", np.roll(source, -1, axis=1))}
    out = {}
    for role, (rel, img) in images.items():
        path = os.path.join(root, rel)
        write_image(path, img, bits)
        out[role] = (path, cv2.imread(path, cv2.IMREAD_UNCHANGED)[:, :, ::-1])
    return out


def make_dataset(root, n_train, n_val, h, w, seed=0, bits=16):
    rng = np.random.default_rng(seed)
    return {f"{split}/{split}{i:02d}": make_scene(root, split, f"{split}{i:02d}", h, w, rng, bits)
            for split, n in (("train", n_train), ("val", n_val)) for i in range(n)}


def cfg_for(root, store, **overrides):
    return make_config("paper", {"dataset_root": str(root), "patch_dir": str(store), **overrides})


def argv_for(root, store, **overrides):
    argv = ["--no-progress", "--set", f"dataset_root={root}", "--set", f"patch_dir={store}"]
    for k, v in overrides.items():
        argv += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"]
    return argv


def run_main(root, store, *extra, **overrides):
    """data_prep.main in-process; returns the SystemExit message (None when it succeeded)."""
    try:
        data_prep.main(argv_for(root, store, **overrides) + list(extra))
    except SystemExit as e:
        return e.code
    return None


def snapshot(folder):
    """Every file under folder (relative path -> bytes)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def stored(store, split, name):
    return np.load(os.path.join(store, split, f"{name}.npy"))


def index_rows(store):
    with open(os.path.join(store, "index.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "split,source,row,col"
    return [(s, n, int(r), int(c)) for s, n, r, c in (line.split(",") for line in lines[1:])]


# ---------------------------------------------------------------------------------------------------------
# Geometry and selection

def test_paper_grid_counts_and_order():
    cfg = make_config("paper")
    assert (cfg.train_stride, cfg.val_stride) == (204, 506)
    train = data_prep.patch_grid(1120, 1680, 512, cfg.train_stride)
    assert len(train) == 28
    assert set(train) == {(r, c) for r in (0, 204, 408, 608) for c in (0, 204, 408, 612, 816, 1020, 1168)}
    assert train == authors_grid(1120, 1680, 512, 204)
    assert train[6:9] == [(0, 1168), (608, 1168), (204, 0)]  # the authors' loop adds the corner after row 0
    val = data_prep.patch_grid(1120, 1680, 512, cfg.val_stride)
    assert val == [(r, c) for r in (0, 506, 608) for c in (0, 506, 1012, 1168)]


@pytest.mark.parametrize("h,w,p,stride", [
    (150, 230, 64, 25), (230, 150, 64, 25), (150, 230, 64, 63), (64, 64, 64, 25), (64, 100, 64, 25),
    (114, 139, 64, 25),      # (114 - 64) and (139 - 64) are multiples of the stride: the authors' duplicates
    (97, 301, 32, 12), (512, 512, 512, 204), (1680, 1120, 512, 204), (4480 // 4, 6720 // 4, 512, 506)])
def test_grid_matches_authors_loop_and_covers_the_image(h, w, p, stride):
    coords = data_prep.patch_grid(h, w, p, stride)
    assert coords == authors_grid(h, w, p, stride)
    covered = np.zeros((h, w), bool)
    for r, c in coords:
        assert 0 <= r <= h - p and 0 <= c <= w - p
        covered[r:r + p, c:c + p] = True
    assert covered.all()


def test_grid_random_sizes_match_authors_loop():
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = int(rng.integers(8, 80))
        h, w = int(rng.integers(p, 4 * p)), int(rng.integers(p, 4 * p))
        stride = int(rng.integers(1, p + 1))
        assert data_prep.patch_grid(h, w, p, stride) == authors_grid(h, w, p, stride), (h, w, p, stride)


@pytest.mark.parametrize("dtype,h,w,p,stride,ksizes", [
    (np.uint16, 150, 230, 64, 25, (3, 7, 11, 15)), (np.uint8, 150, 230, 64, 25, (3, 7, 11, 15)),
    (np.uint16, 200, 137, 48, 19, (3, 5)), (np.uint16, 114, 139, 64, 25, (3, 7, 11, 15))])
def test_selection_matches_slow_reference(dtype, h, w, p, stride, ksizes):
    rng = np.random.default_rng(h + w)
    peak = np.iinfo(dtype).max
    target = (np.clip(textured(rng, h, w), 0, 1) * peak).astype(dtype)
    cfg = make_config("paper", {"working_width": 300, "working_height": 300, "patch_size": p,
                                "overlap": 1 - (stride + 0.5) / p, "sobel_ksizes": ksizes})
    assert cfg.train_stride == stride
    expected, _, drop = reference_selection(target, p, stride, ksizes, cfg.discard_fraction)
    candidates, kept = data_prep.select_patches(target, cfg, "train")
    assert drop > 0 and candidates == len(expected) + drop
    assert kept == expected


def test_selection_ties_go_to_the_first_index():
    # A gray texture (R = G = B) with period = stride makes every grid patch identical: their fitness ties.
    rng = np.random.default_rng(1)
    tile = np.repeat(rng.integers(0, 60000, (25, 25, 1), dtype=np.uint16), 3, axis=2)
    target = np.tile(tile, (7, 10, 1))[:150, :230]
    # +1 in blue in a corner of patch 0 only: invisible in OpenCV's integer grayscale (+0.114 rounds away),
    # so patch 0 still ties; a float grayscale would see it and keep patch 0.
    target[:20, :20, 2] += rng.integers(0, 2, (20, 20), dtype=np.uint16)
    p, stride = 64, 25
    expected, fitness, drop = reference_selection(target, p, stride, (3, 7, 11, 15), 0.3)
    ordered = np.sort(fitness)
    assert ordered[drop - 1] == ordered[drop], "the tie must straddle the cut for this test to mean anything"
    assert fitness[0] == ordered[drop] and (0, 0) not in expected
    cfg = make_config("paper", {"working_width": 300, "working_height": 300, "patch_size": p})
    assert data_prep.select_patches(target, cfg, "train")[1] == expected
    # All patches equal (a flat image): min-max divides by zero; the first int(0.3 N) patches are dropped.
    flat = np.full((150, 230, 3), 1000, np.uint16)
    coords = data_prep.patch_grid(150, 230, p, stride)
    assert data_prep.select_patches(flat, cfg, "train")[1] == coords[int(0.3 * len(coords)):]


# ---------------------------------------------------------------------------------------------------------
# Whole runs

def test_full_size_paper_store(tmp_path):
    """1120x1680 and a portrait 1680x1120 train scene, one val scene: paper counts, exact pixels, the
    reference selection, index.csv and open_store."""
    root, store = tmp_path / "dd_dp_dataset_png", tmp_path / "patches"
    rng = np.random.default_rng(0)
    scenes = {"train/a": make_scene(root, "train", "a", 1120, 1680, rng),
              "train/b": make_scene(root, "train", "b", 1680, 1120, rng),  # portrait
              "val/c": make_scene(root, "val", "c", 1120, 1680, rng)}
    cfg = cfg_for(root, store, data_workers=2)
    manifest = data_prep.build_store(cfg, progress=False)
    assert manifest["counts"] == {"train": 40, "val": 12, "train_scenes": 2, "val_scenes": 1}
    rows = index_rows(store)
    assert len(rows) == 52 and [r[:2] for r in rows] == [("train", "a")] * 20 + [("train", "b")] * 20 + [("val", "c")] * 12
    for key, files in scenes.items():
        split, name = key.split("/")
        arr = stored(store, split, name)
        assert arr.shape == (1120, 1680, 12) and arr.dtype == np.uint16
        for role, sl in data_prep.CHANNELS.items():
            png = files[role][1]
            if png.shape[0] > png.shape[1]:
                png = np.rot90(png, k=-1)  # portrait: rotated clockwise
            np.testing.assert_array_equal(arr[:, :, sl], png)  # bit-exact pass-through
        target = arr[:, :, data_prep.CHANNELS["target"]]
        if split == "train":
            expected, _, _ = reference_selection(target, 512, 204, (3, 7, 11, 15), 0.3)
        else:
            expected = data_prep.patch_grid(1120, 1680, 512, 506)
        assert [(r, c) for s, n, r, c in rows if n == name] == expected
    opened = data_prep.open_store(cfg)
    assert opened.patch_size == 512 and opened.sources == {"train": ["a", "b"], "val": ["c"]}
    assert opened.index["train"].dtype == np.int32 and opened.index["train"].shape == (40, 3)
    n, r, c = opened.index["train"][25]
    assert (n, r, c) == (1, rows[25][2], rows[25][3])
    np.testing.assert_array_equal(opened.patch("train", 25), stored(store, "train", "b")[r:r + 512, c:c + 512])
    batch = opened.gather("val", [0, 11], data_prep.CHANNELS["target"])
    assert batch.shape == (2, 512, 512, 3)
    np.testing.assert_array_equal(batch[1], scenes["val/c"]["target"][1][608:, 1168:])
    assert json.load(open(store / "config.json"))["patch_size"] == 512


def test_small_sizes_portrait_and_val_counts(tmp_path):
    root, store = tmp_path / "data", tmp_path / "store"
    rng = np.random.default_rng(3)
    make_scene(root, "train", "land", 150, 230, rng)
    portrait = make_scene(root, "train", "port", 230, 150, rng)
    make_scene(root, "val", "v", 150, 230, rng)
    cfg = cfg_for(root, store, **SMALL)
    manifest = data_prep.build_store(cfg, progress=False)
    grid = authors_grid(150, 230, 64, 25)
    assert len(grid) == 40 and cfg.train_stride == 25
    assert [e["candidates"] for e in manifest["sources"]["train"]] == [40, 40]
    assert [e["kept"] for e in manifest["sources"]["train"]] == [28, 28]
    assert manifest["sources"]["val"][0]["candidates"] == manifest["counts"]["val"] == 12
    assert [(r, c) for s, n, r, c in index_rows(store) if s == "val"] == authors_grid(150, 230, 64, 63)
    arr = stored(store, "train", "port")
    assert arr.shape == (150, 230, 12)
    np.testing.assert_array_equal(arr[:, :, 9:12], np.rot90(portrait["target"][1], k=-1))
    expected, _, _ = reference_selection(arr[:, :, 9:12], 64, 25, (3, 7, 11, 15), 0.3)
    assert [(r, c) for s, n, r, c in index_rows(store) if n == "port"] == expected


def test_area_downscale_and_8bit(tmp_path):
    root, store = tmp_path / "data", tmp_path / "store"
    big = make_dataset(root, 1, 1, 320, 480)  # 2x the 240x160 working size
    manifest = data_prep.build_store(cfg_for(root, store, **SMALL), progress=False)
    arr = stored(store, "train", "train00")
    assert arr.shape == (160, 240, 12)
    for role, sl in data_prep.CHANNELS.items():
        np.testing.assert_array_equal(arr[:, :, sl], cv2.resize(big["train/train00"][role][1], (240, 160),
                                                                interpolation=cv2.INTER_AREA))
    assert manifest["sources"]["train"][0]["bits"] == 16

    root8, store8 = tmp_path / "data8", tmp_path / "store8"
    small = make_dataset(root8, 1, 1, 150, 230, bits=8)
    manifest = data_prep.build_store(cfg_for(root8, store8, **SMALL), progress=False)
    assert manifest["sources"]["train"][0]["bits"] == 8
    arr = stored(store8, "train", "train00")
    for role, sl in data_prep.CHANNELS.items():
        png = small["train/train00"][role][1]
        assert png.dtype == np.uint8
        np.testing.assert_array_equal(arr[:, :, sl], png.astype(np.uint16) * 257)
        np.testing.assert_array_equal(arr[:, :, sl] / 65535.0, png / 255.0)
    expected, _, _ = reference_selection(small["train/train00"]["target"][1], 64, 25, (3, 7, 11, 15), 0.3)
    assert [(r, c) for s, n, r, c in index_rows(store8) if s == "train"] == expected


def test_mixed_bit_depths_are_refused(tmp_path):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 2, 1, 150, 230)
    rng = np.random.default_rng(9)
    make_scene(root, "train", "train01", 150, 230, rng, bits=8)  # a whole 8-bit scene among 16-bit ones
    msg = run_main(root, store, **{**SMALL, "data_workers": 2})
    assert msg.startswith("error: the dataset mixes bit depths")
    assert "train01.png is 8-bit" in msg and "-bit" in msg.split("8-bit,")[1]
    assert not (store / "manifest.json").exists()
    # Within one scene: the message names both files.
    make_scene(root, "train", "train01", 150, 230, rng)
    write_image(str(root / "train_l/source/train01_L.png"), textured(rng, 150, 230), 8)
    msg = run_main(root, store, **SMALL)
    assert "train01_L.png: 8-bit, but" in msg and "train01.png is 16-bit" in msg
    # An 8-bit split beside a 16-bit split kept from the store.
    make_scene(root, "train", "train01", 150, 230, rng)
    assert run_main(root, store, **SMALL) is None
    make_scene(root, "val", "val00", 150, 230, rng, bits=8)
    msg = run_main(root, store, **SMALL)
    assert msg.startswith("error: the dataset mixes bit depths") and "val00.png is 8-bit" in msg


def test_raw_frames_are_refused_or_read_at_the_dataset_levels(tmp_path, capsys):
    make_dataset(tmp_path / "data", 2, 1, 150, 230)
    raw = tmp_path / "raw"
    as_raw(str(tmp_path / "data"), str(raw), 64, 1023)
    msg = run_main(raw, tmp_path / "guess", **SMALL)
    assert msg.startswith("error: ") and "within 10 bits (largest " in msg and "--set white_level=1023" in msg
    assert not (tmp_path / "guess" / "manifest.json").exists()
    for rel in ("train_c/target/train00_t.png", "train_c/source/train00.png", "train_l/source/train00_L.png",
                "train_r/source/train00_R.png"):  # one dark scene in an ordinary dataset is no raw data
        path = str(tmp_path / "data" / rel)
        cv2.imwrite(path, cv2.imread(path, cv2.IMREAD_UNCHANGED) // 20)
    assert run_main(tmp_path / "data", tmp_path / "dark", **SMALL) is None
    assert "within 14 bits" not in capsys.readouterr().err
    as_raw(str(tmp_path / "data"), str(tmp_path / "raw14"), 0, 16383)  # 14-bit raw: read as 16-bit, with a warning
    assert run_main(tmp_path / "raw14", tmp_path / "s14", **SMALL) is None
    err = capsys.readouterr().err
    assert "within 14 bits (largest " in err and "--set white_level=16383" in err
    # At its levels, the store holds what the same frames normalised here in float64 give.
    store = tmp_path / "store"
    assert run_main(raw, store, **SMALL, black_level=64, white_level=1023) is None
    for name, split in (("train00", "train"), ("train01", "train"), ("val00", "val")):
        arr = stored(store, split, name)
        for role, rel in (("target", f"{split}_c/target/{name}_t.png"), ("left", f"{split}_l/source/{name}_L.png")):
            frame = cv2.imread(str(raw / rel), cv2.IMREAD_UNCHANGED)[:, :, ::-1].astype(np.float64)
            by_hand = np.rint(np.clip((frame - 64) / (1023 - 64), 0, 1) * 65535)
            assert np.abs(arr[:, :, data_prep.CHANNELS[role]] - by_hand).max() <= 1
    hand = tmp_path / "hand"  # those normalised frames as ordinary 16-bit files: the same patches are kept
    for dirpath, _, names in os.walk(raw):
        for name in names:
            frame = cv2.imread(os.path.join(dirpath, name), cv2.IMREAD_UNCHANGED).astype(np.float64)
            path = os.path.join(hand, os.path.relpath(dirpath, raw), name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, np.rint(np.clip((frame - 64) / 959, 0, 1) * 65535).astype(np.uint16))
    assert run_main(hand, tmp_path / "hand_store", **SMALL) is None
    assert index_rows(store) == index_rows(tmp_path / "hand_store")
    assert "black_level: 64 in the store, 0 now" in run_main(raw, store, **SMALL, white_level=1023)
    # white_level 65535 reads the frames as 16-bit, value for value (the old behaviour, now asked for).
    assert run_main(raw, tmp_path / "as16", **SMALL, white_level=65535) is None
    target = cv2.imread(str(raw / "val_c/target/val00_t.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(stored(tmp_path / "as16", "val", "val00")[:, :, data_prep.CHANNELS["target"]], target)


def test_missing_root_exits_1_without_tensorflow(tmp_path):
    code = ("import sys, data_prep\n"
            "try:\n    data_prep.main(sys.argv[1:])\n"
            "finally:\n    print('tensorflow imported' if {'tensorflow', 'keras'} & set(sys.modules) else 'no tensorflow')\n")
    proc = subprocess.run([sys.executable, "-c", code, "--set", f"dataset_root={tmp_path / 'nowhere'}",
                           "--set", f"patch_dir={tmp_path / 'store'}"], cwd=REPO_DIR, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "no tensorflow" in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset not found; looked in:") and str(tmp_path / "nowhere") in last
    assert "synthesize.py" in last


def _break(root, case):
    rng = np.random.default_rng(0)
    if case == "missing view":
        os.remove(root / "train_r/source/train01_R.png")
        return "train01.png: right view train01_R missing"
    if case == "truncated":
        path = root / "train_c/target/train00_t.png"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "train00_t.png: unreadable or truncated image"
    if case == "shape mismatch":
        write_image(str(root / "val_l/source/val00_L.png"), textured(rng, 150, 228))
        return "val00_L.png: 228x150 pixels, but"
    if case == "gray image":
        cv2.imwrite(str(root / "train_c/source/train01.png"), np.zeros((150, 230), np.uint16))
        return "train01.png: has 1 channel(s), expected 3"
    if case == "alpha image":
        cv2.imwrite(str(root / "train_r/source/train00_R.png"), np.zeros((150, 230, 4), np.uint16))
        return "train00_R.png: has 4 channel(s), expected 3"
    if case == "too small":
        for rel in ("train_c/source/train01.png", "train_c/target/train01_t.png", "train_l/source/train01_L.png",
                    "train_r/source/train01_R.png"):
            write_image(str(root / rel), textured(rng, 60, 230))
        return "train01.png: 230x60 pixels at the working size, smaller than the 64x64 patch"
    raise AssertionError(case)


@pytest.mark.parametrize("case,workers", [(c, 1) for c in ("missing view", "truncated", "shape mismatch", "gray image",
                                                              "alpha image", "too small")]
                         + [("truncated", 2), ("shape mismatch", 2)])  # errors raised in worker processes
def test_bad_input_names_the_file(tmp_path, case, workers):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 2, 1, 150, 230)
    expected = _break(root, case)
    msg = run_main(root, store, **{**SMALL, "data_workers": workers})
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg
    assert expected in msg, msg
    assert not (store / "manifest.json").exists()
    with pytest.raises(data_prep.StoreError, match="manifest.json missing"):
        data_prep.open_store(cfg_for(root, store, **SMALL))


def test_rerun_keeps_an_up_to_date_store_and_rebuilds_a_changed_split(tmp_path, capsys):
    root, store = tmp_path / "data", tmp_path / "store"
    scenes = make_dataset(root, 3, 1, 150, 230)
    assert run_main(root, store, **SMALL) is None
    first = snapshot(store)
    mtimes = {p: os.stat(store / p).st_mtime_ns for p in first}
    capsys.readouterr()
    assert run_main(root, store, **SMALL) is None
    out = capsys.readouterr().out
    assert "4 scenes kept from the store, 0 to build" in out and "the patch store is up to date" in out
    assert snapshot(store) == first
    assert {p: os.stat(store / p).st_mtime_ns for p in mtimes} == mtimes  # nothing was rewritten
    # A changed dataset image: its split is rebuilt (the other split is kept), with the new content.
    time.sleep(0.01)
    new_target = textured(np.random.default_rng(42), 150, 230)
    write_image(scenes["train/train01"]["target"][0], new_target)
    assert run_main(root, store, **SMALL) is None
    assert "1 scenes kept from the store, 3 to build" in capsys.readouterr().out
    assert os.stat(store / "val/val00.npy").st_mtime_ns == mtimes["val/val00.npy"]
    png = cv2.imread(scenes["train/train01"]["target"][0], cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(stored(store, "train", "train01")[:, :, 9:12], png)
    # A scene removed from the dataset leaves the store.
    for path, _ in scenes["train/train02"].values():
        os.remove(path)
    assert run_main(root, store, **SMALL) is None
    assert not (store / "train/train02.npy").exists()
    assert data_prep.open_store(cfg_for(root, store, **SMALL)).sources["train"] == ["train00", "train01"]


def test_other_settings_are_refused_then_rebuilt(tmp_path):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 2, 1, 150, 230)
    assert run_main(root, store, **SMALL) is None
    before = snapshot(store)
    msg = run_main(root, store, **{**SMALL, "patch_size": 32})
    assert msg.startswith(f"error: {store} holds a patch store built with other settings (patch_size: 64 in the "
                          f"store, 32 now")
    assert "--rebuild" in msg
    assert snapshot(store) == before  # untouched
    with pytest.raises(data_prep.StoreError, match="patch_size: 64 in the store, 32 now"):
        data_prep.open_store(cfg_for(root, store, **{**SMALL, "patch_size": 32}))
    assert run_main(root, store, "--rebuild", **{**SMALL, "patch_size": 32}) is None
    assert data_prep.open_store(cfg_for(root, store, **{**SMALL, "patch_size": 32})).patch_size == 32
    with pytest.raises(data_prep.StoreError, match="patch_size: 32 in the store, 64 now"):
        data_prep.open_store(cfg_for(root, store, **SMALL))
    # A run that stored nothing (here: patches larger than the images) does not claim the folder.
    other = tmp_path / "other"
    assert "smaller than the 160x160 patch" in run_main(root, other, **{**SMALL, "patch_size": 160})
    assert run_main(root, other, **SMALL) is None
    # Settings outside the store (batch size, input mode) share it.
    data_prep.open_store(cfg_for(root, store, **{**SMALL, "patch_size": 32, "batch_size": 2, "input_mode": "single"}))


def test_open_store_refuses_damage(tmp_path):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 2, 1, 150, 230)
    cfg = cfg_for(root, store, **SMALL)
    with pytest.raises(data_prep.StoreError, match="manifest.json missing.*python data_prep.py"):
        data_prep.open_store(cfg)
    data_prep.build_store(cfg, progress=False)
    index = (store / "index.csv").read_text()
    (store / "index.csv").write_text(index.rsplit("\n", 2)[0] + "\n")
    with pytest.raises(data_prep.StoreError, match="val patches, the manifest records 12"):
        data_prep.open_store(cfg)
    (store / "index.csv").write_text(index)
    with open(store / "train/train01.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(data_prep.StoreError, match="train01.npy: missing or not the size"):
        data_prep.open_store(cfg)
    # data_prep notices the damage and rebuilds the store.
    data_prep.build_store(cfg, progress=False)
    assert data_prep.open_store(cfg).index["train"].shape == (56, 3)


def test_split_option_builds_one_split_at_a_time(tmp_path, capsys):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 2, 2, 150, 230)
    assert run_main(root, store, "--split", "train", **SMALL) is None
    assert not (store / "val").exists() or not os.listdir(store / "val")
    opened = data_prep.open_store(cfg_for(root, store, **SMALL))
    assert len(opened.index["train"]) == 56 and len(opened.index["val"]) == 0
    capsys.readouterr()
    train_mtime = os.stat(store / "train/train00.npy").st_mtime_ns
    assert run_main(root, store, "--split", "val", **SMALL) is None
    assert "2 scenes kept from the store, 2 to build" in capsys.readouterr().out
    assert os.stat(store / "train/train00.npy").st_mtime_ns == train_mtime  # the train split was kept as it was
    opened = data_prep.open_store(cfg_for(root, store, **SMALL))
    assert len(opened.index["train"]) == 56 and len(opened.index["val"]) == 24


def test_interrupted_runs_resume_to_the_clean_store(tmp_path, monkeypatch):
    root, store = tmp_path / "data", tmp_path / "store"
    make_dataset(root, 10, 4, 240, 360)
    overrides = {**SMALL, "working_width": 360, "working_height": 240, "data_workers": 2}
    assert run_main(root, store, **overrides) is None
    clean = snapshot(store)
    assert {"index.csv", "manifest.json", "config.json", "train/train09.npy", "val/val03.npy"} <= set(clean)

    # Ctrl-C in the middle of writing the 5th scene (one process, so the interruption is deterministic).
    shutil.rmtree(store)
    calls = []
    real_save = np.save

    def interrupted_save(path, arr):
        calls.append(path)
        if len(calls) == 5:
            with open(path, "wb") as f:
                f.write(b"\x93NUMPY half")
            raise KeyboardInterrupt
        real_save(path, arr)

    monkeypatch.setattr(np, "save", interrupted_save)
    assert run_main(root, store, **{**overrides, "data_workers": 1}) == 130
    monkeypatch.setattr(np, "save", real_save)
    left = snapshot(store)
    assert "manifest.json" not in left and "index.csv" not in left
    assert len([p for p in left if p.endswith(".npy")]) == 4 and not [p for p in left if "tmp" in p]
    with pytest.raises(data_prep.StoreError):
        data_prep.open_store(cfg_for(root, store, **overrides))
    assert run_main(root, store, **overrides) is None
    assert snapshot(store) == clean

    # Ctrl-C in a terminal (SIGINT to the process group), then SIGKILL of the group, while the workers write.
    # The run starts from a script that holds each process's second save until the test opens the gate (after
    # the signal), so the run is mid-way whatever the machine; spawned workers re-run its top level, so they
    # are held too. It gives its main process the terminal's SIGINT state (default handler, not blocked).
    gate = tmp_path / "gate"
    run_held = tmp_path / "run_held.py"
    run_held.write_text(
        "import os\nimport signal\nimport sys\nimport time\n\nimport numpy as np\n\n"
        f"GATE = {str(gate)!r}\n_save, _done = np.save, []\n\n\n"
        "def save(*args, **kwargs):\n    _save(*args, **kwargs)\n    deadline = time.time() + 60\n"
        "    while _done and not os.path.exists(GATE) and time.time() < deadline:\n        time.sleep(0.01)\n"
        "    _done.append(1)\n\n\nnp.save = save\n\n"
        "if __name__ == '__main__':\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        f"    sys.path.insert(0, {REPO_DIR!r})\n"
        "    import data_prep\n    data_prep.main(sys.argv[1:])\n")
    for sig in (signal.SIGINT, signal.SIGKILL):
        shutil.rmtree(store)
        if gate.exists():
            gate.unlink()
        proc = subprocess.Popen([sys.executable, str(run_held)] + argv_for(root, store, **overrides), cwd=REPO_DIR,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and not (os.path.isdir(store / "train") and any(
                n.endswith(".npy") and not is_temporary(n) for n in os.listdir(store / "train"))):
            time.sleep(0.005)
        os.killpg(proc.pid, sig)
        gate.touch()
        err = proc.communicate(timeout=60)[1]
        left = snapshot(store)
        landed = sorted(p for p in left if p.endswith(".npy"))
        assert "manifest.json" not in left and landed, (sig, landed, proc.returncode, err[-500:])
        assert len(landed) < 14
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "interrupted: the store is incomplete" in err
            assert "Traceback" not in err and not [p for p in left if "tmp" in p]
        with pytest.raises(data_prep.StoreError):
            data_prep.open_store(cfg_for(root, store, **overrides))
        assert run_main(root, store, **overrides) is None
        assert snapshot(store) == clean


def test_copy_channels_equals_numpy_slicing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, (40, 50, 12), dtype=np.uint16)
    view = image[3:35, 7:39]
    for channels in (slice(0, 6), slice(6, 9), slice(9, 12), slice(None), slice(0, 12, 2)):
        expected = view[..., channels]
        out = np.empty(expected.shape, np.uint16)
        data_prep.copy_channels(view, channels, out)
        np.testing.assert_array_equal(out, expected)
