"""Evaluation (test.py, inference.py, weights.py): padding and cropping, tiled vs whole agreement, metrics per
category against a direct computation, the LPIPS column, resume after a kill, loading the authors' Keras 2
HDF5 layout with BGR weights, and one clear error for each bad input."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import dpdd
import inference
import metrics
import weights
from config import REPO_DIR, make_config
from evalkit import TINY, as_raw, load_script, make_test_split, save_checkpoint, tiny_model, write_keras2_hdf5
from images import ImageError, quantize, read_image, to_float, write_image
from inference import blend_weights, predict_image, tile_starts

T = load_script("test")


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    model, cfg = tiny_model("dual", seed=0)
    path = save_checkpoint(model, cfg, str(tmp_path_factory.mktemp("ck") / "dual"))
    return model, cfg, path


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ds") / "dd_dp_dataset_canon")
    names = make_test_split(root, n=5, categories=["indoor", "outdoor", "indoor", "indoor", "outdoor"])
    return root, names


def cli(*argv):
    """test.py's main in-process; returns (exit code, message) of its SystemExit, or (0, '')."""
    try:
        T.main(list(argv))
    except SystemExit as e:
        return (1 if isinstance(e.code, str) else e.code or 0), (e.code if isinstance(e.code, str) else "")
    return 0, ""


def eval_cfg(root, results, **overrides):
    return make_config("paper", {**TINY, "dataset_root": root, "results_dir": str(results), **overrides})


# ------------------------------------------------------------------------------------------ inference

def test_padding_and_crop_are_exact_for_odd_sizes(monkeypatch):
    seen = []

    def fake_forward(model, x):  # a "model" that returns its first view, checking what it was given
        seen.append(x.shape)
        assert x.shape[0] % 16 == 0 and x.shape[1] % 16 == 0
        return x[..., :3].copy()

    monkeypatch.setattr(inference, "forward", fake_forward)
    cfg = make_config("paper")  # depth 4: multiples of 16
    rng = np.random.default_rng(1)
    for h, w in ((52, 70), (33, 17), (16, 16), (9, 130)):
        x = rng.random((h, w, 6), dtype=np.float32)
        out = predict_image(None, x, cfg)
        assert out.shape == (h, w, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out, x[..., :3])  # the crop returns exactly the original region
        for tile, overlap in ((32, 8), (48, 0)):
            tiled = predict_image(None, x, dataclasses.replace(cfg, tile=tile, tile_overlap=overlap))
            np.testing.assert_allclose(tiled, x[..., :3], atol=1e-6)  # blend weights sum to one
    assert (64, 80, 6) in seen  # 52x70 padded to 64x80
    # the padding is a reflection: the padded rows mirror the last rows
    x = rng.random((52, 70, 6), dtype=np.float32)
    monkeypatch.setattr(inference, "forward", lambda m, p: seen.append(p) or p[..., :3])
    predict_image(None, x, cfg)
    np.testing.assert_array_equal(seen[-1][52:64, :70], x[50:38:-1])


def test_output_is_clamped_and_real_model_crops_consistently(dual):
    model, cfg, _ = dual
    x = np.random.default_rng(2).random((52, 70, 6), dtype=np.float32)
    out = predict_image(model, x, cfg)
    padded = np.pad(x, ((0, 0), (0, 2), (0, 0)), mode="reflect")  # 52x72: multiples of 4 for depth 2
    np.testing.assert_allclose(out, inference.forward(model, padded)[:, :70], atol=1e-6)
    monkey = lambda m, p: np.full(p.shape[:2] + (3,), 1.7, np.float32)  # noqa: E731
    orig, inference.forward = inference.forward, monkey
    try:
        assert predict_image(None, x, cfg).max() == 1.0
    finally:
        inference.forward = orig


def test_pyramid_sizes_halve_down_to_the_smallest_side():
    assert inference.pyramid_sizes(1120, 1680, 3) == [(1120, 1680), (560, 840), (280, 420)]
    assert inference.pyramid_sizes(208, 320, 5) == [(208, 320), (104, 160), (52, 80)]     # 26 rows: too few
    assert inference.pyramid_sizes(63, 101, 2) == [(63, 101)]                             # 31 rows: too few
    assert inference.pyramid_sizes(1120, 1680, 1) == [(1120, 1680)]


