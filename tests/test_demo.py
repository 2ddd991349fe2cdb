"""demo.py: `--quick` end to end in a temporary folder (table, numbers, picture, checkpoints), and its pieces."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import demo
from config import PRESETS, REPO_DIR, make_config
from images import read_image

ROWS = ("Blurry input", "DPDNet-Single", "DPDNet")


def _args(*argv):
    return demo.build_parser().parse_args(list(argv))


def run_quick_demo(tmp_path, backend, *extra):
    """`demo.py --quick` in a fresh process under `backend`, with `extra` arguments; the finished run's root and
    stdout."""
    root = tmp_path / "demo"
    # As ./run_demo.sh runs it: with TensorFlow's oneDNN CPU kernels (conftest turns them off for the suite's
    # own processes), which train this network about twice as fast.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, os.path.join(REPO_DIR, "demo.py"), "--quick", "--root", str(root),
                           "--no-progress", "--no-lpips", *extra], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout


def check_quick_demo(root, stdout, backend):
    out = root / "results" / "demo_quick"
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [line.split(" | ")[0][2:] for line in table] == list(ROWS)
    for line in table:       # 3 groups x (PSNR, SSIM, MAE) numbers, LPIPS n/a (off)
        cells = line.strip("| ").split(" | ")[1:]
        assert len(cells) == 12 and sum(c.startswith("n/a") for c in cells) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(ROWS) and summary["quick"] is True
    assert summary["backend"] == backend and summary["backend_version"]
    for name in ROWS:
        m = summary["methods"][name]
        assert all(isinstance(m[k], float) and math.isfinite(m[k]) for k in ("psnr", "ssim", "mae"))
        assert 15 < m["psnr"] < 60 and 0 < m["ssim"] <= 1 and 0 <= m["mae"] < 0.2
        assert m["lpips"] is None and m["images"] == demo.SCENES["quick"]["n_test"]
        assert m["groups"]["combined"]["count"] == demo.SCENES["quick"]["n_test"]
    # the networks' rows come from their own outputs, not the input's
    assert summary["methods"]["DPDNet"]["psnr"] != summary["methods"]["Blurry input"]["psnr"]
    assert summary["training"]["steps"] == summary["training"]["steps_single"] > 0
    assert summary["lpips"]["status"] == "off"
    for key in ("synthesize", "prepare", "train_dual", "train_single", "evaluate", "total"):
        assert summary["seconds"][key] >= 0
    pic = read_image(str(out / "comparison.png"))
    assert pic.dtype == np.uint8 and pic.shape[1] > 4 * 320 and pic.shape[0] > 2 * 2 * 208
    for run in ("demo_quick", "demo_quick_single"):
        best = root / "checkpoints" / run / "best.keras"
        assert best.is_file()
        assert json.loads((root / "checkpoints" / run / "best.json").read_text())["backend"] == backend
    for name in ("synthetic_demo_quick", "patches"):
        assert (root / name).is_dir()
    assert (out / "dual" / "metrics.csv").is_file() and (out / "single" / "metrics.csv").is_file()
    assert json.loads((out / "dual" / "run_info.json").read_text())["backend"] == backend
    assert "DPDNet - DPDNet-Single" in stdout


def test_quick_demo_end_to_end(tmp_path):
    backend = os.environ["KERAS_BACKEND"]
    root, stdout = run_quick_demo(tmp_path, backend)
    check_quick_demo(root, stdout, backend)
    assert "[demo] budget" not in stdout      # --quick is its own short budget: nothing timed
    check_budget_on_quick_store(root)
    check_older_data_is_refused_with_the_way_out(root)


def check_older_data_is_refused_with_the_way_out(root):
    """Data an older synthesize.py made (here: one that smoothed 10% of the layers of every split) is a one-line
    error that says what to do, before anything is trained on it."""
    import synthesize
    manifest = root / "synthetic_demo_quick" / "synthesize.json"
    made = json.loads(manifest.read_text())
    made["domain"]["soft_content"] = 0.1
    del made["domain"]["test_soft_content"]
    manifest.write_text(json.dumps(made))
    with pytest.raises(synthesize.SynthesisError, match="soft_content=0.1, not 0.3; .*for the demo: remove it and run "
                                                         "again with --fresh"):
        demo.run(_args("--quick", "--root", str(root), "--no-progress"))


def check_budget_on_quick_store(root):
    """fit_to_time on the quick demo's patch store, in this process: timed steps of both networks, a budget
    too short for the preset's epochs (MIN_EPOCHS, the decay scaled with them) and one long enough (unchanged);
    the timing runs leave no checkpoint behind. A shortened run is resumed with its budget, and refused with
    --minutes 0 (it cannot become a full one)."""
    import train
    paths = [f"dataset_root={root / 'synthetic_demo_quick'}", f"patch_dir={root / 'patches' / 'demo_quick'}"]
    args = _args("--root", str(root / "budget"), *sum((["--set", p] for p in paths), []), "--minutes", "0.1")
    cfg, single = demo.demo_configs(args)
    short, short_single, budget = demo.fit_to_time(args, cfg, single, seconds_spent=0.0)
    assert budget["fitted"] and budget["preset_epochs"] == cfg.epochs == 40
    assert short.epochs == short_single.epochs == demo.MIN_EPOCHS == 5
    assert short.lr_decay_every == short_single.lr_decay_every == round(25 * 5 / 40) == 3
    assert set(budget["step_seconds"]) == {"dual", "single"} and all(0 < s < 60 for s in budget["step_seconds"].values())
    assert budget["probe_seconds"] > sum(budget["step_seconds"].values()) * demo.PROBE_STEPS
    assert not (root / "budget").exists()
    args.minutes = 10 ** 4
    same, same_single, budget = demo.fit_to_time(args, cfg, single, seconds_spent=0.0)
    assert (same, same_single) == (cfg, single) and not budget["fitted"]
    # a run shortened to 5 epochs (decay every 3) that stopped after its first: resumed as it was
    train.train(dataclasses.replace(short, epochs=1, steps_per_epoch=3), resume=False, verbose=0)
    resumed, resumed_single, budget = demo.fit_to_time(args, cfg, single, seconds_spent=0.0)
    assert (resumed.epochs, resumed.lr_decay_every, resumed_single.epochs) == (1, 3, 1)
    assert budget["resumed"] and budget["fitted"] and "step_seconds" not in budget
    args.minutes = 0
    with pytest.raises(train.TrainError, match="shortened to 100 of the preset.s 4000 steps.*--fresh"):
        demo.fit_to_time(args, cfg, single, seconds_spent=0.0)
    args.minutes, args.fresh = 10 ** 4, True       # --fresh: timed again, the preset's budget
    assert demo.fit_to_time(args, cfg, single, seconds_spent=0.0)[0] == cfg
    args.overrides.append("epochs=7")          # a budget the user set is kept, without timing anything
    assert demo.fit_to_time(args, cfg, single, seconds_spent=0.0)[2] == {"fitted": False, "epochs": cfg.epochs}
    args.overrides.pop()                       # epochs of a whole pass (steps_per_epoch 0): nothing to scale
    whole = dataclasses.replace(cfg, steps_per_epoch=0)
    assert demo.fit_to_time(args, whole, single, seconds_spent=0.0)[0] == whole


def test_epochs_that_fit_scales_the_schedule_with_the_time():
    # per epoch: 100 steps x 0.2 s for both networks x 1.1 = 22 s; 2 x 15 s to start the two runs
    assert demo.epochs_that_fit(40, 25, 100, 30 + 13 * 22 + 5, 0.2) == (13, 8)      # 8.1 epochs between decays
    assert demo.epochs_that_fit(40, 25, 100, 30 + 40 * 22 + 5, 0.2) == (40, 25)     # all of them fit: unchanged
    assert demo.epochs_that_fit(40, 25, 100, 30 + 39 * 22 + 5, 0.2) == (39, 24)
    assert demo.epochs_that_fit(40, 25, 100, 20, 0.2) == (demo.MIN_EPOCHS, 3)       # no time left: the fewest
    assert demo.epochs_that_fit(40, 25, 100, -50, 0.2) == (demo.MIN_EPOCHS, 3)
    assert demo.epochs_that_fit(2, 25, 100, 0, 0.2) == (2, 25)     # the fewest never exceeds the preset's own


def test_overrun_line_reports_the_pace_against_the_probe():
    budget = {"fitted": True, "minutes": 15, "step_seconds": {"dual": 0.094, "single": 0.089}}
    seconds = {"train_dual": 465.0, "train_single": 720.0, "total": 1278.0}
    steps = {"DPDNet": 3900, "DPDNet-Single": 3600}
    (line,) = demo._overrun_lines(budget, seconds, steps)
    assert "(21.3 min)" in line and "119 ms and 200 ms" in line and "94 ms and 89 ms" in line   # 465/3900, 720/3600
    assert demo._overrun_lines(budget, {**seconds, "total": 15 * 60 * 1.1}, steps) == []   # within the tolerance
    assert demo._overrun_lines({"fitted": False, "epochs": 40}, seconds, steps) == []      # --minutes 0: no budget


def test_quick_demo_under_torch(tmp_path):
    """The whole demo under Keras' PyTorch backend (the suite's own pass is TensorFlow), on a fifth of --quick's
    training steps: it shows every stage runs there, and PyTorch trains this network at half TensorFlow's rate."""
    pytest.importorskip("torch")
    root, stdout = run_quick_demo(tmp_path, "torch", "--set", "steps_per_epoch=20")
    check_quick_demo(root, stdout, "torch")
    assert json.loads((root / "results" / "demo_quick" / "summary.json").read_text())["training"]["steps"] == 20


