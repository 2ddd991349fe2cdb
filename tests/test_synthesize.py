"""The synthetic dual-pixel generator: thin-lens blur size, left/right PSFs, layered rendering with occlusion,
the DPDD layout it writes, determinism and resuming."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import dpdd
from config import REPO_DIR
from images import read_image
from synthesize import (Camera, Domain, Layer, Noise, PsfShape, SynthesisError, centroid_x, coc_pixels, dp_kernels,
                        leaves_content, main, make_scene, photo_content, quantize_coc, random_content, render_views,
                        sample_scene, scene_paths, scene_rng, synthesize, to_linear)

CAM = Camera(focal_mm=50.0, f_number=1.8, focus_m=2.0, downscale=12.0)


def test_coc_is_signed_zero_at_focus_and_matches_the_thin_lens_formula():
    c = coc_pixels([1.0, 2.0, 4.0, np.inf], 50.0, 1.8, 2.0, pitch_um=5.36, downscale=12.0)
    assert c[1] == 0.0 and c[0] < 0 < c[2] < c[3]
    aperture = 50.0 / 1.8
    expected_inf = aperture * 50.0 / (2000.0 - 50.0) * 1000.0 / 5.36 / 12.0   # (d - S) / d -> 1
    assert c[3] == pytest.approx(expected_inf, rel=1e-9) and c[3] == pytest.approx(11.07, abs=0.01)
    assert c[2] == pytest.approx(expected_inf * (4.0 - 2.0) / 4.0, rel=1e-9)
    # affine in inverse depth (Garg et al.): equal steps in 1/d give equal steps in c
    inv = np.array([0.1, 0.3, 0.5, 0.7])
    assert np.allclose(np.diff(coc_pixels(1 / inv, 85.0, 4.0, 3.0, downscale=4.0), 2), 0.0, atol=1e-9)
    # stopping down two stops halves the aperture diameter and the blur
    assert coc_pixels(4.0, 50.0, 3.6, 2.0, downscale=12.0) == pytest.approx(c[2] / 2)


@pytest.mark.parametrize("c", [-24.0, -7.3, -1.5, 0.0, 0.5, 2.0, 5.0, 12.0, 23.9])
def test_kernels_sum_to_one_mirror_each_other_and_combine(c):
    left, right, combined = dp_kernels(c)
    for k in (left, right, combined):
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and k.min() >= 0
    assert np.array_equal(right, left[:, ::-1])
    assert np.allclose(combined, (left + right) / 2, atol=1e-7)
    assert abs(centroid_x(combined)) < 1e-4


def test_zero_blur_is_a_delta_and_the_halves_swap_across_the_focal_plane():
    for k in dp_kernels(0.0):
        assert k.shape == (1, 1) and k[0, 0] == 1.0
    for c in (2.0, 6.0, 17.0):
        behind_l, behind_r, _ = dp_kernels(c)
        front_l, front_r, _ = dp_kernels(-c)
        assert centroid_x(behind_l) < -0.2 < 0.2 < centroid_x(behind_r)   # behind focus: left view sees the left half
        assert centroid_x(front_l) > 0.2 > -0.2 > centroid_x(front_r)     # in front: the halves swap
        assert np.array_equal(front_l, behind_r)


def test_disparity_grows_with_blur_size():
    shape = PsfShape(beta=0.15, order=4)
    sizes = [1.5, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0]
    seps = [centroid_x(dp_kernels(c, shape)[1]) - centroid_x(dp_kernels(c, shape)[0]) for c in sizes]
    assert all(b > a for a, b in zip(seps, seps[1:])), seps
    for c, s in zip(sizes[2:], seps[2:]):
        assert c / 4 <= s <= c / 2   # the literature: |c|/3 to |c|/2 for soft halves
    assert quantize_coc(-7.3) == pytest.approx(-4 * 1.1 ** 6) and quantize_coc(0.2) == 0.0


def _scene(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    back = Layer(rng.uniform(0, 1, (h, w, 3)).astype(np.float32), np.ones((h, w), np.float32), 6.0)
    alpha = np.zeros((h, w), np.float32)
    alpha[10:30, 15:40] = 1.0
    alpha[10:30, 14] = 0.4                              # a soft edge
    front = Layer(rng.uniform(0, 1, (h, w, 3)).astype(np.float32), alpha, 1.2)
    return back, front


def test_in_focus_layers_render_as_the_sharp_scene():
    back, front = _scene()
    focused = [Layer(back.colour, back.alpha, CAM.focus_m), Layer(front.colour, front.alpha, CAM.focus_m)]
    left, right, combined, sharp = render_views(focused, CAM, noise=None)
    a = front.alpha[..., None]
    expected = np.power(to_linear(front.colour) * a + (1 - a) * to_linear(back.colour), 1 / 2.2)
    for img in (left, right, combined, sharp):
        assert img.dtype == np.float32 and img.shape == (40, 56, 3)
        assert np.abs(img - expected).max() < 1e-5
    # a slanted layer (depth map) through the focal plane is sharp exactly where it is in focus
    depth = np.full(back.alpha.shape, CAM.focus_m, np.float32)
    depth[:, 40:] = 5.0
    left, right, _, sharp = render_views([Layer(back.colour, back.alpha, depth)], CAM)
    assert np.abs(left[:, :20] - sharp[:, :20]).max() < 1e-5
    assert np.abs(left[:, 45:] - right[:, 45:]).max() > 0.02


def test_points_behind_and_in_front_of_focus_shift_opposite_ways():
    h, w = 61, 61
    dark = np.zeros((h, w, 3), np.float32)
    point = dark.copy()
    point[30, 30] = 1.0
    for depth, sign in ((8.0, -1), (1.0, 1)):                # behind: left image lies left of the point
        layers = [Layer(dark, np.ones((h, w), np.float32), 50.0), Layer(point, np.ones((h, w), np.float32), depth)]
        left, right, combined, _ = render_views(layers, CAM)
        lin = [to_linear(v)[..., 0] for v in (left, right, combined)]
        cx = [float((im.sum(axis=0) * np.arange(w)).sum() / im.sum()) - 30 for im in lin]
        assert sign * cx[0] > 1.0 and sign * cx[1] < -1.0 and abs(cx[2]) < 1e-3
        assert np.allclose(lin[2], (lin[0] + lin[1]) / 2, atol=1e-6)      # combined = (L + R) / 2, views as bright
        assert lin[0].sum() == pytest.approx(lin[2].sum(), rel=1e-3)


def test_occlusion_defocused_front_spills_over_sharp_back_and_not_the_reverse():
    back, front = _scene()
    inside, outside = (slice(15, 25), slice(22, 33)), (slice(0, 40), slice(0, 4))
    # focus on the front layer: its inside is exactly the sharp front, the blurred background never bleeds in
    cam = Camera(50.0, 1.8, 1.2, downscale=12.0)
    left, right, _, sharp = render_views([back, front], cam)
    assert np.abs(left[inside] - sharp[inside]).max() < 1e-5 and np.abs(right[inside] - sharp[inside]).max() < 1e-5
    assert np.abs(left[outside] - sharp[outside]).mean() > 0.05
    # focus on the background: the blurred front spreads over it beyond its mask, the far background stays sharp
    cam = Camera(50.0, 1.8, 6.0, downscale=12.0)
    left, _, combined, sharp = render_views([back, front], cam)
    assert np.abs(combined[outside] - sharp[outside]).max() < 1e-5
    ring = (slice(12, 28), slice(41, 44))
    assert np.abs(combined[ring] - sharp[ring]).mean() > 0.03


def test_noise_and_vignetting_are_small_and_leave_the_target_clean():
    back, front = _scene()
    args = ([back, front], CAM)
    clean = render_views(*args)
    noisy = render_views(*args, noise=Noise(shot=1e-4, read=1e-3), vignetting=0.1, rng=np.random.default_rng(1))
    assert np.array_equal(clean[3], noisy[3])
    err = noisy[2] - clean[2]
    assert 0 < np.sqrt((err ** 2).mean()) < 0.02
    left_gain = to_linear(noisy[0])[:, -8:].mean() / to_linear(noisy[1])[:, -8:].mean()
    assert 0.75 < left_gain < 0.95                      # left view darker at the right edge


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            if n.endswith(".png"):
                with open(os.path.join(folder, n), "rb") as f:
                    out[os.path.relpath(os.path.join(folder, n), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One small set made with 1 worker, its twin with 2 workers, and one with another seed."""
    base = tmp_path_factory.mktemp("syn")
    kw = dict(n_train=3, n_val=2, n_test=4, width=96, height=64, progress=False)
    one = synthesize(str(base / "a"), seed=7, workers=1, **kw)
    two = synthesize(str(base / "b"), seed=7, workers=2, **kw)
    other = synthesize(str(base / "c"), seed=8, workers=1, **kw)
    return base, kw, one, two, other