def test_pyramid_merges_the_half_size_pass_where_it_changes_much(monkeypatch):
    """A fake network that, only at full size, adds a 2x2 checkerboard (the highest frequency) and an offset of
    0.1 on the left half and 0.01 on the right (the lowest): the half-size pass changes the left half by 0.1
    (above inference.MERGE_FULL: merged whole, so the offset goes) and the right by 0.01 (below MERGE_FROM: the
    full-size pass stands); area averaging over 2x2 blocks removes the checkerboard, which stays."""
    checker = (np.indices((128, 96)).sum(axis=0) % 2 * 2 - 1)[..., None].astype(np.float32) * 0.05
    offset = np.where(np.arange(96) < 48, 0.1, 0.01).astype(np.float32)[None, :, None]
    assert inference.MERGE_FROM > 0.01 and inference.MERGE_FULL < 0.1

    def fake_forward(model, x):
        first = x[..., :3].copy()
        return first + offset + checker if x.shape[0] == 128 else first

    monkeypatch.setattr(inference, "forward", fake_forward)
    cfg = make_config("paper", {"scales": 1})          # depth 4: 128x96 and 64x48 need no padding
    x = np.random.default_rng(3).uniform(0.2, 0.7, (128, 96, 6)).astype(np.float32)
    np.testing.assert_allclose(predict_image(None, x, cfg), x[..., :3] + offset + checker, atol=1e-6)
    merged = predict_image(None, x, dataclasses.replace(cfg, scales=2))
    np.testing.assert_allclose(merged[:, :36], (x[..., :3] + checker)[:, :36], atol=1e-5)
    np.testing.assert_allclose(merged[:, 60:], (x[..., :3] + 0.01 + checker)[:, 60:], atol=1e-5)
    mean_of_views = lambda m, p: (p[..., :3] + p[..., 3:]) / 2   # noqa: E731  (a network every size treats alike)
    monkeypatch.setattr(inference, "forward", mean_of_views)
    np.testing.assert_allclose(predict_image(None, x, dataclasses.replace(cfg, scales=3)),
                               (x[..., :3] + x[..., 3:]) / 2, atol=1e-5)


def test_pyramid_levels_follow_the_width_of_the_training_frames():
    demo = make_config("demo")                          # trained on 320-pixel-wide frames
    sizes = ((208, 320), (250, 400), (416, 640), (832, 1280), (1120, 1680), (1680, 1120))   # (height, width)
    assert [inference.pyramid_levels(demo, h, w) for h, w in sizes] == [1, 1, 2, 3, 3, 3]   # portrait: its long side
    assert inference.pyramid_levels(make_config("paper"), 1120, 1680) == 1                 # the paper's weights on DPDD
    assert inference.pyramid_levels(make_config("paper", {"scales": 2}), 1120, 1680) == 2  # set: as set
    assert inference.pyramid_levels(demo, 100, 200) == 1
    assert inference.pyramid_levels(make_config("paper", {"scales": 3}), 63, 101) == 1    # too small to halve


def test_pyramid_runs_two_views_of_odd_sizes(monkeypatch):
    """Six channels (two views) halved at odd sizes, where OpenCV's area resampling takes at most four at once:
    a network every size treats alike gives the one-size output at every size."""
    monkeypatch.setattr(inference, "forward", lambda m, p: (p[..., :3] + p[..., 3:]) / 2)
    cfg = make_config("paper", {"scales": 3})
    x = np.random.default_rng(4).uniform(0.2, 0.7, (133, 201, 6)).astype(np.float32)
    assert inference.pyramid_sizes(133, 201, 3) == [(133, 201), (66, 100), (33, 50)]
    np.testing.assert_allclose(predict_image(None, x, cfg), (x[..., :3] + x[..., 3:]) / 2, atol=1e-5)


def test_tile_layout_and_weights():
    for length in range(16, 400, 16):
        for tile in (16, 32, 64, 96, 160):
            for overlap in (0, 8, 15):
                starts = tile_starts(length, tile, overlap, 16)
                assert starts[0] == 0 and starts[-1] == max(0, length - tile)
                assert all(s % 16 == 0 for s in starts)
                assert all(b - a <= max(16, tile - overlap) for a, b in zip(starts, starts[1:]))
                total = np.zeros(length)
                for s, wt in zip(starts, blend_weights(starts, min(tile, length), overlap, length)):
                    assert wt.min() >= 0
                    total[s:s + len(wt)] += wt
                np.testing.assert_allclose(total, 1, atol=1e-6)
    assert tile_starts(1120, 512, 64, 16) == [0, 304, 608]