def test_root_redirects_every_path(tmp_path):
    cfg, single = demo.demo_configs(_args("--quick", "--root", str(tmp_path)))
    for c in (cfg, single):
        for key in demo.PATH_KEYS:
            if getattr(c, key):       # init_weights stays empty: the demo trains from scratch
                assert c.resolve_path(key).startswith(str(tmp_path) + os.sep), key
        assert c.init_weights == ""
    assert (cfg.input_mode, single.input_mode) == ("dual", "single")
    assert (cfg.run_name, single.run_name) == ("demo_quick", "demo_quick_single")
    assert single.differences(cfg.to_dict(), "dual", ignore=("input_mode", "run_name")) == []   # the same recipe and budget


def test_set_path_wins_over_root(tmp_path):
    elsewhere = str(tmp_path / "ckpt")
    cfg, _ = demo.demo_configs(_args("--root", str(tmp_path / "r"), "--set", f"checkpoint_dir={elsewhere}"))
    assert cfg.checkpoint_dir == elsewhere and cfg.run_name == "demo"
    assert cfg.results_dir == str(tmp_path / "r" / "results")


def test_single_input_mode_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="input_mode"):
        demo.demo_configs(_args("--root", str(tmp_path), "--set", "input_mode=single"))


def test_a_tile_the_demo_network_cannot_run_stops_before_any_work(tmp_path):
    """260 passes the config's own check (above 2 x 128) but is no multiple of 8, 2**depth of the demo's network:
    refused at the start, not after the training that evaluation follows."""
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--quick", "--root", str(tmp_path), "--set", "tile=260", "--no-progress"])
    assert str(exit_info.value.code) == "error: config: tile 260 is not a multiple of 8, 2**depth of a depth-3 network"
    assert os.listdir(tmp_path) == []