def test_written_layout_is_dpdd_with_16_bit_pngs_and_categories(made):
    base, kw, summary, _, _ = made
    root = str(base / "a")
    assert summary["written"] == 9 and summary["skipped"] == 0
    for split, n in (("train", 3), ("val", 2), ("test", 4)):
        scenes = dpdd.list_scenes(root, split)
        assert len(scenes) == n
        for i, s in enumerate(scenes):
            assert s.source == f"syn_{split}_{i:05d}_s"
            assert os.path.basename(s.target_path) == f"syn_{split}_{i:05d}_t.png"
            for p in (s.source_path, s.target_path, s.left_path, s.right_path):
                img = read_image(p)
                assert img.dtype == np.uint16 and img.shape == (64, 96, 3)
        assert dpdd.compare_with_official(split, scenes)[0].endswith("(a custom or synthetic set)")
    with open(os.path.join(root, "test_categories.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dpdd.TEST_CATEGORIES_CSV, newline="") as f:
        assert list(rows[0]) == csv.DictReader(f).fieldnames
    assert [r["index"] for r in rows] == ["1", "2", "3", "4"]
    cats = dpdd.load_test_labels(root).categories
    assert sorted(cats) == [s.source for s in dpdd.list_scenes(root, "test")]
    assert set(cats.values()) <= {"indoor", "outdoor"}
    with open(os.path.join(root, "scenes.csv"), newline="") as f:
        meta = list(csv.DictReader(f))
    assert len(meta) == 9 and all(r["category"] == ("outdoor" if float(r["far_m"]) >= 10 else "indoor") for r in meta)
    assert {r["psf_field"] for r in meta} == {r["psf_field_tilt"] for r in meta} == {"0.0"}     # off by default


def test_data_prep_builds_a_patch_store_from_it(made, tmp_path):
    import data_prep
    from config import make_config
    base = made[0]
    cfg = make_config("paper", {"dataset_root": str(base / "a"), "patch_dir": str(tmp_path / "patches"),
                                "working_width": 96, "working_height": 64, "patch_size": 32, "data_workers": 1})
    manifest = data_prep.build_store(cfg, progress=False)
    assert manifest["counts"]["train_scenes"] == 3 and manifest["counts"]["val_scenes"] == 2
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0


def test_deterministic_for_a_seed_and_for_any_worker_count(made):
    base, _, _, _, _ = made
    a, b, c = _files(base / "a"), _files(base / "b"), _files(base / "c")
    assert len(a) == 36 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    images, meta = make_scene(7, "val", 1, 96, 64, 24.0 * 96 / 560)
    again, meta2 = make_scene(7, "val", 1, 96, 64, 24.0 * 96 / 560)
    assert meta == meta2 and all(np.array_equal(images[k], again[k]) for k in images)


def test_resume_skips_finished_scenes_and_refuses_other_settings(made, tmp_path):
    base, kw, _, _, _ = made
    root = str(tmp_path / "r")
    synthesize(root, seed=7, workers=1, **{**kw, "n_train": 2})
    os.remove(scene_paths(root, "test", 2)["left"])
    leftover = os.path.join(root, "train_c", "source", ".syn_train_00002_s.abc.tmp.png")   # a killed write
    open(leftover, "wb").close()
    summary = synthesize(root, seed=7, workers=1, **kw)          # one more train scene, one repaired test scene
    assert summary["written"] == 2 and summary["skipped"] == 7
    assert _files(root) == _files(base / "a") and not os.path.exists(leftover)
    with pytest.raises(SynthesisError, match="seed=7"):
        synthesize(root, seed=9, workers=1, **kw)
    with pytest.raises(SynthesisError, match=r"domain\.tones=\['srgb', 'gamma', 'linear'\], not \['linear'\]"):
        synthesize(root, seed=7, workers=1, domain=Domain(tones=("linear",)), **kw)
    manifest = os.path.join(root, "synthesize.json")      # written before the field, background and soft-content settings existed
    with open(manifest) as f:
        old = json.load(f)
    for key in ("field", "field_tilt", "background_blur", "soft_content", "test_soft_content", "soft_sigma",
                "demosaic", "clean_fraction", "dark_fraction", "dark_stops", "photos"):
        del old["domain"][key]
    with open(manifest, "w") as f:
        json.dump(old, f)
    unsmoothed = Domain(soft_content=0.0, test_soft_content=None, demosaic=0.0)   # what such a folder was made with
    assert synthesize(root, seed=7, workers=1, domain=unsmoothed, **kw)["written"] == 0
    with pytest.raises(SynthesisError, match="domain.field=0.0, not 0.3"):
        synthesize(root, seed=7, workers=1, domain=dataclasses.replace(unsmoothed, field=0.3), **kw)
    with pytest.raises(SynthesisError, match="domain.soft_content=0.0, not 0.3"):   # today's default
        synthesize(root, seed=7, workers=1, **kw)
    with pytest.raises(SynthesisError, match="domain.demosaic=0.0, not 0.5"):
        synthesize(root, seed=7, workers=1, domain=dataclasses.replace(unsmoothed, demosaic=0.5), **kw)
    with pytest.raises(SynthesisError, match="domain.clean_fraction=0.0, not 0.2"):
        synthesize(root, seed=7, workers=1, domain=dataclasses.replace(unsmoothed, clean_fraction=0.2), **kw)
    with pytest.raises(SynthesisError, match="beyond the 1 train scenes"):
        synthesize(root, seed=7, workers=1, domain=unsmoothed, **{**kw, "n_train": 1})
    with pytest.raises(SystemExit, match="error: image size 20x64"):
        main(["--out", str(tmp_path / "x"), "--width", "20", "--height", "64"])


def test_cli_runs_without_tensorflow(tmp_path):
    code = ("import sys, synthesize; synthesize.main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, "--out", str(tmp_path / "d"), "--train", "1", "--val", "1",
                          "--test", "1", "--width", "48", "--height", "32", "--workers", "1", "--no-progress"],
                         cwd=REPO_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "wrote 3 scenes" in out.stdout and len(dpdd.list_scenes(str(tmp_path / "d"), "test")) == 1


# ----------------------------------------------------------------------------------------- domain randomisation

FAMILY_SHAPES = [PsfShape(), PsfShape(family="ramp"), PsfShape(family="soft", split=0.3, apodize=1.0, blur=0.1),
                 PsfShape(family="polygon", blades=6, rotation=0.3, split=0.2, apodize=-0.5, blur=0.05),
                 PsfShape(family="soft", split=0.4, cats_eye=0.3, cats_angle=1.0, right_scale=1.15, right_blur=0.05,
                          chroma=0.08)]


@pytest.mark.parametrize("shape", FAMILY_SHAPES, ids=lambda s: s.family + ("_asym" if s.chroma else ""))
def test_every_psf_family_keeps_the_sign_convention_and_sums_to_one(shape):
    from synthesize import view_kernels
    seps = []
    for c in (1.5, 4.0, 9.0, 20.0):
        lefts, rights = view_kernels(c, shape)
        front_l, front_r = view_kernels(-c, shape)
        for k in lefts + rights + front_l + front_r:
            assert k.sum() == pytest.approx(1.0, abs=1e-5) and k.min() >= 0 and k.shape[0] % 2 == 1
        for ch in range(3):
            assert centroid_x(lefts[ch]) < 0 < centroid_x(rights[ch])       # behind focus: left view shifted left
            assert centroid_x(front_l[ch]) > 0 > centroid_x(front_r[ch])    # in front: the other way
        seps.append(centroid_x(rights[1]) - centroid_x(lefts[1]))
    assert all(b > a for a, b in zip(seps, seps[1:])) and c / 6 < seps[-1] < c / 1.5, seps
    if shape.chroma:
        assert not np.allclose(lefts[0], lefts[2])            # red and blue blur differ
        assert not np.allclose(rights[1], lefts[1][:, ::-1])  # and the halves are not mirror images


def test_sensor_tone_gain_field_quantisation_and_grey_noise():
    from synthesize import Sensor
    x = np.linspace(0, 1, 11, dtype=np.float32)
    assert np.allclose(Sensor(tone="linear").encode(x), x)
    assert Sensor(tone="srgb").encode(np.float32([0.0031308, 0.18, 1.0])) == pytest.approx([0.04045, 0.4614, 1.0], abs=1e-3)
    assert Sensor(tone="gamma", gamma=2.6).encode(np.float32([0.25]))[0] == pytest.approx(0.25 ** (1 / 2.6), abs=1e-6)
    gl, gr = (g[..., 0] for g in Sensor(imbalance=0.4, vignetting=-0.2).gains(8, 16))
    assert np.allclose((gl + gr) / 2, 1.0, atol=1e-6)                       # the photodiodes share the light
    ratio = gl / gr
    assert ratio[:, 0].mean() > ratio[:, -1].mean() and ratio[:, 0].mean() == pytest.approx(np.exp(0.6), rel=0.01)
    back, front = _scene()
    grey_layers = [Layer(np.repeat(l.colour[..., 1:2], 3, axis=2), l.alpha, l.depth_m) for l in (back, front)]
    sensor = Sensor(tone="linear", bits=10, grey=True, imbalance=0.3)
    left, right, combined, sharp = render_views(grey_layers, CAM, Noise(shot=1e-3, read=2e-3), sensor=sensor,
                                                rng=np.random.default_rng(0))
    for img in (left, right, combined):
        assert np.array_equal(img[..., 0], img[..., 2])                    # one-channel data stays one channel
        assert np.allclose(img * 1023, np.rint(img * 1023), atol=1e-3)      # 10-bit levels
    assert left.mean() / right.mean() == pytest.approx(np.exp(0.3), rel=0.05)   # linear: the gain ratio shows


def test_domain_families_restrict_the_draws_and_are_recorded(tmp_path):
    from synthesize import Domain
    domain = Domain(psf_families=("soft",), cameras=("phone",), tones=("linear",), noise_levels=("high",), bits=(12,))
    metas = [make_scene(0, "train", i, 96, 64, 6.0, render=False, domain=domain)[1] for i in range(6)]
    assert {(m["psf"], m["camera"], m["tone"], m["bits"]) for m in metas} == {("soft", "phone", "linear", 12)}
    assert all(m["iso"] >= 800 and m["max_abs_coc_px"] <= 6.0 for m in metas)
    default = [make_scene(0, "train", i, 96, 64, 6.0, render=False)[1] for i in range(40)]
    assert {m["psf"] for m in default} == {"butterworth", "ramp", "soft", "polygon"}
    assert {m["camera"] for m in default} == {"dslr", "phone"} and {m["tone"] for m in default} == {"srgb", "gamma", "linear"}
    with pytest.raises(SynthesisError, match="psf_families"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(psf_families=("disc",)))


def test_every_domain_setting_can_be_set_from_the_command_line(tmp_path):
    """--domain KEY=VALUE reaches the settings without a flag of their own, read as each field's type: every scene
    a phone one with blur of at most 2 px, recorded in synthesize.json; bad keys and values are one-line errors."""
    out = tmp_path / "d"
    main(["--out", str(out), "--train", "4", "--val", "1", "--test", "1", "--width", "48", "--height", "32",
          "--workers", "1", "--no-progress", "--domain", "phone_fraction=1", "--domain", "phone_blur_px=1, 2",
          "--domain", "target_noise=yes", "--domain", "soft_sigma=1,8"])
    with open(out / "synthesize.json") as f:
        domain = json.load(f)["domain"]
    assert (domain["phone_fraction"], domain["phone_blur_px"], domain["target_noise"]) == (1.0, [1.0, 2.0], True)
    assert domain["soft_sigma"] == [1.0, 8.0] and domain["soft_content"] == 0.3
    with open(out / "scenes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["camera"] for r in rows} == {"phone"}
    assert all(float(r["max_abs_coc_px"]) <= 2.0 for r in rows)
    base = ["--out", str(tmp_path / "x"), "--train", "1", "--val", "0", "--test", "0", "--width", "48",
            "--height", "32", "--workers", "1", "--no-progress"]
    for arg, message in [("nope=1", "--domain: unknown setting 'nope' (known: asymmetry, "),
                         ("soft_content=0.2", "--domain soft_content: set it with --soft-content"),
                         ("zoom=a,b", "--domain zoom: cannot read 'a,b'"),
                         ("target_noise=maybe", "--domain target_noise: cannot read 'maybe'"),
                         ("cats_eye=1.5", "cats_eye: must be in [0, 1), got 1.5"),
                         ("gamma_range=2,1", "gamma_range: must be a finite range (lo, hi) with 0 < lo <= hi"),
                         ("imbalance=nan", "imbalance: the largest strength, drawn with either sign, must be finite"),
                         ("phone_fraction", "--domain expects KEY=VALUE")]:
        with pytest.raises(SystemExit) as exit_info:
            main(base + ["--domain", arg])
        text = str(exit_info.value.code)
        assert text.startswith("error: ") and message in text and "\n" not in text, (arg, text)
    assert not (tmp_path / "x").exists()


def test_clean_scenes_draw_iso_up_to_100_in_the_fraction_asked():
    """Domain.clean_fraction: that share of scenes draws ISO 0.01-100 (the "clean" level) whatever noise_levels
    says, and is otherwise the same scene as without it; 0 (the default) draws none, and "clean" can be asked for
    as a level too."""
    def metas(domain, n=60):
        return [make_scene(0, "train", i, 96, 64, 6.0, render=False, domain=domain)[1] for i in range(n)]
    plain, half = metas(Domain()), metas(Domain(clean_fraction=0.5))
    assert all(100 <= m["iso"] <= 6400 for m in plain)
    changed = [b["iso"] for a, b in zip(plain, half) if a != b]
    assert 18 <= len(changed) <= 42 and 0.01 <= min(changed) and max(changed) <= 100   # binomial(60, 0.5): 30 +- 3.9
    assert all({**a, "iso": 0} == {**b, "iso": 0} for a, b in zip(plain, half))
    assert all(m["iso"] <= 100 for m in metas(Domain(noise_levels=("clean",)), 6))
    with pytest.raises(SynthesisError, match="clean_fraction"):
        Domain(clean_fraction=1.5).validate()


def test_dark_scenes_are_exposed_one_to_four_stops_lower_in_the_fraction_asked():
    """Domain.dark_fraction: that share of scenes has its linear light times 2^-(1..4) before the noise, the target
    too, and is otherwise the same scene; 0 (the default) darkens none. On a linear-tone scene the target is the
    undarkened one times the factor, pixel for pixel."""
    def scenes(domain, n=60):
        return [make_scene(0, "train", i, 96, 64, 6.0, render=False, domain=domain) for i in range(n)]
    plain, half = scenes(Domain()), scenes(Domain(dark_fraction=0.5))
    assert all(m["exposure"] == 1.0 for _, m in plain)
    changed = [b["exposure"] for (_, a), (_, b) in zip(plain, half) if a != b]
    assert 18 <= len(changed) <= 42 and 2 ** -4 <= min(changed) and max(changed) <= 0.5  # binomial(60, 0.5): 30 +- 3.9
    assert all({**a, "exposure": 0} == {**b, "exposure": 0} for (_, a), (_, b) in zip(plain, half))
    index = next(i for i, ((_, a), (_, b)) in enumerate(zip(plain, half)) if a != b and a["tone"] == "linear")
    (bright, _), (dark, meta) = (make_scene(0, "train", index, 96, 64, 6.0, domain=d)
                                 for d in (Domain(), Domain(dark_fraction=0.5)))
    np.testing.assert_allclose(dark["target"], bright["target"] * meta["exposure"], rtol=1e-3)   # 4 digits in meta
    assert dark["source"].mean() < 0.6 * bright["source"].mean()
    with pytest.raises(SynthesisError, match="dark_fraction"):
        Domain(dark_fraction=-0.1).validate()
    with pytest.raises(SynthesisError, match="dark_stops"):
        Domain(dark_stops=(3.0, 1.0)).validate()


def test_own_photographs_are_the_photo_content_and_are_recorded(tmp_path):
    """--photos DIR: photographic layers and dead-leaves colours come from the folder's files (8 or 16 bit, RGB or
    grey, any of the extensions), the manifest records the folder and its count, so a folder that has changed cannot
    be resumed, and a missing or empty folder is a one-line error."""
    black, ramps = tmp_path / "black", tmp_path / "ramps"
    black.mkdir()
    ramps.mkdir()
    cv2.imwrite(str(black / "night.jpg"), np.zeros((120, 200, 3), np.uint8))
    y = np.linspace(0, 1, 150)[:, None] * np.ones((1, 220))
    cv2.imwrite(str(ramps / "down.png"), np.round(y * 200 + 20).astype(np.uint8))                # grey, 8 bit
    cv2.imwrite(str(ramps / "across.tif"), np.round(np.stack([y.T[:, :150]] * 3, axis=2) * 60000).astype(np.uint16))
    (ramps / "notes.txt").write_text("not a photograph")

    # a black photograph stays black through the crop and colour jitter: exactly the photo draws are all zero
    rng = np.random.default_rng(0)
    zero = [not random_content(rng, 32, 48, photos=str(black)).any() for _ in range(60)]
    rng = np.random.default_rng(0)
    assert 15 <= sum(zero) <= 45 and not any(not random_content(rng, 32, 48).any() for _ in range(60))
    assert not leaves_content(np.random.default_rng(1), 32, 48, str(black)).any()

    def black_layers(domain):                         # ... and the scenes draw their layers through the folder
        return sum(not layer.colour.any() for i in range(8)
                   for layer in sample_scene(scene_rng(0, "train", i), 48, 32, 4.0, domain=domain).layers)
    assert black_layers(Domain(photos=str(black))) >= 3 and black_layers(Domain()) == 0
    # the two ramps, each drawn: one constant along rows and monotonic down the frame, one the transpose
    kinds = set()
    for seed in range(12):
        img = photo_content(np.random.default_rng(seed), 40, 60, str(ramps)).mean(axis=2)
        for axis in (0, 1):
            if np.ptp(img, axis=1 - axis).max() < 1e-6:        # constant across the other axis
                steps = np.diff(img.mean(axis=1 - axis))
                assert (steps >= -1e-6).all() or (steps <= 1e-6).all()
                kinds.add(axis)
    assert kinds == {0, 1}

    kw = dict(n_train=1, n_val=1, n_test=1, width=48, height=32, workers=1, progress=False)
    root = str(tmp_path / "own")
    main(["--out", root, "--train", "1", "--val", "1", "--test", "1", "--width", "48", "--height", "32",
          "--workers", "1", "--no-progress", "--photos", str(ramps)])
    with open(os.path.join(root, "synthesize.json")) as f:
        made = json.load(f)
    assert made["domain"]["photos"] == str(ramps) and made["photo_files"] == 2
    cv2.imwrite(str(ramps / "third.bmp"), np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(SynthesisError, match="photo_files=2, not 3"):
        synthesize(root, domain=Domain(photos=str(ramps)), **kw)
    with pytest.raises(SynthesisError, match="domain.photos="):
        synthesize(root, **kw)
    with pytest.raises(SynthesisError, match="not a folder"):
        synthesize(str(tmp_path / "x"), domain=Domain(photos=str(tmp_path / "missing")), **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthesisError, match="holds no photographs"):
        synthesize(str(tmp_path / "x"), domain=Domain(photos=str(tmp_path / "empty")), **kw)


def test_zoom_scales_the_blur_and_is_validated(tmp_path):
    from synthesize import Domain
    whole = [make_scene(0, "train", i, 96, 64, 50.0, render=False, domain=Domain(cameras=("dslr",), zoom=(1.0, 1.0)))[1]
             for i in range(12)]
    crop = [make_scene(0, "train", i, 96, 64, 50.0, render=False, domain=Domain(cameras=("dslr",), zoom=(4.0, 4.0)))[1]
            for i in range(12)]
    ratio = [c["max_abs_coc_px"] / w["max_abs_coc_px"] for w, c in zip(whole, crop) if w["max_abs_coc_px"] > 0.1]
    assert np.median(ratio) == pytest.approx(4.0, rel=0.02)      # same scenes and cameras, 4x the blur in pixels
    with pytest.raises(SynthesisError, match="zoom"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(zoom=(2.0, 1.0)))


def test_background_blur_crops_so_that_infinity_gets_the_drawn_blur(tmp_path):
    """with_background_blur: CAM blurs infinity by 11.07 px at downscale 12 (the thin-lens test above); for 5 px
    the crop widens to downscale 12 x 11.07 / 5 = 26.6, within the bounds at 96 wide (1 and 6720 / 96 = 70); at
    320 wide it stops at the whole frame, 6720 / 320 = 21. In scenes drawn with background_blur=1 every DSLR camera of a
    procedural scene blurs infinity by a third of the limit to all of it, unless the crop is at a bound."""
    from synthesize import sample_scene, scene_rng, with_background_blur
    infinity = 50.0 / 1.8 * 50.0 / (2000.0 - 50.0) * 1000.0 / 5.36 / 12.0
    assert with_background_blur(CAM, 5.0, 96).downscale == pytest.approx(12.0 * infinity / 5.0, rel=1e-9)
    assert with_background_blur(CAM, 5.0, 96).coc(np.inf) == pytest.approx(5.0)
    assert with_background_blur(CAM, 5.0, 320).downscale == pytest.approx(21.0)
    assert with_background_blur(CAM, 500.0, 96).downscale == 1.0
    limit, checked = 12.0, 0
    for i in range(30):
        scene = sample_scene(scene_rng(3, "train", i), 96, 64, limit, domain=Domain(cameras=("dslr",),
                                                                                  background_blur=1.0))
        if scene.kind == "motorcycle" or scene.camera.downscale in (1.0, 70.0):
            continue
        checked += 1
        assert limit / 3 - 1e-6 <= scene.camera.coc(np.inf) <= limit + 1e-6, i
    assert checked >= 20
    with pytest.raises(SynthesisError, match="background_blur"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(background_blur=1.5))


def test_soft_content_smooths_the_drawn_layers_and_keeps_everything_else(tmp_path):
    """soften() is a Gaussian of the drawn sigma over the content, mirrored at the frame's edges: scipy's own
    filter agrees. Scenes drawn with soft_content=1 keep every silhouette, depth and camera of the scenes drawn
    with soft_content=0, and only their content loses detail (mean |horizontal difference| of every layer falls)."""
    from scipy.ndimage import gaussian_filter
    from synthesize import sample_scene, scene_rng, soften
    colour = np.random.default_rng(0).random((40, 56, 3)).astype(np.float32)
    layer = Layer(colour, np.ones((40, 56), np.float32), 3.0)
    soft = soften(np.random.default_rng(1), layer, Domain(soft_content=1.0, soft_sigma=(2.0, 2.0)))
    assert np.allclose(soft.colour, gaussian_filter(colour, (2.0, 2.0, 0.0), mode="reflect"), atol=1e-5)
    assert soft.alpha is layer.alpha and soft.depth_m == 3.0
    assert soften(np.random.default_rng(1), layer, Domain(soft_content=0.0)) is layer
    detail = lambda img: float(np.abs(np.diff(img, axis=1)).mean())
    for i in range(6):
        plain = sample_scene(scene_rng(5, "train", i), 96, 64, 8.0, domain=Domain(soft_content=0.0))
        smooth = sample_scene(scene_rng(5, "train", i), 96, 64, 8.0, domain=Domain(soft_content=1.0))
        assert smooth.camera == plain.camera and len(smooth.layers) == len(plain.layers)
        for a, b in zip(plain.layers, smooth.layers):
            assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.depth_m, b.depth_m)
            assert detail(b.colour) < detail(a.colour)
    with pytest.raises(SynthesisError, match="soft_content"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(soft_content=2.0))
    with pytest.raises(SynthesisError, match="test_soft_content: a fraction of layers in"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(test_soft_content=-0.1))


def test_test_scenes_draw_their_own_soft_fraction():
    """With test_soft_content set, test scenes are exactly those of a domain drawing that fraction everywhere, and
    train and val scenes those of soft_content; None leaves the test split at soft_content."""
    def images(split, domain):
        return make_scene(5, split, 1, 96, 64, 8.0, domain=domain)[0]
    plain = {split: images(split, Domain(soft_content=0.0, test_soft_content=None)) for split in dpdd.SPLITS}
    smooth = {split: images(split, Domain(soft_content=1.0, test_soft_content=None)) for split in dpdd.SPLITS}
    mixed = {split: images(split, Domain(soft_content=1.0, test_soft_content=0.0)) for split in dpdd.SPLITS}
    for split in dpdd.SPLITS:
        assert not np.array_equal(plain[split]["target"], smooth[split]["target"])
        want = plain[split] if split == "test" else smooth[split]
        assert all(np.array_equal(mixed[split][key], want[key]) for key in want)


def test_target_noise_puts_the_inputs_noise_into_the_target():
    back, front = _scene()
    back = Layer(back.colour, back.alpha, CAM.focus_m)              # the back layer in focus
    args = ([back, front], CAM, Noise(shot=1e-3, read=2e-3))
    _, _, combined, clean = render_views(*args, rng=np.random.default_rng(1))
    _, _, combined2, noisy = render_views(*args, rng=np.random.default_rng(1), target_noise=True)
    assert np.array_equal(combined, combined2)                     # the input does not change
    focus = slice(0, 4), slice(0, 56)                              # the in-focus back layer, away from the front one
    same = np.abs(noisy[focus] - combined[focus])
    assert np.mean(same < 1e-5) > 0.9              # in focus the target is the input (but where a view clipped)
    assert same.mean() < np.abs(clean[focus] - combined[focus]).mean() / 10


def _footprints(image: np.ndarray, columns: list[int], half: int = 14) -> list[tuple[float, float, float]]:
    """(horizontal variance, vertical variance, total) of the light around each point's column."""
    out = []
    for cx in columns:
        patch = image[:, cx - half:cx + half + 1]
        y, x = np.mgrid[0:patch.shape[0], -half:half + 1]
        m = patch.sum()
        my, mx = (patch * y).sum() / m, (patch * x).sum() / m
        out.append((float((patch * (x - mx) ** 2).sum() / m), float((patch * (y - my) ** 2).sum() / m), float(m)))
    return out


def test_a_psf_that_varies_across_the_frame_is_a_cats_eye_at_the_edges_and_round_in_the_middle():
    """Three points behind focus (blur ~10.6 px) at 10%, 50% and 90% of the width. With field=0.35 the
    aperture is cut horizontally at the edges (the points there are 80% the edge PSF's image, 20% the centre's),
    so they spread less across than down, and not in the middle; without it all three are alike. field_tilt
    makes the right view's PSF larger towards the right edge than towards the left."""
    h, w = 41, 201
    cols = [20, 100, 180]
    colour = np.zeros((h, w, 3), np.float32)
    colour[20, cols] = 1.0
    layers = [Layer(colour, np.ones((h, w), np.float32), 50.0)]

    def spreads(shape):
        left, right, combined, _ = render_views(layers, CAM, psf=shape)
        return [_footprints(to_linear(v)[..., 1], cols) for v in (left, right, combined)]

    _, _, plain = spreads(PsfShape(family="soft"))
    _, _, cut = spreads(PsfShape(family="soft", field=0.35))
    assert all(0.95 < vx / vy < 1.05 for vx, vy, _ in plain)
    assert 0.95 < cut[1][0] / cut[1][1] < 1.05                      # the centre keeps the round aperture
    assert cut[0][0] / cut[0][1] < 0.85 and cut[2][0] / cut[2][1] < 0.85
    assert all(total == pytest.approx(1.0, abs=0.02) for _, _, total in cut)   # the blend keeps the light
    _, right, _ = spreads(PsfShape(family="soft", field_tilt=0.3))
    size = [vx + vy for vx, vy, _ in right]
    assert size[0] < size[1] < size[2] and size[2] / size[0] > 1.5


def test_a_varying_psf_on_a_small_object_blurs_as_on_the_whole_frame():
    """The three field PSFs of an object have boxes of different sizes (field_tilt changes the right PSF's
    size); blending them inside the object's own box must give what the same blend gives over the whole frame."""
    from synthesize import _blur_views
    h, w = 48, 120
    rng = np.random.default_rng(0)
    colour = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    alpha[15:25, 50:70] = 1.0
    shape = PsfShape(family="soft", field=0.35, field_tilt=0.5)

    def stack(rows, cols):
        return np.concatenate([colour[rows, cols] * alpha[rows, cols, None], alpha[rows, cols, None]], axis=2)

    box, views = _blur_views(stack, alpha > 0, 9.0, shape, shared=1)
    full_box, full = _blur_views(stack, np.ones((h, w), bool), 9.0, shape, shared=1)
    assert full_box == (slice(0, h), slice(0, w)) and box != full_box
    for view, whole in zip(views, full):
        pasted = np.zeros_like(whole)
        pasted[box] = view
        np.testing.assert_allclose(pasted, whole, atol=1e-6)
        assert whole[box].sum() == pytest.approx(whole.sum(), rel=1e-6)     # nothing blurred outside the box


@pytest.mark.parametrize("shape", [PsfShape(family="soft"), PsfShape(family="soft", chroma=0.1),
                                   PsfShape(family="soft", field=0.35)])
def test_a_layer_with_no_pixel_in_the_frame_blurs_to_nothing(shape):
    """A layer whose every pixel is covered or outside the frame has an empty box, for every kind of PSF (one for
    all colours, one per colour, one per field position); seed 5 at 320x208 once crashed on it."""
    from synthesize import _blur_views
    stack = lambda rows, cols: np.zeros((48, 64, 4), np.float32)[rows, cols]
    assert _blur_views(stack, np.zeros((48, 64), bool), 9.0, shape, shared=1) == (None, [])


def test_demosaicing_samples_the_drawn_bayer_pattern_and_correlates_the_noise(tmp_path):
    """camera_pipeline: a flat colour comes back exact through every pattern and method (a pattern handed to
    OpenCV under the wrong name swaps red and blue); on smooth content it agrees with renderer2's independently
    written Malvar-He-Cutler demosaicing of the same mosaic (test dir); white noise comes out correlated between
    neighbouring pixels. Scenes drawn with demosaic=1 are the demosaic=0 scenes with only the sensor's demosaic
    and bayer set, on every colour scene and no one-channel one."""
    from dp_renderer2 import demosaic_mhc
    from synthesize import BAYER_PATTERNS, DEMOSAIC_METHODS, Sensor, camera_pipeline, mosaic, sample_scene, scene_rng
    colour = np.array([0.8, 0.5, 0.2], np.float32)
    flat = np.broadcast_to(colour, (9, 11, 3)).copy()
    yy, xx = np.mgrid[0:48, 0:64] / 64.0
    smooth = np.stack([0.3 + 0.2 * np.sin(3 * xx), 0.4 + 0.2 * np.cos(4 * yy), 0.2 + 0.3 * xx * yy], -1)
    phases = {"RGGB": 0, "GRBG": 1, "GBRG": 2, "BGGR": 3}             # renderer2's RGGB shifted right, down, both
    for pattern in BAYER_PATTERNS:
        raw = mosaic(flat, pattern)
        assert [raw[0, 0], raw[0, 1], raw[1, 0], raw[1, 1]] == [colour["RGB".index(c)] for c in pattern]
        for method in DEMOSAIC_METHODS:
            sensor = Sensor(demosaic=method, bayer=pattern)
            np.testing.assert_allclose(camera_pipeline(flat, sensor), flat, atol=1e-4)
            ours = camera_pipeline(smooth.astype(np.float32), sensor)
            theirs = demosaic_mhc(smooth, phases[pattern])
            assert np.abs(ours - theirs)[2:-2, 2:-2].max() < 2e-3
    noise = np.random.default_rng(0).normal(0.3, 0.02, (120, 120, 3)).astype(np.float32)
    corr = lambda c: float(np.corrcoef(c[:, 1:].ravel(), c[:, :-1].ravel())[0, 1])
    assert abs(corr(noise[..., 1])) < 0.05
    assert corr(camera_pipeline(noise, Sensor(demosaic="bilinear"))[..., 1]) > 0.3
    grey = []
    for i in range(16):
        plain = sample_scene(scene_rng(5, "train", i), 64, 48, 6.0, domain=Domain(demosaic=0.0))
        raw = sample_scene(scene_rng(5, "train", i), 64, 48, 6.0, domain=Domain(demosaic=1.0))
        assert plain.sensor.demosaic == "" and raw.camera == plain.camera
        for a, b in zip(plain.layers, raw.layers, strict=True):
            assert np.array_equal(a.colour, b.colour) and np.array_equal(a.alpha, b.alpha)
        assert dataclasses.replace(raw.sensor, demosaic="", bayer="RGGB") == plain.sensor
        assert bool(raw.sensor.demosaic) != plain.sensor.grey
        grey += [i] if plain.sensor.grey else []
    assert grey == [4, 10]                                           # both kinds of scene are in the sample
    layers = [Layer(np.random.default_rng(2).random((24, 32, 3)).astype(np.float32), np.ones((24, 32)), 2.0)]
    linear = Sensor(tone="linear")                      # no tone curve and 16 bits: what the pipeline saw, exactly
    plain = render_views(layers, CAM, None, sensor=linear)
    raw = render_views(layers, CAM, None, sensor=dataclasses.replace(linear, demosaic="bilinear", bayer="GBRG"))
    for a, b in zip(plain, raw):                        # left, right, combined and the target alike
        np.testing.assert_array_equal(b, camera_pipeline(a, dataclasses.replace(linear, demosaic="bilinear",
                                                                                bayer="GBRG")))
    srgb8 = Sensor(tone="srgb", bits=8, demosaic="edge-aware", bayer="BGGR")   # demosaiced before tone and bits
    *views, target = render_views(layers, CAM, None, sensor=srgb8)
    for a, b in zip(plain[:3], views):
        np.testing.assert_allclose(b, np.rint(srgb8.encode(camera_pipeline(a, srgb8)) * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(target, srgb8.encode(camera_pipeline(plain[3], srgb8)), atol=1e-6)
    with pytest.raises(SynthesisError, match="demosaic: a fraction of scenes"):
        synthesize(str(tmp_path / "x"), 1, 0, 0, 96, 64, progress=False, domain=Domain(demosaic=1.5))
