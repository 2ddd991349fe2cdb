"""The out-of-distribution check: its second renderer is independent but keeps the dual-pixel geometry, its
held-out families really differ from the training ones, and ood_check.py reports a model's gains per set."""

import argparse
import json
import math
import os
import re

import cv2
import numpy as np
import pytest

import ood_check
from dp_renderer2 import aperture_psfs, bayer_masks, demosaic_mhc, render_scene
from evalkit import save_checkpoint, tiny_model


def _cx(k):
    x = np.arange(k.shape[1]) - k.shape[1] // 2
    return float((k.sum(axis=0) * x).sum())


def test_renderer2_psfs_follow_the_dpdd_sign_convention():
    rng = np.random.default_rng(0)
    for blades in (0, 6):
        for d in (3.0, 10.0):
            left, right = aperture_psfs(d, rng, blades)
            assert left.sum() == pytest.approx(1) and right.sum() == pytest.approx(1)
            assert _cx(left) < -d / 8 and _cx(right) > d / 8                  # behind focus: left view shifted left
            front_l, front_r = aperture_psfs(-d, rng, blades)
            assert _cx(front_l) > d / 8 and _cx(front_r) < -d / 8


def test_renderer2_planes_are_in_depth_order():
    """Back to front, the signed blur falls (a nearer plane is never blurred as if farther than a farther one),
    exactly one plane is in focus, and every size stays within max_blur; over many scenes the in-focus plane
    is sometimes the background, sometimes the front."""
    focus_at = set()
    for i in range(40):
        blurs = render_scene(np.random.default_rng([7, i]), 16, 24, max_blur=8.0)["desc"]["blurs"]
        assert all(a > b for a, b in zip(blurs, blurs[1:])), blurs
        assert blurs.count(0.0) == 1 and max(abs(b) for b in blurs) <= 8.0
        focus_at.add("back" if blurs[0] == 0 else "front" if blurs[-1] == 0 else "middle")
    assert focus_at == {"back", "front", "middle"}


def test_renderer2_scene_has_a_sharp_surface_and_blur_elsewhere():
    s = render_scene(np.random.default_rng(3), 64, 96, max_blur=8.0)
    assert {k: s[k].shape for k in ("left", "right", "combined", "sharp")} == {k: (64, 96, 3) for k in
                                                                              ("left", "right", "combined", "sharp")}
    sharp = s["blur"] < 1
    assert sharp.any() and (~sharp).any()
    assert all(0 <= s[k].min() and s[k].max() <= 1 for k in ("left", "right", "combined", "sharp"))