def test_demo_presets_leave_the_paper_alone():
    assert PRESETS["paper"] == {}
    demo_cfg = make_config("demo")
    assert demo_cfg.head == "residual" and make_config("paper").head == "sigmoid"
    assert demo_cfg.augment and not make_config("paper").augment
    assert make_config("demo_single").differences(demo_cfg.to_dict(), "demo", ignore=("input_mode", "run_name")) == []
    assert make_config("demo_single").run_name == "demo_single"


def test_pick_scenes_worst_input_one_per_category():
    rows = [{"name": "a", "category": "indoor", "psnr": 30.0}, {"name": "b", "category": "indoor", "psnr": 20.0},
            {"name": "c", "category": "outdoor", "psnr": 25.0}, {"name": "d", "category": "outdoor", "psnr": 21.0}]
    assert demo.pick_scenes(rows, 2) == ["b", "d"]
    assert demo.pick_scenes(rows, 3) == ["b", "d", "c"]
    assert demo.pick_scenes(rows[:1], 2) == ["a"]


def test_crop_box_finds_the_blurred_region():
    sharp = np.zeros((64, 96, 3), np.float32)
    blurry = sharp.copy()
    blurry[40:56, 10:30] = 0.5
    x, y, w, h = demo.crop_box(blurry, sharp, 24, 16)
    assert (w, h) == (24, 16) and 0 <= x <= 96 - 24 and 0 <= y <= 64 - 16
    assert x <= 10 and x + w >= 30 and y <= 40 and y + h >= 56
    blurry[:] = 0.0
    blurry[60:, 90:] = 1.0                                    # at the corner: the window stays inside
    x, y, w, h = demo.crop_box(blurry, sharp, 24, 16)
    assert (x, y) == (96 - 24, 64 - 16)


def test_comparison_image_layout():
    rng = np.random.default_rng(0)
    scene = {"images": [rng.random((52, 80, 3)).astype(np.float32) for _ in range(4)],
             "labels": ["in", "single", "dual", "sharp"], "title": "scene"}
    img = demo.comparison_image([scene, scene], zoom=4)
    assert img.dtype == np.uint8 and img.ndim == 3
    assert img.shape[1] == 4 * 80 + 3 * 6
    # per scene: title 24 + (20 + 52) + gap 6 + (20 + 4 * 13); two scenes and a spacer of 18
    assert img.shape[0] == 2 * (24 + 72 + 6 + 72) + 18