def test_tiled_matches_whole_image(dual):
    """Exact (to float error) once the overlap covers the receptive field (26 px for depth 2). With less, pixels
    near a tile edge see less context: this saturated tiny random net (output std 0.44) then differs by at most
    4e-3 (tile 128, overlap 32) and 2e-2 (tile 96, overlap 32); blending the overlap cuts the seam error of
    butted tiles (overlap 0: 0.2) roughly tenfold."""
    model, cfg, _ = dual
    x = np.random.default_rng(3).random((336, 336, 6), dtype=np.float32)
    whole = predict_image(model, x, cfg)

    def max_diff(tile, overlap):
        return float(np.abs(predict_image(model, x, dataclasses.replace(cfg, tile=tile, tile_overlap=overlap))
                            - whole).max())

    assert max_diff(224, 108) < 1e-5
    assert 0 < max_diff(128, 32) < 1e-2
    assert max_diff(96, 0) > 5 * max_diff(96, 32)


def test_weights_of_wrong_architecture(tmp_path):
    ours, _ = tiny_model("dual", seed=5)
    path = str(tmp_path / "k2.hdf5")
    write_keras2_hdf5(ours, path)
    import h5py
    with h5py.File(path, "r+") as f:  # a U-Net with one conv too many
        names = list(f["model_weights"].attrs["layer_names"]) + [b"conv2d_99"]
        f["model_weights"].attrs["layer_names"] = np.array(names)
        g = f["model_weights"].create_group("conv2d_99")
        g.attrs["weight_names"] = np.array([b"conv2d_99/kernel:0", b"conv2d_99/bias:0"])
        g.create_dataset("conv2d_99/kernel:0", data=np.zeros((1, 1, 3, 3), np.float32))
        g.create_dataset("conv2d_99/bias:0", data=np.zeros(3, np.float32))
    with pytest.raises(weights.WeightsError, match="15 conv layers"):
        weights.load_model(path, make_config("paper"))
    with h5py.File(path, "r+") as f:  # right count, wrong shape
        del f["model_weights/conv2d_99"]
        f["model_weights"].attrs["layer_names"] = np.array(names[:-1])
        k = f["model_weights/conv2d_3/conv2d_3/kernel:0"]
        data = k[...]
        del f["model_weights/conv2d_3/conv2d_3/kernel:0"]
        f["model_weights/conv2d_3"].create_dataset("conv2d_3/kernel:0", data=data[:, :, :2, :])
    with pytest.raises(weights.WeightsError, match="conv2d_3 has kernel"):
        weights.load_model(path, make_config("paper"))
    other = keras.Sequential([keras.Input((None, None, 6)), keras.layers.Conv2D(3, 3, name="c")])
    other.save(str(tmp_path / "other.keras"))
    with pytest.raises(weights.WeightsError, match="not a DPDNet"):
        weights.load_model(str(tmp_path / "other.keras"), make_config("paper"))
    (tmp_path / "junk.keras").write_bytes(b"not a model")
    with pytest.raises(weights.WeightsError, match="neither"):
        weights.load_model(str(tmp_path / "junk.keras"), make_config("paper"))