def test_renderer2_without_noise_renders_the_same_scene_clean():
    """noise=False keeps every draw of the scene (sharp image, blur map, planes, PSFs) and drops only the noise:
    on in-focus pixels far from any blurred plane, the linear combined image is then exactly the sharp one times
    the left/right gains' mean, (sqrt(r) + 1 / sqrt(r)) / 2."""
    noisy = render_scene(np.random.default_rng(5), 64, 96, max_blur=8.0, tone="linear")
    clean = render_scene(np.random.default_rng(5), 64, 96, max_blur=8.0, tone="linear", noise=False)
    np.testing.assert_array_equal(clean["sharp"], noisy["sharp"])
    np.testing.assert_array_equal(clean["blur"], noisy["blur"])
    assert clean["desc"]["blurs"] == noisy["desc"]["blurs"] and clean["desc"]["photons"] is None
    assert np.abs(noisy["combined"] - clean["combined"]).mean() > 1e-3
    r = clean["desc"]["lr_ratio"]
    far_from_blur = cv2.erode((clean["blur"] == 0).astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
    assert far_from_blur.sum() > 100
    expected = clean["sharp"] * (np.sqrt(r) + 1 / np.sqrt(r)) / 2
    np.testing.assert_allclose(clean["combined"][far_from_blur], np.clip(expected, 0, 1)[far_from_blur], atol=1e-5)


def test_renderer2_exposure_dims_the_same_scene_before_its_noise():
    """exposure=0.25 keeps every draw of the scene and scales its light, the sharp image's too: noise-free and
    linear, every image is the plain one times 0.25 (the combined one below the clip); with noise, the dark views'
    noise against their brightness is about twice the plain ones' (Poisson: sqrt(1 / 0.25)) or more (read noise)."""
    plain = render_scene(np.random.default_rng(5), 64, 96, max_blur=8.0, tone="linear", noise=False)
    dark = render_scene(np.random.default_rng(5), 64, 96, max_blur=8.0, tone="linear", noise=False, exposure=0.25)
    assert dark["desc"] == plain["desc"]
    np.testing.assert_array_equal(dark["blur"], plain["blur"])
    for key in ("sharp", "left", "right", "combined"):
        unclipped = plain[key] < 1
        np.testing.assert_allclose(dark[key][unclipped], 0.25 * plain[key][unclipped], atol=1e-6)

    def relative_noise(exposure):
        a, b = (render_scene(np.random.default_rng(5), 64, 96, max_blur=8.0, tone="linear", noise=noise,
                             exposure=exposure) for noise in (True, False))
        return np.std(a["left"] - b["left"]) / b["left"].mean()
    assert 2.0 < relative_noise(0.25) / relative_noise(1.0) < 4.0


def test_renderer2_demosaicing_is_exact_on_flat_colour_and_ramps_and_keeps_the_scene():
    """Malvar-He-Cutler reproduces any linear ramp exactly away from the frame's edges (its filters are gradient
    corrected) and a flat colour everywhere, whichever of the four Bayer phases; each phase holds one red, two
    green and one blue site per 2x2 block; a single red photosite spreads by the paper's coefficients.
    demosaic=True renders the same scene (planes, blur map) and its noise-free sharp image is the plain one's
    through the mosaic of the drawn phase."""
    yy, xx = np.mgrid[0:16, 0:18] / 40.0
    ramp = np.stack([0.1 + xx, 0.2 + yy, 0.05 + xx + 0.5 * yy], -1)
    for phase in range(4):
        m = bayer_masks(16, 18, phase)
        assert (m["r"].sum(), m["g"].sum(), m["b"].sum()) == (72, 144, 72)
        assert not (m["r"] & m["g"]).any() and not (m["b"] & m["g"]).any() and (m["r"] | m["g"] | m["b"]).all()
        np.testing.assert_allclose(demosaic_mhc(ramp, phase)[2:-2, 2:-2], ramp[2:-2, 2:-2], atol=1e-12)
        np.testing.assert_allclose(demosaic_mhc(np.full((9, 7, 3), [0.8, 0.5, 0.2]), phase),
                                   np.full((9, 7, 3), [0.8, 0.5, 0.2]), atol=1e-12)
    # one red photosite of 1 on a 0.5 background (phase 0: red at even rows and columns), so no tap is clipped:
    # the paper's coefficients, x 1/8, each times the impulse's 0.5 above the background
    img = np.full((11, 11, 3), 0.5)
    img[4, 4, 0] = 1.0
    out = demosaic_mhc(img, 0) - 0.5
    tap = lambda k: pytest.approx(0.5 * k / 8, abs=1e-12)
    assert out[4, 4, 1] == tap(4) and out[4, 6, 1] == tap(-1)        # green at the red site and at the next red one
    assert out[4, 5, 0] == tap(4) and out[3, 4, 0] == tap(4)         # red at green sites in its row and column
    assert out[3, 3, 0] == tap(2)                                     # red at a blue site
    assert out[4, 4, 2] == tap(6) and out[4, 6, 2] == tap(-1.5)       # blue at red sites
    assert out[4, 5, 1] == tap(0) and out[4, 6, 0] == tap(0)          # a site keeps its own colour
    plain = render_scene(np.random.default_rng(5), 48, 64, max_blur=6.0, tone="linear", noise=False)
    raw = render_scene(np.random.default_rng(5), 48, 64, max_blur=6.0, tone="linear", noise=False, demosaic=True)
    assert raw["desc"]["blurs"] == plain["desc"]["blurs"] and plain["desc"]["bayer_phase"] is None
    np.testing.assert_array_equal(raw["blur"], plain["blur"])
    np.testing.assert_allclose(raw["sharp"], demosaic_mhc(plain["sharp"].astype(np.float64),
                                                          raw["desc"]["bayer_phase"]), atol=1e-6)
    assert np.abs(raw["sharp"] - plain["sharp"]).max() > 1e-3          # the textures' detail is not all smooth


def test_renderer2_takes_other_content():
    """content replaces the renderer's own textures: with a flat grey source every plane is the same grey."""
    s = render_scene(np.random.default_rng(5), 48, 64, max_blur=6.0, tone="linear", noise=False,
                     content=lambda rng, h, w: np.full((h, w, 3), 0.5, np.float32))
    np.testing.assert_allclose(s["sharp"], 0.5 ** 2.2, rtol=1e-5)


def test_the_same_scenes_with_our_psfs_differ_only_where_the_psfs_blur():
    """The in-distribution twin of "renderer2 optics, our content": the same sharp images, blur maps and draws,
    the same in-focus pixels away from any blurred plane, other pixels wherever a plane is blurred."""
    theirs = ood_check.renderer2_set(3, 96, 64, noise=False, our_content=True, max_blur=8.0)
    ours = ood_check.renderer2_set(3, 96, 64, noise=False, our_content=True, max_blur=8.0, our_psfs=True)
    for a, b in zip(theirs, ours):
        np.testing.assert_array_equal(a["sharp"], b["sharp"])
        np.testing.assert_array_equal(a["blur"], b["blur"])
        assert a["desc"] == b["desc"]
        far = cv2.erode((a["blur"] == 0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
        np.testing.assert_allclose(a["combined"][far], b["combined"][far], atol=1e-5)
        blurred = a["blur"] >= 3
        assert blurred.any() and np.abs(a["combined"] - b["combined"])[blurred].mean() > 1e-3
    from synthesize import centroid_x
    for blur in (6.0, 11.0, -6.0):            # DPDD's convention: behind focus the left view's PSF lies left
        left, right = ood_check.our_psfs_for(0)(blur)
        assert np.sign(centroid_x(left)) == -np.sign(blur) == -np.sign(centroid_x(right))


def test_renderer2_with_our_content_is_its_noise_free_twin_plus_renderer2s_noise():
    """"renderer2, our content" is "renderer2 optics, our content" (the same planes, blur, sharp images and
    draws) with renderer2's Poisson-Gaussian noise added: on linear scenes the views' difference from the
    noise-free ones has, per pixel, the variance of the photon count's Poisson noise plus the read noise,
    so its content is ours and its noise renderer2's."""
    noisy = ood_check.renderer2_set(6, 96, 64, our_content=True, max_blur=8.0)
    clean = ood_check.renderer2_set(6, 96, 64, noise=False, our_content=True, max_blur=8.0)
    linear = 0
    for a, b in zip(noisy, clean):
        np.testing.assert_array_equal(a["sharp"], b["sharp"])
        np.testing.assert_array_equal(a["blur"], b["blur"])
        assert {k: v for k, v in a["desc"].items() if k != "photons"} == {k: v for k, v in b["desc"].items()
                                                                        if k != "photons"}
        if a["desc"]["tone"] != "linear":
            continue
        linear += 1
        photons = a["desc"]["photons"]
        signal = np.clip(b["left"], 0.02, 0.98)            # away from the clip at 0 and 1
        z = (a["left"] - b["left"]) / np.sqrt(signal / photons + 0.002 ** 2)
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert linear >= 1


def test_renderer2_text_is_lines_of_text_in_two_colours():
    """text_content: one background and one ink colour; five or more lines of strokes from top to bottom (rows
    with ink alternate with empty ones), ink on 5-50% of the pixels; the same generator, the same page."""
    from dp_renderer2 import text_content
    for i in range(4):
        page = text_content(np.random.default_rng(i), 208, 320)
        assert page.shape == (208, 320, 3) and page.dtype == np.float32
        bg = page[0, -1]
        far = np.abs(page - bg).max(axis=2)
        ink_px = far > 0.5 * far.max()
        ink = page[ink_px].mean(axis=0)
        # every pixel lies on the segment from background to ink (anti-aliasing blends only the two)
        t = ((page - bg) @ (ink - bg)) / ((ink - bg) @ (ink - bg))
        np.testing.assert_allclose(page, bg + t[..., None] * (ink - bg), atol=0.02)
        rows = ink_px.any(axis=1)
        starts = np.count_nonzero(rows[1:] & ~rows[:-1]) + int(rows[0])
        assert starts >= 5 and 0.05 < ink_px.mean() < 0.5, (starts, ink_px.mean())
        np.testing.assert_array_equal(page, text_content(np.random.default_rng(i), 208, 320))
    sets = ood_check.check_sets(2, 96, 64, only=["renderer2, text"])
    assert all(s["sharp"].std() > 0.05 for s in sets["renderer2, text"])


def test_pair_table_gives_the_share_of_the_twins_gain_kept():
    """Defocused gains of 2.0 dB under our PSFs and 0.5 under renderer2's: 25% kept; a twin without a gain has no
    share."""
    r = lambda g: {"blurred_gain": g}
    (small, large), (ours_small, ours_large) = zip(*ood_check.PAIRS)
    text = ood_check.pair_table({"m": {small: r(0.5), ours_small: r(2.0), large: r(0.3), ours_large: r(-0.1)}})
    assert f"| m | {small} | +2.00 | +0.50 | 25% |" in text
    assert f"| m | {large} | -0.10 | +0.30 | - |" in text


def test_band_gains_pool_the_squared_errors_of_each_band():
    """Two 4x4 scenes, sharp all zero. Scene A: 8 pixels blurred 2 px, input error 0.1, output error 0.05; scene
    B: 4 pixels blurred 7 px with input error 0.2 and output 0.1, 4 blurred 2 px with input error 0.1 and
    output 0.2. Pooled over the 1-3 px band: input MSE 0.01, output (8 * 0.0025 + 4 * 0.04) / 12 = 0.015, gain
    -1.76 dB (the mean of the scenes' own gains would be 0 dB, their pixel-weighted mean +2.01); 6-10 px:
    6.02 dB; in focus (the other 8 pixels of A, 8 of B, all exact): both zero, gain 0; no pixel of 3-6 px."""
    def scene(blur_vals, err_in, err_out):
        blur = np.array(blur_vals, np.float32).reshape(4, 4)
        e_in = np.array(err_in, np.float32).reshape(4, 4, 1).repeat(3, axis=2)
        e_out = np.array(err_out, np.float32).reshape(4, 4, 1).repeat(3, axis=2)
        return {"blur": blur, "sharp": np.zeros((4, 4, 3), np.float32), "combined": e_in}, e_out
    a, pa = scene([2] * 8 + [0] * 8, [0.1] * 8 + [0] * 8, [0.05] * 8 + [0] * 8)
    b, pb = scene([7] * 4 + [2] * 4 + [0] * 8, [0.2] * 4 + [0.1] * 4 + [0] * 8, [0.1] * 4 + [0.2] * 4 + [0] * 8)
    bands = ood_check.band_gains([a, b], [pa, pb])
    assert list(bands) == ["0-1 px", "1-3 px", "3-6 px", "6-10 px", "10-20 px", ">=20 px"]
    assert bands["1-3 px"]["gain"] == pytest.approx(10 * np.log10(0.01 / 0.015), abs=1e-4)
    assert bands["6-10 px"]["gain"] == pytest.approx(10 * np.log10(4), abs=1e-4)
    assert bands["0-1 px"]["gain"] == pytest.approx(0.0)
    assert np.isnan(bands["3-6 px"]["gain"]) and bands["3-6 px"]["pixels"] == 0
    assert [bands[k]["pixels"] for k in ("0-1 px", "1-3 px", "6-10 px")] == [0.5, 12 / 32, 4 / 32]


def test_small_and_large_blur_sets_are_the_renderers_at_phone_and_dslr_blur():
    """At the demo's size the renderer2 set's blur reaches 13.7 px; the small-blur set's stays under 3 px; the
    large-blur sets, at twice the size, reach beyond 20 px (up to 40)."""
    default = ood_check.renderer2_set(3, 320, 208)
    small = ood_check.renderer2_set(3, 320, 208, max_blur=ood_check.SMALL_BLUR_PX)
    assert max(s["blur"].max() for s in default) > 6
    assert max(s["blur"].max() for s in small) < 3 and max(s["blur"].max() for s in small) > 1
    sets = ood_check.check_sets(4, 160, 104)
    for name in ("in-dist large blur", "renderer2 optics, our content, large blur",
                 "the same with our PSFs, large blur", "renderer2 large blur"):
        assert all(s["sharp"].shape == (208, 320, 3) for s in sets[name])
        assert 20 < max(s["blur"].max() for s in sets[name]) <= ood_check.LARGE_BLUR_PX + 0.5, name


def test_held_out_families_share_nothing_with_the_training_ones():
    for key, values in ood_check.HELD_OUT_FAMILIES.items():
        assert not set(values) & set(ood_check.TRAIN_FAMILIES[key]), key


def test_share_table_divides_each_gain_by_its_yardsticks_run_the_same_way():
    """A model's share of a set's yardstick: its one-pass gain against the yardstick's one-pass gain, its
    self-ensemble's against the yardstick's self-ensemble; a model without that variant is compared with the
    yardstick as it runs by default (listed last); no share where the yardstick gains nothing; no row for the
    yardstick itself or for sets without a yardstick in the results."""
    r = lambda g, b: {"gain": g, "blurred_gain": b}
    held = ood_check.YARDSTICKS["held-out"]
    one, ens = ", one pass", ", self-ensemble of 4"
    results = {held + one: {"held-out": r(1.0, 2.0), "in-dist": r(0.5, 0.5)},
               held + ens: {"held-out": r(1.6, 2.5), "in-dist": r(0.6, 0.6)},
               "m" + one: {"held-out": r(0.5, 1.5), "in-dist": r(0.1, 0.1)},
               "m" + ens: {"held-out": r(0.8, 3.0), "in-dist": r(0.2, 0.2)},
               "plain": {"held-out": r(-0.4, 0.5)}}
    variants = {label: (label.split(",")[0], label[len(label.split(",")[0]):]) for label in results}
    text = ood_check.share_table(results, variants)
    assert f"| m{one} | held-out | +1.00 | +0.50 | 50% | +2.00 | +1.50 | 75% |" in text
    assert f"| m{ens} | held-out | +1.60 | +0.80 | 50% | +2.50 | +3.00 | 120% |" in text
    assert "| plain | held-out | +1.60 | -0.40 | -25% | +2.50 | +0.50 | 20% |" in text
    assert text.count("\n") == 2 + 3 - 1                     # header, rule and three rows: no in-dist yardstick
    results[held + one]["held-out"] = r(-0.2, 0.0)
    assert f"| m{one} | held-out | -0.20 | +0.50 | - | +0.00 | +1.50 | - |" in ood_check.share_table(results, variants)


def test_all_families_is_drawn_with_synthesize_defaults_not_the_checks_own_domain():
    """The set the demo's out-of-distribution share is taken against is synthesize.py's default Domain, the demo's
    own training distribution: its scenes are make_scene's with Domain() (noise-free targets), which differ from
    those drawn with the other sets' CHECK_DOMAIN (no smoothed content) and from the training families' on some of
    these 12 scenes, so the comparison would notice either in their place."""
    import synthesize
    n, w, h = 12, 48, 32
    scenes = ood_check.check_sets(n, w, h, only=["all families"])["all families"]
    drawn = lambda domain: [synthesize.make_scene(ood_check.SEED, "test", i, w, h, synthesize.default_max_coc(w),
                                                  domain=domain)[0] for i in range(n)]
    for s, img in zip(scenes, drawn(synthesize.Domain(target_noise=False))):
        assert np.array_equal(s["combined"], img["source"]) and np.array_equal(s["sharp"], img["target"])
    for other in (ood_check.check_domain({}), ood_check.check_domain(ood_check.TRAIN_FAMILIES)):
        assert any(not np.array_equal(s["combined"], img["source"]) for s, img in zip(scenes, drawn(other)))


def test_transfer_table_divides_renderer2_gains_by_the_models_own_distributions():
    """Each model's gain on renderer2's noisy sets as a share of its gain on 'all families', whole image and
    defocused pixels, one row per such set checked; none for the check's own trained models (their training data
    is another), none where 'all families' was not checked, '-' where a set has no defocused pixels."""
    r = lambda g, b: {"gain": g, "blurred_gain": b}
    yardstick = ood_check.YARDSTICKS["renderer2"]
    results = {"m, self-ensemble of 4": {"all families": r(1.25, 1.6), "renderer2": r(1.0, 1.2),
                                         "renderer2 small blur": r(0.5, math.nan), "in-dist": r(2.0, 2.0)},
               ood_check.FAMILIES_MODEL: {"all families": r(1.0, 1.0), "renderer2": r(0.5, 0.5)},
               yardstick + ", one pass": {"all families": r(0.2, 0.2), "renderer2": r(1.5, 1.5)},
               "partial": {"renderer2": r(0.3, 0.3)}}
    variants = {"m, self-ensemble of 4": ("m", ", self-ensemble of 4"),
                ood_check.FAMILIES_MODEL: (ood_check.FAMILIES_MODEL, ""),
                yardstick + ", one pass": (yardstick, ", one pass"), "partial": ("partial", "")}
    text = ood_check.transfer_table(results, variants)
    assert "| m, self-ensemble of 4 | renderer2 | +1.25 | +1.00 | 80% | +1.60 | +1.20 | 75% |" in text
    assert "| m, self-ensemble of 4 | renderer2 small blur | +1.25 | +0.50 | 40% | +1.60 | - | - |" in text
    assert text.count("\n") == 2 + 2 - 1                     # header, rule and the two rows above
    assert ood_check.transfer_table({"partial": results["partial"]}, variants) == ""
    errors = {"e": {"all families": {"gain": 2.0, "gain_se": 0.1, "blurred_gain": 2.0, "blurred_gain_se": 0.2},
                    "renderer2": {"gain": 1.0, "gain_se": 0.1, "blurred_gain": 0.0, "blurred_gain_se": 0.2}}}
    # 1/2 = 50%; standard error sqrt(0.1^2 / 2^2 + 1^2 * 0.1^2 / 2^4) = 0.0559; for 0/2: sqrt(0.2^2 / 2^2) = 0.1
    assert "| e | renderer2 | +2.00 | +1.00 | 50% ± 6% | +2.00 | +0.00 | 0% ± 10% |" in \
        ood_check.transfer_table(errors, {"e": ("e", "")})


def test_standard_error_is_over_the_scenes_that_have_a_value():
    """std (n - 1) / sqrt(n) by hand: [1, 2, 3, 6] has deviations -2, -1, 0, 3, so sqrt(14 / 3) / 2; a scene
    without such pixels (NaN) is left out; one value has none."""
    assert ood_check.standard_error(np.array([1.0, 2.0, 3.0, 6.0])) == pytest.approx(math.sqrt(14 / 3) / 2)
    assert ood_check.standard_error(np.array([1.0, np.nan, 3.0])) == pytest.approx(1.0)
    assert math.isnan(ood_check.standard_error(np.array([2.0, np.nan])))


def test_a_model_stuck_at_its_input_is_trained_again_with_the_next_seed(monkeypatch):
    """A yardstick that learnt nothing measures nothing: _train runs it once more with seed + 1, under its own run
    name so that the stuck run is kept, and returns that run's checkpoint; a second stuck run is returned as it is
    (train.py has warned)."""
    import data_prep
    import train
    from config import make_config
    seeds, names = [], []

    def fake_train(cfg, resume, verbose):
        seeds.append(cfg.seed)
        names.append(cfg.run_name)
        stuck = len(seeds) < stuck_runs + 1
        return {"history": [{"val_loss": 0.995 if stuck else 0.5}], "input_val_loss": 1.0,
                "best": f"best{len(seeds)}.keras", "last": "last.keras", "run_dir": cfg.checkpoint_folder()}
    monkeypatch.setattr(data_prep, "build_store", lambda cfg, progress: None)
    monkeypatch.setattr(train, "train", fake_train)
    cfg = make_config("demo", {"seed": 4})
    stuck_runs = 1
    assert ood_check._train(cfg, 200, False) == "best2.keras" and seeds == [4, 5]
    assert names == [cfg.run_name, f"{cfg.run_name}_seed5"]
    seeds.clear()
    stuck_runs = 0
    assert ood_check._train(cfg, 200, False) == "best1.keras" and seeds == [4]
    seeds.clear()
    stuck_runs = 5
    assert ood_check._train(cfg, 200, False) == "best2.keras" and seeds == [4, 5]


def test_ood_check_reports_each_set(tmp_path):
    model, cfg = tiny_model("dual", seed=1)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    assert ood_check.main(["--weights", ckpt, "--scenes", "2", "--width", "64", "--height", "48", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (label, sets), = summary["results"].items()
    assert set(sets) == {"in-dist", "held-out", "all families", "renderer2", "renderer2 noise-free",
                         "renderer2 optics, our content", "the same with our PSFs", "renderer2 small blur",
                         "renderer2 demosaicked", "renderer2, our content", "renderer2, text", "renderer2 dark",
                         "in-dist large blur",
                         "renderer2 optics, our content, large blur",
                         "the same with our PSFs, large blur", "renderer2 large blur"}
    for r in sets.values():
        assert r["n"] == 2 and 10 < r["input_psnr"] < 90 and np.isfinite(r["gain"])
        assert r["gain"] == pytest.approx(r["model_psnr"] - r["input_psnr"])
        assert len(r["scene_gains"]) == 2 and np.mean(r["scene_gains"]) == pytest.approx(r["gain"])
        assert r["gain_se"] == pytest.approx(abs(r["scene_gains"][0] - r["scene_gains"][1]) / 2)
        assert 0 <= r["blurred_pixels"] <= 1 and "blurred_gain" in r
        assert sum(b["pixels"] for b in r["bands"].values()) == pytest.approx(1.0)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| renderer2 |" in text and "| renderer2 noise-free |" in text and "## Gain by blur size" in text
    pairs = text.split("## The PSFs alone")[1]
    assert all(f"| {label} | {theirs} |" in pairs for theirs, _ in ood_check.PAIRS)
    transfer = text.split("## Out of distribution against in distribution")[1].split("\n## ")[0]
    assert "2 scenes per set; on fewer than 96 a share is uncertain" in transfer
    own, r2 = sets["all families"]["gain"], sets["renderer2"]["gain"]
    assert f"| {label} | renderer2 | {own:+.2f} | {r2:+.2f} |" in transfer
    assert transfer.count(f"| {label} |") == len(ood_check.TRANSFER_SETS)


def test_an_interrupted_check_resumes_from_its_finished_sets_and_only_for_the_same_runs(tmp_path, monkeypatch):
    """Ctrl-C keeps each finished (set, model) check in partial.json; the same command then checks only the rest and
    writes the summary an uninterrupted run writes; a run with other scenes, or after the code changed, reuses
    nothing."""
    model, cfg = tiny_model("dual", seed=1)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    argv = ["--weights", ckpt, "--scenes", "1", "--width", "64", "--height", "48", "--no-progress",
            "--only", "in-dist", "--only", "held-out", "--only", "renderer2"]
    evaluate, calls, interrupt_at = ood_check.evaluate, [], [0]

    def counted(*args):
        calls.append(1)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return evaluate(*args)
    monkeypatch.setattr(ood_check, "evaluate", counted)
    assert ood_check.main(argv + ["--out", str(tmp_path / "whole")]) == 0
    total, whole = len(calls), json.loads((tmp_path / "whole" / "summary.json").read_text())["results"]
    assert total == 3 * len(whole) and not (tmp_path / "whole" / ood_check.PARTIAL).exists()

    two_scenes = argv[:3] + ["2"] + argv[4:]
    assert ood_check.main(two_scenes + ["--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["results"]

    out, code = tmp_path / "out", ood_check.code_stamp()
    for rerun, edited, expected, fresh in ((argv, code, total - 2, whole), (two_scenes, code, total, two),
                                           (argv, "edited", total, whole)):
        monkeypatch.setattr(ood_check, "code_stamp", lambda: code)
        calls.clear()
        interrupt_at[0] = 3
        (out / "summary.json").unlink(missing_ok=True)
        with pytest.raises(SystemExit) as stop:
            ood_check.main(argv + ["--out", str(out)])
        assert stop.value.code == 130 and not (out / "summary.json").exists()
        kept = json.loads((out / ood_check.PARTIAL).read_text())["results"]
        assert sum(len(sets) for sets in kept.values()) == 2
        monkeypatch.setattr(ood_check, "code_stamp", lambda edited=edited: edited)
        calls.clear()
        interrupt_at[0] = 0
        assert ood_check.main(rerun + ["--out", str(out)]) == 0
        assert len(calls) == expected and not (out / ood_check.PARTIAL).exists()
        assert json.loads((out / "summary.json").read_text())["results"] == fresh


def test_the_code_stamp_changes_with_any_script_and_the_second_renderer_only(tmp_path):
    (tmp_path / "tests").mkdir()
    for name, text in (("a.py", "x = 1\n"), ("b.py", "y = 2\n"), ("tests/dp_renderer2.py", "z = 3\n")):
        (tmp_path / name).write_text(text)
    first = ood_check.code_stamp(str(tmp_path))
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "tests" / "test_other.py").write_text("w = 4\n")
    assert ood_check.code_stamp(str(tmp_path)) == first
    stamps = set()
    for name, text in (("b.py", "y = 3\n"), ("tests/dp_renderer2.py", "z = 4\n"), ("c.py", "")):
        (tmp_path / name).write_text(text)
        stamps.add(ood_check.code_stamp(str(tmp_path)))
    assert len(stamps | {first}) == 4


def test_only_checks_the_sets_named_and_stops_on_an_unknown_one(tmp_path):
    model, cfg = tiny_model("dual", seed=1)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    argv = ["--weights", ckpt, "--scenes", "1", "--width", "64", "--height", "48", "--out", str(tmp_path / "out"),
            "--no-progress", "--only", "renderer2 optics, our content", "--only", "the same with our PSFs"]
    assert ood_check.main(argv) == 0
    (sets,) = json.loads((tmp_path / "out" / "summary.json").read_text())["results"].values()
    assert list(sets) == ["renderer2 optics, our content", "the same with our PSFs"]
    assert "## The PSFs alone" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(SystemExit, match="--only: no set named 'renderer2 optics'"):
        ood_check.main(argv + ["--only", "renderer2 optics"])
    with pytest.raises(SystemExit, match="give --out"):
        ood_check.main([a for a in argv if a not in ("--out", str(tmp_path / "out"))])
    single = argv[:argv.index("--only")] + ["--only", "in-dist"]          # no pair: no PSF table, no crash
    single[single.index("--out") + 1] = str(tmp_path / "one")
    assert ood_check.main(single) == 0
    assert "## The PSFs alone" not in (tmp_path / "one" / "summary.md").read_text()


def test_a_model_that_returns_its_input_gains_nothing_anywhere(tmp_path):
    """The residual head with a zero correction returns the mean of the views, which is the combined image up
    to rounding and tone curves (the combined image is toned from the linear sum): whole-image, in-focus,
    defocused and per-band gains must all be within a fifth of a dB of zero, so a mask or a PSNR applied
    differently to the input and the output (dBs apart from band to band) would show. Bands with under 1% of
    the pixels are a handful of pixels and are left out. On the noise-free sets and the DSLR-only set (no
    phone's fourfold shot noise) input pixels are nearly exact, so there the tone curves' difference is worth
    up to 2 dB and those sets are not held to it; nor are the dark set, where the curves are steepest near black
    and the mean of toned noisy views drifts further from the toned mean (in-focus -0.21 dB on these scenes), and
    renderer2 over our content and over text, whose dark shadows and ink do the same (+0.27 and +0.35 dB on these
    three scenes; on the check's 96 at 320x208 the mean of the views gains +0.08 and +0.06 dB there, on all
    families +0.05)."""
    model, cfg = tiny_model("dual", seed=1, head="residual")
    correction = model.get_layer("head_correction")
    correction.bias.assign(np.zeros(correction.bias.shape, np.float32))
    assert not np.any(correction.kernel.numpy())
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    assert ood_check.main(["--weights", ckpt, "--scenes", "3", "--width", "64", "--height", "48",
                           "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    (sets,) = json.loads((tmp_path / "out" / "summary.json").read_text())["results"].values()
    not_held = {"renderer2 noise-free", "renderer2 optics, our content", "the same with our PSFs",
                "renderer2 optics, our content, large blur", "the same with our PSFs, large blur",
                "in-dist large blur", "renderer2 dark", "renderer2, our content", "renderer2, text"}
    assert not_held < set(sets)
    held = 0
    for name, r in sets.items():
        if name in not_held:
            continue
        gains = [r["gain"], r["sharp_gain"], r["blurred_gain"]] + \
                [b["gain"] for b in r["bands"].values() if b["pixels"] >= 0.01]
        gains = [g for g in gains if g != "nan"]
        held += len(gains)
        assert max(abs(g) for g in gains) < 0.2, (name, gains)
    assert held == 6 * 4 + 6        # six small sets: 2 means, 2 bands; renderer2 large blur: 3 means, 3 bands


def test_reference_models_train_on_each_sets_distribution_other_than_the_test_scenes(tmp_path, monkeypatch):
    """--reference writes the train and val scenes of its three yardsticks in the DPDD layout (renderer2's own
    scenes, synthesize.py's held-out families, renderer2's planes over our content with our PSFs), from other
    seeds than the test sets', trains on each and reports each as one more model, in one pass and as the
    self-ensemble of the flips it trained with; summary.md divides the models' gains by the yardsticks'."""
    monkeypatch.setattr(ood_check, "REFERENCE_SCENES", {"renderer2": 6, "held-out": 5, "planes": 4})
    paths = {"dataset_root": tmp_path / "data", "patch_dir": tmp_path / "patches", "checkpoint_dir": tmp_path / "ck"}
    sets = [f"{k}={v}" for k, v in paths.items()] + ["working_width=64", "working_height=48", "patch_size=32",
                                                       "base_filters=4", "depth=2", "steps_per_epoch=5"]
    argv = ["--reference", "--steps", "10", "--scenes", "2", "--width", "64", "--height", "48",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert ood_check.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    from images import read_image, to_float
    first = {}
    for name, count in (("renderer2", 6), ("held_out", 5), ("renderer2_planes", 4)):
        root = f"{paths['dataset_root']}_{name}"
        for split, n in (("train", count), ("val", 10)):
            for side in ("c", "l", "r"):
                assert len(os.listdir(os.path.join(root, f"{split}_{side}", "source"))) == n, (name, split, side)
        first[name] = to_float(read_image(os.path.join(root, "train_c", "source", "syn_train_00000_s.png")))
    tests = {"renderer2": ood_check.renderer2_set(1, 64, 48)[0]["combined"],
             "held_out": ood_check.check_sets(1, 64, 48, only=["held-out"])["held-out"][0]["combined"],
             "renderer2_planes": ood_check.check_sets(1, 64, 48, only=["the same with our PSFs"])[
                 "the same with our PSFs"][0]["combined"]}
    for name, test_first in tests.items():
        assert np.abs(first[name] - test_first).max() > 0.1, name
    assert np.abs(first["renderer2"] - first["renderer2_planes"]).max() > 0.1
    import functools
    import synthesize
    from dp_renderer2 import render_set
    seed = ood_check.REFERENCE_SEED             # what each should be: drawn here from the renderers' public calls
    planes = render_set(1, seed=seed, h=48, w=64, max_blur=synthesize.default_max_coc(64), noise=False,
                        content=synthesize.random_content, psfs=functools.partial(ood_check.our_psfs_for, seed=seed))
    held, _ = synthesize.make_scene(seed, "train", 0, 64, 48, synthesize.default_max_coc(64),
                                    domain=synthesize.Domain(**ood_check.HELD_OUT_FAMILIES))
    assert np.abs(first["renderer2_planes"] - planes[0]["combined"]).max() < 1e-4
    assert np.abs(first["held_out"] - held["source"]).max() < 1e-4
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    results = summary["results"]
    refs = [ood_check.YARDSTICKS[k] for k in ("held-out", "renderer2", "the same with our PSFs")]
    assert set(results) == {f"{ref}, {v}" for ref in refs for v in ("one pass", "self-ensemble of 4")}
    assert all(set(r) == set(ood_check.SET_NAMES) for r in results.values())
    shares = (tmp_path / "out" / "summary.md").read_text().split("## Share of the attainable gain")[1]
    label = f"{refs[0]}, one pass"
    mine, yard = results[label]["renderer2"], results[f"{refs[1]}, one pass"]["renderer2"]
    assert f"| {label} | renderer2 | {yard['gain']:+.2f} | {mine['gain']:+.2f} |" in shares
    assert f"| {label} | held-out |" not in shares                      # not against itself


def _one_photo_folder(folder):
    """A folder holding one photograph no scikit-image picture resembles: magenta and green stripes."""
    folder.mkdir()
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :, [0, 2]] = 255
    img[::8, :] = (0, 255, 0)
    cv2.imwrite(str(folder / "stripes.png"), img)
    return str(folder)


def test_photos_replace_the_pictures_of_exactly_the_sets_drawn_with_our_content(tmp_path):
    photos = _one_photo_folder(tmp_path / "photos")
    default = ood_check.set_makers(2, 64, 48)
    mine = ood_check.set_makers(2, 64, 48, photos=photos)
    changed = {name for name in ood_check.SET_NAMES
               if any(not np.array_equal(a["sharp"], b["sharp"]) for a, b in zip(default[name](), mine[name]()))}
    assert changed == set(ood_check.OUR_CONTENT_SETS)


def test_photos_are_checked_recorded_and_part_of_what_a_resumed_check_reuses(tmp_path):
    model, cfg = tiny_model("dual", seed=1)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    photos = _one_photo_folder(tmp_path / "photos")
    argv = ["--weights", ckpt, "--scenes", "1", "--width", "64", "--height", "48", "--only", "all families",
            "--out", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit, match=re.escape(f"error: --photos {tmp_path / 'none'}: not a folder")):
        ood_check.main(argv + ["--photos", str(tmp_path / "none")])
    assert ood_check.main(argv + ["--photos", photos]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["photos"] == photos
    assert f"Photographs: from {photos}\n" in (tmp_path / "out" / "summary.md").read_text()
    args = argparse.Namespace(scenes=1, width=64, height=48, photos=photos)
    before = ood_check.run_stamp("weights", cfg, args)
    cv2.imwrite(os.path.join(photos, "more.png"), np.zeros((60, 80, 3), np.uint8))
    after = ood_check.run_stamp("weights", cfg, args)
    assert len(before["photos"]) == 1 and len(after["photos"]) == 2
    assert {k: v for k, v in after.items() if k != "photos"} == {k: v for k, v in before.items() if k != "photos"}
    default = argparse.Namespace(scenes=1, width=64, height=48, photos="")
    assert ood_check.run_stamp("weights", cfg, default)["photos"] == []