def test_checkpoint_and_weights_only_files(tmp_path, dual):
    model, cfg, path = dual
    loaded, model_cfg = weights.load_model(path, make_config("single"))  # the saved config wins over the preset
    assert (model_cfg.input_mode, model_cfg.base_filters, model_cfg.depth) == ("dual", 4, 2)
    x = np.random.default_rng(7).random((1, 16, 16, 6), dtype=np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    bare = str(tmp_path / "bare.weights.h5")
    model.save_weights(bare)
    loaded, model_cfg = weights.load_model(bare, cfg)  # no config beside it: the given config describes it
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(weights.WeightsError, match="does not fit"):
        weights.load_model(bare, make_config("paper", {"base_filters": 8, "depth": 2}))


# ------------------------------------------------------------------------------------------ test.py

def direct_metrics(model, cfg, root, name):
    """Metrics of one scene computed here, independently of test.py's loop."""
    scene = next(s for s in dpdd.list_scenes(root, "test") if s.source == name)
    x = np.concatenate([to_float(read_image(scene.left_path)), to_float(read_image(scene.right_path))], -1)
    pred = predict_image(model, x, cfg)
    gt = to_float(read_image(scene.target_path))
    return pred, metrics.image_metrics(gt, pred)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_metrics_per_category_and_lpips_column(tmp_path, dual, split):
    model, cfg, ckpt = dual
    root, names = split
    summary = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="random", progress=False)
    out = tmp_path / "dpdnet"
    rows = read_csv(out / "metrics.csv")
    assert [r["name"] for r in rows] == names
    cats = dpdd.load_test_labels(root).categories
    assert [r["category"] for r in rows] == [cats[n] for n in names]
    direct = {}
    for r in rows:
        pred, m = direct_metrics(model, cfg, root, r["name"])
        direct[r["name"]] = m
        for k in ("psnr", "ssim", "mae"):
            assert float(r[k]) == pytest.approx(m[k], rel=1e-5, abs=1e-7)
        assert 0 < float(r["lpips"]) < 2
        png = read_image(str(out / "images" / f"{r['name']}.png"))
        assert png.dtype == np.uint16
        assert np.abs(png.astype(int) - quantize(pred, 16).astype(int)).max() <= 1  # rounded, 16-bit
    for group in ("indoor", "outdoor", "combined"):
        members = [n for n in names if group == "combined" or cats[n] == group]
        g = summary["groups"][group]
        assert g["count"] == len(members)
        for k in ("psnr", "ssim", "mae"):
            assert g[k] == pytest.approx(np.mean([direct[n][k] for n in members]), rel=1e-5)
        assert g["lpips"] == pytest.approx(np.mean([float(r["lpips"]) for r in rows if r["name"] in members]))
        assert summary["difference"][group]["psnr"] == pytest.approx(g["psnr"] - T.PAPER_TABLE1["DPDNet"][group][0])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["groups"]["indoor"]["count"] == 3 and saved["model"] == "DPDNet"
    md = (out / "summary.md").read_text()
    assert "| DPDNet (paper) | 27.48 | 0.849 | 0.029 | 0.189 |" in md
    assert "RANDOM AlexNet backbone" in md and "dataset's own" in md
    assert json.loads((out / "config.json").read_text())["base_filters"] == 4


def test_lpips_unavailable_is_reported_not_fatal(tmp_path, dual, split, monkeypatch):
    _, _, ckpt = dual
    root, names = split

    def unavailable(pairs, **kwargs):
        raise metrics.LpipsUnavailable("LPIPS unavailable: the AlexNet backbone weights are not cached")

    monkeypatch.setattr(metrics, "lpips_of_files", unavailable)
    summary = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="auto", limit=2, progress=False)
    rows = read_csv(tmp_path / "dpdnet" / "metrics.csv")
    assert len(rows) == 2 and all(r["lpips"] == "" and float(r["psnr"]) > 0 for r in rows)
    md = (tmp_path / "dpdnet" / "summary.md").read_text()
    assert "n/a (LPIPS weights unavailable)" in md and "AlexNet backbone weights are not cached" in md
    assert summary["groups"]["combined"]["lpips"] is None and summary["groups"]["combined"]["psnr"] > 0
    assert "the first 2 of 5" in md
    code, msg = cli("--weights", ckpt, "--set", f"dataset_root={root}", "--set", f"results_dir={tmp_path / 'r2'}",
                    "--require-lpips")
    assert code == 1 and msg.startswith("error: LPIPS unavailable")
    assert not os.path.exists(tmp_path / "r2" / "dpdnet" / "metrics.csv")


def test_lpips_is_one_pass_at_the_end_over_rows_without_it(tmp_path, dual, split, monkeypatch):
    _, _, ckpt = dual
    root, names = split
    out = tmp_path / "dpdnet"
    scenes = {s.source: s for s in dpdd.list_scenes(root, "test")}
    calls = []

    def dies_in_the_pass(pairs, **kwargs):
        calls.append(list(pairs))
        if pairs:
            raise metrics.LpipsUnavailable("LPIPS unavailable: its process exited with status -9")
        return []

    monkeypatch.setattr(metrics, "lpips_of_files", dies_in_the_pass)
    summary = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="auto", limit=2, progress=False)
    assert [len(c) for c in calls] == [0, 4]  # the check before any image, then one pass: output and input
    assert summary["lpips"] == {"status": "unavailable", "reason": "its process exited with status -9"}
    assert [r["lpips"] for r in read_csv(out / "metrics.csv")] == ["", ""] and summary["groups"]["combined"]["psnr"]

    def scores(pairs, **kwargs):  # each call's values are its number, to see which call scored which row
        calls.append(list(pairs))
        return [float(len(calls))] * len(pairs)

    monkeypatch.setattr(metrics, "lpips_of_files", scores)
    calls.clear()
    before = {n: (out / "images" / f"{n}.png").stat().st_mtime_ns for n in names[:2]}
    T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="auto", limit=2, progress=False)  # images done: LPIPS only
    assert {n: (out / "images" / f"{n}.png").stat().st_mtime_ns for n in names[:2]} == before
    assert calls[1] == [p for n in names[:2] for p in ((scenes[n].target_path, str(out / "images" / f"{n}.png")),
                                                        (scenes[n].target_path, scenes[n].source_path))]
    T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="auto", progress=False)  # the other 3: scored, not the 2
    assert [p[1] for p in calls[3][::2]] == [str(out / "images" / f"{n}.png") for n in names[2:]]
    rows = read_csv(out / "metrics.csv")
    assert [(r["lpips"], r["input_lpips"]) for r in rows] == [("2.0", "2.0")] * 2 + [("4.0", "4.0")] * 3


def test_shipped_labels_are_used_and_noted_without_a_dataset_file(tmp_path, dual):
    _, _, ckpt = dual
    root = str(tmp_path / "ds")
    official = [s for s, _ in dpdd.official_split()["test"]][:3]
    make_test_split(root, n=3)
    for folder, suffix in (("test_c/source", ""), ("test_l/source", "_L"), ("test_r/source", "_R")):
        for i, name in enumerate(official):
            os.rename(os.path.join(root, folder, f"S{i:03d}{suffix}.png"), os.path.join(root, folder, f"{name}{suffix}.png"))
    os.remove(os.path.join(root, "test_categories.csv"))
    summary = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", progress=False)
    shipped = dpdd.load_test_labels().categories
    assert [r["category"] for r in read_csv(tmp_path / "dpdnet" / "metrics.csv")] == [shipped[n] for n in official]
    assert "third-party copy" in (tmp_path / "dpdnet" / "summary.md").read_text()
    assert summary["categories_source"] == dpdd.TEST_CATEGORIES_CSV


KILLER = r"""
import os, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, os.path.join({repo!r}, "tests"))
from evalkit import load_script
T = load_script("test")
calls = []
orig = T.ResultsWriter.append
def append(self, name, category, values):
    calls.append(name)
    if len(calls) == {k}:  # die half-way through writing a row, as a SIGKILL would
        self._f.write(T.format_row(name, category, values)[:12]); self._f.flush(); os._exit(9)
    orig(self, name, category, values)
T.ResultsWriter.append = append
T.main({argv!r})
"""


def test_resume_after_a_kill_gives_the_clean_run(tmp_path, dual, split):
    _, _, ckpt = dual
    root, names = split
    clean = T.evaluate(eval_cfg(root, tmp_path / "clean"), ckpt, lpips="off", progress=False)
    argv = ["--weights", ckpt, "--set", f"dataset_root={root}", "--set", f"results_dir={tmp_path / 'killed'}",
            "--no-lpips"]
    proc = subprocess.run([sys.executable, "-c", KILLER.format(repo=REPO_DIR, k=3, argv=argv)],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    out = tmp_path / "killed" / "dpdnet"
    text = (out / "metrics.csv").read_text()
    assert text.count("\n") == 3 and not text.endswith("\n")  # header, two rows, a torn third
    assert not (out / "summary.json").exists()
    assert not [f for f in os.listdir(out / "images") if f.startswith(".")]
    with open(out / "images" / ".S004.abc.tmp.png", "w") as f:  # what a kill inside a PNG write leaves
        f.write("half")
    resumed = T.evaluate(eval_cfg(root, tmp_path / "killed"), ckpt, lpips="off", progress=False)
    assert (out / "metrics.csv").read_text() == (tmp_path / "clean" / "dpdnet" / "metrics.csv").read_text()
    assert sorted(os.listdir(out / "images")) == [f"{n}.png" for n in names]
    assert resumed["groups"] == clean["groups"]
    for n in names:
        np.testing.assert_array_equal(read_image(str(out / "images" / f"{n}.png")),
                                      read_image(str(tmp_path / "clean" / "dpdnet" / "images" / f"{n}.png")))
    # a third run has nothing left to do: no image is redone, the results stay the same
    before = {n: (out / "images" / f"{n}.png").stat().st_mtime_ns for n in names}
    text = (out / "metrics.csv").read_text()
    T.evaluate(eval_cfg(root, tmp_path / "killed"), ckpt, lpips="off", progress=False)
    assert {n: (out / "images" / f"{n}.png").stat().st_mtime_ns for n in names} == before
    assert (out / "metrics.csv").read_text() == text


def test_rerun_with_other_weights_refuses_to_mix(tmp_path, dual, split):
    _, _, ckpt = dual
    root, _ = split
    T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", limit=1, progress=False)
    other, ocfg = tiny_model("dual", seed=9)
    other_path = save_checkpoint(other, ocfg, str(tmp_path / "other"))
    code, msg = cli("--weights", other_path, "--set", f"dataset_root={root}", "--set", f"results_dir={tmp_path}",
                    "--no-lpips")
    assert code == 1 and "--overwrite" in msg
    assert cli("--weights", other_path, "--set", f"dataset_root={root}", "--set", f"results_dir={tmp_path}",
               "--no-lpips", "--overwrite", "--limit", "1")[0] == 0


def test_scales_are_noted_and_not_mixed_with_one_size_results(tmp_path, dual):
    _, _, ckpt = dual
    root = str(tmp_path / "dd_dp_dataset_canon")
    make_test_split(root, n=2, h=72, w=96)                # halves to 36x48: two sizes fit (52x70 would not)
    T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", limit=1, progress=False)
    with pytest.raises(T.EvalError, match="scales"):
        T.evaluate(eval_cfg(root, tmp_path, scales=2), ckpt, lpips="off", limit=2, progress=False)
    summary = T.evaluate(eval_cfg(root, tmp_path, scales=2), ckpt, lpips="off", limit=1, overwrite=True,
                         progress=False)
    assert summary["scales"] == 2 and any(n.startswith("Scales: ") for n in summary["protocol_notes"])
    small = str(tmp_path / "small" / "dd_dp_dataset_canon")
    make_test_split(small, n=1)                           # 52x70: too small to halve, so one size, and no note
    summary = T.evaluate(eval_cfg(small, tmp_path / "small", scales=2), ckpt, lpips="off", progress=False)
    assert summary["scales"] == 1 and not any(n.startswith("Scales: ") for n in summary["protocol_notes"])


def assert_clean(folder):
    """Nothing half-written: no temporary files, and every CSV row has its image."""
    for dirpath, _, files in os.walk(folder):
        assert not [f for f in files if ".tmp" in f], dirpath
    csv_path = os.path.join(folder, "metrics.csv")
    if os.path.exists(csv_path):
        rows = read_csv(csv_path)
        assert all(os.path.isfile(os.path.join(folder, "images", r["name"] + ".png")) for r in rows)


def test_bad_inputs_give_one_clear_error(tmp_path, dual):
    model, cfg, ckpt = dual
    root = str(tmp_path / "ds")
    make_test_split(root, n=3)
    res = tmp_path / "res"
    base = ["--set", f"dataset_root={root}", "--set", f"results_dir={res}", "--no-lpips"]

    code, msg = cli("--weights", ckpt, "--set", f"dataset_root={tmp_path / 'nowhere'}", "--no-lpips")
    assert code == 1 and "dataset not found" in msg
    code, msg = cli("--weights", str(tmp_path / "missing.keras"), *base)
    assert code == 1 and "weights file not found" in msg
    code, msg = cli("--weights", ckpt, "--preset", "single", *base)  # dual weights, single data
    assert code == 1 and "DPDNet weights (6-channel input)" in msg and "input_mode is single" in msg
    other = keras.Sequential([keras.Input((None, None, 6)), keras.layers.Conv2D(3, 3, name="c")])
    other.save(str(tmp_path / "other.keras"))
    code, msg = cli("--weights", str(tmp_path / "other.keras"), *base)
    assert code == 1 and "not a DPDNet" in msg
    assert not res.exists()  # nothing was started

    os.remove(os.path.join(root, "test_r", "source", "S001_R.png"))
    code, msg = cli("--weights", ckpt, *base)
    assert code == 1 and "S001_R missing" in msg
    write_image(os.path.join(root, "test_r", "source", "S001_R.png"), np.zeros((40, 70, 3), np.uint16))
    code, msg = cli("--weights", ckpt, *base)
    assert code == 1 and "S001_L.png is 70x52 but" in msg and "S001_R.png is 70x40" in msg
    assert_clean(str(res / "dpdnet"))
    assert len(read_csv(res / "dpdnet" / "metrics.csv")) == 1  # the scene before it is complete
    assert not (res / "dpdnet" / "summary.json").exists()

    import shutil
    shutil.rmtree(os.path.join(root, "test_c", "target"))
    code, msg = cli("--weights", ckpt, *base)
    assert code == 1 and "test_c/target: folder missing" in msg


def test_raw_frames_are_refused_or_evaluated_at_the_dataset_levels(tmp_path, dual):
    model, cfg, ckpt = dual
    root, raw = str(tmp_path / "ds"), str(tmp_path / "raw")
    names = make_test_split(root, n=2)
    as_raw(root, raw, 64, 1023)
    code, msg = cli("--weights", ckpt, "--set", f"dataset_root={raw}", "--set", f"results_dir={tmp_path / 'r0'}",
                    "--no-lpips")
    assert code == 1 and "within 10 bits" in msg and "--set white_level=1023" in msg
    make_test_split(str(tmp_path / "ds8"), n=2, bits=8)
    code, msg = cli("--weights", ckpt, "--set", f"dataset_root={tmp_path / 'ds8'}", "--set",
                    f"results_dir={tmp_path / 'r0'}", "--set", "white_level=1023", "--no-lpips")
    assert code == 1 and "white level 1023 is outside 1..255" in msg and "--set white_level=N" in msg
    assert not (tmp_path / "r0").exists()  # checked before anything is written: the next run is not refused
    summary = T.evaluate(eval_cfg(raw, tmp_path / "r1", black_level=64, white_level=1023), ckpt, lpips="random",
                         progress=False)
    rows = read_csv(tmp_path / "r1" / "dpdnet" / "metrics.csv")
    for row, name in zip(rows, names):  # against the raw frames normalised here
        scene = next(s for s in dpdd.list_scenes(raw, "test") if s.source == name)
        frame = {k: (read_image(p).astype(np.float64) - 64) / 959 for k, p in
                 (("l", scene.left_path), ("r", scene.right_path), ("t", scene.target_path), ("s", scene.source_path))}
        pred = predict_image(model, np.concatenate([frame["l"], frame["r"]], -1).astype(np.float32), cfg)
        for key, m in (("", metrics.image_metrics(frame["t"], pred)),
                       ("input_", metrics.image_metrics(frame["t"], frame["s"]))):
            assert float(row[key + "psnr"]) == pytest.approx(m["psnr"], abs=1e-3)
            assert float(row[key + "mae"]) == pytest.approx(m["mae"], abs=1e-6)
    assert summary["groups"]["combined"]["count"] == 2
    assert json.loads((tmp_path / "r1" / "dpdnet" / "config.json").read_text())["black_level"] == 64
    # LPIPS and the page's pictures too: as for those frames normalised here and written as ordinary files.
    hand = tmp_path / "hand"
    for scene in dpdd.list_scenes(raw, "test"):
        for path in (scene.left_path, scene.right_path, scene.target_path, scene.source_path):
            frame = (read_image(path).astype(np.float64) - 64) / 959
            write_image(path.replace(raw, str(hand)), frame, bits=16)
    (hand / "test_categories.csv").write_text((tmp_path / "raw" / "test_categories.csv").read_text())
    T.evaluate(eval_cfg(str(hand), tmp_path / "r2"), ckpt, lpips="random", progress=False)
    for row, other in zip(rows, read_csv(tmp_path / "r2" / "dpdnet" / "metrics.csv")):
        for key in ("lpips", "input_lpips"):
            assert float(row[key]) == pytest.approx(float(other[key]), abs=2e-3)
        for role in ("crop_input", "target", "left"):
            pictures = [read_image(str(tmp_path / r / "dpdnet" / "page" / f"{row['name']}_{role}.png")).astype(int)
                        for r in ("r1", "r2")]
            assert np.abs(pictures[0] - pictures[1]).max() <= 1
    with pytest.raises(T.EvalError, match="black_level: 64 then, 0 now"):
        T.evaluate(eval_cfg(raw, tmp_path / "r1", white_level=65535), ckpt, lpips="off", progress=False)


def test_command_line_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO_DIR, "test.py"), "--weights", "x.keras",
                           "--set", f"dataset_root={tmp_path / 'none'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset not found")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ labels, run record

def test_authors_label_arrays_win_and_disagreements_are_listed(tmp_path, dual):
    _, _, ckpt = dual
    root = str(tmp_path / "ds")
    make_test_split(root, n=5, categories=["indoor", "outdoor", "indoor", "indoor", "outdoor"])
    # the authors' format: 1-based indices into the name-sorted test scenes, int64 arrays as np.save writes them
    np.save(os.path.join(root, "indoor_labels.npy"), np.array([1, 2, 5]))
    np.save(os.path.join(root, "outdoor_labels.npy"), np.array([3, 4]))
    summary = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", progress=False)
    rows = read_csv(tmp_path / "dpdnet" / "metrics.csv")
    assert [r["category"] for r in rows] == ["indoor", "indoor", "outdoor", "outdoor", "indoor"]
    assert summary["groups"]["indoor"]["count"] == 3 and summary["groups"]["outdoor"]["count"] == 2
    csv_path = os.path.join(root, "test_categories.csv")
    assert summary["categories_source"] == (f"{os.path.join(root, 'indoor_labels.npy')} and "
                                            f"{os.path.join(root, 'outdoor_labels.npy')}")
    assert summary["categories_disagreements"] == [
        "S001: indoor in the authors' arrays, outdoor in test_categories.csv",
        "S002: outdoor in the authors' arrays, indoor in test_categories.csv",
        "S003: outdoor in the authors' arrays, indoor in test_categories.csv",
        "S004: indoor in the authors' arrays, outdoor in test_categories.csv"]
    md = (tmp_path / "dpdnet" / "summary.md").read_text()
    assert "the authors' own label arrays (3 indoor / 2 outdoor); 4 scene(s) labelled otherwise in " + csv_path in md
    assert md.count("  - label differs: S00") == 4

    # the run record: everything that changes the numbers
    import hashlib
    import importlib.metadata
    with open(tmp_path / "dpdnet" / "run_info.json") as f:
        info = json.load(f)
    with open(ckpt, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert {k: info[k] for k in ("precision", "backend", "backend_version", "weights_sha256", "tile", "lpips")} == {
        "precision": "float32", "backend": "tensorflow", "backend_version": importlib.metadata.version("tensorflow"),
        "weights_sha256": sha, "tile": 0, "lpips": "off"}
    assert summary["run"] == {"precision": "float32", "backend": "tensorflow",
                              "backend_version": info["backend_version"], "weights_sha256": sha}
    assert f"precision float32; weights SHA-256 {sha}" in md

    # label files that are not the authors' format: one line each
    np.save(os.path.join(root, "outdoor_labels.npy"), np.array([0, 4]))
    with pytest.raises(dpdd.DatasetError, match=r"outdoor_labels.npy: index 0 is outside 1..5 \(1-based"):
        dpdd.load_test_labels(root)
    np.save(os.path.join(root, "outdoor_labels.npy"), np.array([2, 4]))
    with pytest.raises(dpdd.DatasetError, match=r"scene 2 \(S001\) is also in .*indoor_labels.npy"):
        dpdd.load_test_labels(root)
    os.remove(os.path.join(root, "outdoor_labels.npy"))
    with pytest.raises(dpdd.DatasetError, match="outdoor_labels.npy: missing beside"):
        dpdd.load_test_labels(root)


def test_input_bit_depth_is_the_inputs_for_new_and_resumed_images(tmp_path, dual):
    _, _, ckpt = dual
    root = str(tmp_path / "ds")
    make_test_split(root, n=2, bits=8)
    for name in os.listdir(os.path.join(root, "test_c", "target")):  # 8-bit views, 16-bit ground truth
        path = os.path.join(root, "test_c", "target", name)
        write_image(path, to_float(read_image(path)), bits=16)
    first = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", progress=False)
    resumed = T.evaluate(eval_cfg(root, tmp_path), ckpt, lpips="off", progress=False)  # every image done
    assert first["input_bits"] == resumed["input_bits"] == [8]
    assert "8-bit input" in " ".join(resumed["protocol_notes"])
