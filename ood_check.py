"""Out-of-distribution check for models trained on synthetic dual-pixel data: does the gain over the blurry
input survive on data not made like the training data?

Sixteen test sets, rendered in memory one at a time:

  in-dist    synthesize.py scenes from the training families (TRAIN_FAMILIES below)
  held-out   synthesize.py scenes from families held back from that training (HELD_OUT_FAMILIES): other PSF
             shapes, tone curve, ISO range and bit depths
  all families  synthesize.py scenes with its defaults: every family, the demo's training distribution (and,
             up to blur size and smoothed content, the pretrained files'), so their in-distribution gain
  renderer2  scenes from tests/dp_renderer2.py, a second renderer written independently of synthesize.py
  renderer2 noise-free             the same scenes without their noise: what is left to gain is deblurring
  renderer2 optics, our content    renderer2's PSFs, planes and tones over synthesize.py's content, noise-free:
                                   whether the deblurring travels to other optics when the content does not change
  the same with our PSFs           the same scenes (content, planes, blur, tones, left/right gains) blurred with
                                   synthesize.py's PSFs from the training families: the in-distribution twin of
                                   the set above, so that the two gains differ by the PSFs alone (PAIRS)
  renderer2 small blur             renderer2 scenes with blur of at most SMALL_BLUR_PX, as on phones: nearly
                                   sharp images, where a model that sharpens what is already sharp loses
  renderer2 demosaicked            the renderer2 scenes recorded through a Bayer mosaic and demosaiced by
                                   renderer2's own Malvar-He-Cutler filters, as a camera's raw converter does:
                                   noise correlated between neighbouring pixels, the sharp image demosaiced too
  renderer2, our content           renderer2's scenes with synthesize.py's content in place of renderer2's own,
                                   everything else renderer2's (planes, PSFs, Poisson-Gaussian noise, left/right
                                   gains, tones): its camera without its content, so that renderer2's shortfall can
                                   be split between the two
  renderer2, text                  renderer2's scenes over rendered text (dp_renderer2.text_content), content
                                   that neither synthesize.py nor renderer2's own scenes draw
  renderer2 dark                   the renderer2 scenes two stops dimmer (DARK_EXPOSURE) at the same photon count
                                   at white: darker and noisier for their brightness, as phone raw data stored far
                                   below white and dim scenes are
  in-dist large blur               the in-dist families' DSLR scenes with blur of up to LARGE_BLUR_PX, as the
                                   backgrounds of a photo at DPDD's scale (1680 wide) taken at f/4
  renderer2 optics, our content, large blur    and renderer2's optics over our content, noise-free, likewise
  the same with our PSFs, large blur           and its in-distribution twin
  renderer2 large blur             and renderer2 scenes likewise; the four large-blur sets at twice the other
                                   sets' width and height, so the blur fits the frame

For each set and model (a model trained with flips twice: in one pass and as the self-ensemble over those flips
that test.py and deblur.py use, inference.ensemble_transforms): PSNR of the blurry combined image and of the
model's output against the sharp image, the gain, the gain on in-focus pixels only (blur under 1 px: they must
stay sharp, so it must not be negative) and on clearly defocused pixels (blur of 3 px or more: what
deblurring, not denoising, earns), and the gain by blur size (BANDS, over the set's pooled pixels). The sharp
images are always noise-free, also where the training targets carried noise (Domain.target_noise). On the
noise-free sets in-focus input pixels are nearly exact, so there only the defocused and band gains say
anything.

    python ood_check.py --weights checkpoints/demo/best.keras            # evaluate a dual-pixel model
    python ood_check.py --train                                           # train on the training families first
    python ood_check.py --train --weights W1 --weights W2 --out results/ood
    python ood_check.py --reference --weights checkpoints/demo/best.keras  # what each set's own data teaches
    python ood_check.py --weights W --only "renderer2 large blur" --out ood_large   # some of the sets
    python ood_check.py --weights W --set scales=0 --out results/ood_scales   # as deblur.py runs by default
    python ood_check.py --weights W --only "all families" --only renderer2 --out ood_transfer
    python ood_check.py --weights W --scenes 24 --out ood_quick           # a quick look: 4x faster, shares vaguer
    python ood_check.py --weights W --photos my_test_photos --out ood_photos   # pictures W never saw

Each set has 96 scenes (SHARE_SCENES) by default: a share between two sets (the table "Out of distribution
against in distribution", with its standard error) divides two samples of scenes, and 24 per set left it
uncertain by tens of percent. summary.json keeps each set's per-scene gains (scene_gains) for paired comparisons.
A full check takes minutes per model; an interrupted one keeps each finished set check in --out's partial.json,
and the same command goes on from there (the same weights, settings, scenes and code; anything else starts
afresh).

--photos DIR draws the photographs of the sets made with synthesize.py's content (OUR_CONTENT_SETS) from DIR
instead of scikit-image's six, which every model trained on synthesize.py's defaults has seen: with photographs
held back from training (synthesize.py --photos with others), "all families" is the training distribution on
photographs the model never saw, and the share of the table "Out of distribution against in distribution" is
taken against that (the grey textures and the real-depth motorcycle scenes stay scikit-image's).

The networks run at each set's own size; `--set scales=0` (or N) adds the passes at smaller sizes that test.py and
deblur.py run for images larger than the weights' training frames (inference.pyramid_levels).

--train synthesises the demo's number of training scenes (400) from TRAIN_FAMILIES under ood/ (about 1 min),
trains the demo preset's DPDNet on them (--set overrides apply; --steps sets the budget) and adds it to the
models checked. --reference trains the same recipe on the data of three of the other sets, from other seeds
than the test scenes': 100 renderer2 scenes, 400 synthesize.py scenes of the held-out families, and 400 scenes
of renderer2's planes over our content with our PSFs (the twin set's distribution, noise-free). Each is its
set's yardstick (YARDSTICKS; --train's model is in-dist's), what this network and budget attain when trained on
that very data, and summary.md's table "Share of the attainable gain" divides each model's gain by it. Writes
summary.md and summary.json to --out (default results/ood).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import numpy as np

from config import REPO_DIR, add_config_args, config_from_args, exit_on_error

# The families the check trains on, and the ones it holds back (every other Domain setting at its default).
TRAIN_FAMILIES = {"psf_families": ("butterworth", "ramp"), "tones": ("srgb", "gamma"), "noise_levels": ("low",),
                  "bits": (8, 16)}
HELD_OUT_FAMILIES = {"psf_families": ("soft", "polygon"), "tones": ("linear",), "noise_levels": ("high",),
                     "bits": (10, 12)}
# Every synthetic set and training run here but "all families" (synthesize.py's defaults) draws no smoothed content
# in any split (synthesize.Domain.soft_content, and test_soft_content None: the same) and no demosaiced scene, so
# its scenes, and the checks' gains, stay those of the runs before.
CHECK_DOMAIN = {"soft_content": 0.0, "test_soft_content": None, "demosaic": 0.0}
CHECK_SCALES = 1                  # the networks run at each set's own size (--set scales=0: deblur.py's pyramid)
SEED = 11                         # not the demo's synthesis seed 0
REFERENCE_SEED = 500              # training scenes of the --reference models (renderer2's val scenes: +1)
REFERENCE_SCENES = {"renderer2": 100, "held-out": 400, "planes": 400}   # their training scenes (val: 10)
SHARP_PX = 1.0                    # pixels whose blur diameter is below this count as in focus
BLURRED_PX = 3.0                  # pixels whose blur diameter is at least this count as clearly defocused
BANDS = ((0, 1), (1, 3), (3, 6), (6, 10), (10, 20), (20, math.inf))   # blur diameters (px) of the band table
SMALL_BLUR_PX = 3.0               # the small-blur set's largest blur diameter (phone dual-pixel blur: a few px)
LARGE_BLUR_PX = 40.0              # the large-blur sets' largest blur diameter (a DSLR at f/4 at DPDD's scale)
DARK_EXPOSURE = 0.25              # the dark set's light against renderer2's (two stops)
SET_NAMES = ("in-dist", "held-out", "all families", "renderer2", "renderer2 noise-free",
             "renderer2 optics, our content", "the same with our PSFs", "renderer2 small blur", "renderer2 demosaicked",
             "renderer2, our content", "renderer2, text", "renderer2 dark", "in-dist large blur",
             "renderer2 optics, our content, large blur", "the same with our PSFs, large blur", "renderer2 large blur")
# The sets drawn with synthesize.py's content, whose photographs --photos replaces (the rest: renderer2's own
# textures and text).
OUR_CONTENT_SETS = ("in-dist", "held-out", "all families", "renderer2 optics, our content", "the same with our PSFs",
                    "renderer2, our content", "in-dist large blur", "renderer2 optics, our content, large blur",
                    "the same with our PSFs, large blur")
# Sets that differ only in their PSFs: (renderer2's, ours); the share of the in-distribution twin's gain that a
# model keeps under renderer2's PSFs is the out-of-distribution share of the optics alone.
PAIRS = (("renderer2 optics, our content", "the same with our PSFs"),
         ("renderer2 optics, our content, large blur", "the same with our PSFs, large blur"))
# The model trained on a set's own distribution (--train, --reference): what the recipe attains on that set.
FAMILIES_MODEL = "trained on the training families"
# For models trained on synthesize.py's defaults: renderer2's noisy sets at the check's size against their gain on
# their own distribution, the out-of-distribution share the sim-to-real check is about.
OWN_SET = "all families"
TRANSFER_SETS = ("renderer2", "renderer2, our content", "renderer2, text", "renderer2 small blur", "renderer2 demosaicked",
                 "renderer2 dark")
PARTIAL = "partial.json"           # the results of an interrupted check, in --out until its summary is written
SHARE_SCENES = 96                 # scenes per set below which the summary warns that a share is uncertain
YARDSTICKS = {"in-dist": FAMILIES_MODEL,
              "held-out": "trained on the held-out families (reference)",
              "renderer2": "trained on renderer2 (reference)",
              "the same with our PSFs": "trained on renderer2's planes, our content and PSFs (reference)"}


def synthetic_set(domain, n: int, width: int, height: int, max_blur: float | None = None) -> list[dict]:
    """n scenes from synthesize.py with `domain`, as {left, right, combined, sharp, blur}; noise-free targets; by
    default with synthesize.py's largest blur for the width."""
    import dataclasses
    import synthesize
    domain = dataclasses.replace(domain, target_noise=False)
    out = []
    for i in range(n):
        img, _ = synthesize.make_scene(SEED, "test", i, width, height,
                                       synthesize.default_max_coc(width) if max_blur is None else max_blur,
                                       domain=domain)
        out.append({"left": img["left"], "right": img["right"], "combined": img["source"], "sharp": img["target"],
                    "blur": img["defocus"]})
    return out


def _renderer2():
    """tests/dp_renderer2.py, the independent renderer (it lives with the tests that check it)."""
    tests = os.path.join(REPO_DIR, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import dp_renderer2
    return dp_renderer2


def renderer2_set(n: int, width: int, height: int, noise: bool = True, our_content: bool = False,
                  max_blur: float | None = None, our_psfs: bool = False, demosaic: bool = False,
                  exposure: float = 1.0, text: bool = False, photos: str = "") -> list[dict]:
    """n scenes from the independent renderer in tests/, by default with the same largest blur as synthesize.py;
    without noise, with synthesize.py's content (photographs, textures, dead leaves, patterns; the photographs
    from the folder `photos` if given) or rendered text, with synthesize.py's PSFs (our_psfs), through a Bayer
    mosaic and renderer2's demosaicing, and dimmer (exposure, a factor on the light before the noise) on request."""
    import synthesize
    renderer2 = _renderer2()
    content = (functools.partial(synthesize.random_content, photos=photos) if our_content
               else renderer2.text_content if text else None)
    return renderer2.render_set(n, seed=SEED, h=height, w=width,
                                max_blur=synthesize.default_max_coc(width) if max_blur is None else max_blur,
                                noise=noise, content=content, psfs=our_psfs_for if our_psfs else None,
                                demosaic=demosaic, exposure=exposure)


def our_psfs_for(index: int, seed: int = SEED):
    """Scene `index`'s synthesize.py PSFs for renderer2's planes: a DSLR shape drawn from TRAIN_FAMILIES (one
    colour's: renderer2 blurs the three channels alike), as a function of the signed blur diameter."""
    import dataclasses
    import synthesize
    rng = np.random.default_rng([seed, index, 1])
    shape = synthesize.draw_psf(rng, synthesize.Domain(**TRAIN_FAMILIES), phone=False)
    shape = dataclasses.replace(shape, chroma=0.0)
    return lambda blur: synthesize.dp_kernels(blur, shape)[:2]


def check_domain(families: dict, **extra):
    """The synthesize.Domain of `families` (TRAIN_FAMILIES or HELD_OUT_FAMILIES) as this check draws it."""
    import synthesize
    return synthesize.Domain(**families, **CHECK_DOMAIN, **extra)


def check_sets(n: int, width: int, height: int, only: list[str] | None = None) -> dict[str, list[dict]]:
    """The sixteen sets of the module docstring (or the ones named in `only`), n scenes each."""
    return {name: make() for name, make in set_makers(n, width, height, only).items()}


def set_makers(n: int, width: int, height: int, only: list[str] | None = None, photos: str = "") -> dict:
    """{set name: function that renders it}, so that main holds one set in memory at a time. photos: a folder
    whose photographs the sets drawn with synthesize.py's content (OUR_CONTENT_SETS) use ("": scikit-image's)."""
    import synthesize
    big = (2 * width, 2 * height)
    ours = functools.partial(renderer2_set, our_content=True, photos=photos)
    makers = {
        "in-dist": lambda: synthetic_set(check_domain(TRAIN_FAMILIES, photos=photos), n, width, height),
        "held-out": lambda: synthetic_set(check_domain(HELD_OUT_FAMILIES, photos=photos), n, width, height),
        "all families": lambda: synthetic_set(synthesize.Domain(photos=photos), n, width, height),
        "renderer2": lambda: renderer2_set(n, width, height),
        "renderer2 noise-free": lambda: renderer2_set(n, width, height, noise=False),
        "renderer2 optics, our content": lambda: ours(n, width, height, noise=False),
        "the same with our PSFs": lambda: ours(n, width, height, noise=False, our_psfs=True),
        "renderer2 small blur": lambda: renderer2_set(n, width, height, max_blur=SMALL_BLUR_PX),
        "renderer2 demosaicked": lambda: renderer2_set(n, width, height, demosaic=True),
        "renderer2, our content": lambda: ours(n, width, height),
        "renderer2, text": lambda: renderer2_set(n, width, height, text=True),
        "renderer2 dark": lambda: renderer2_set(n, width, height, exposure=DARK_EXPOSURE),
        "in-dist large blur": lambda: synthetic_set(check_domain(TRAIN_FAMILIES, cameras=("dslr",), photos=photos),
                                                    n, *big, max_blur=LARGE_BLUR_PX),
        "renderer2 optics, our content, large blur": lambda: ours(n, *big, noise=False, max_blur=LARGE_BLUR_PX),
        "the same with our PSFs, large blur": lambda: ours(n, *big, noise=False, max_blur=LARGE_BLUR_PX,
                                                           our_psfs=True),
        "renderer2 large blur": lambda: renderer2_set(n, *big, max_blur=LARGE_BLUR_PX)}
    assert tuple(makers) == SET_NAMES
    return {name: make for name, make in makers.items() if not only or name in only}


def psnr_masked(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    err = ((np.clip(pred, 0, 1) - gt) ** 2)[mask]
    return float("nan") if err.size == 0 else _db(float(err.mean()))


def _db(mse: float) -> float:
    """PSNR of a mean squared error for data range 1, floored at 1e-12 (120 dB) so exact pixels stay finite."""
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(model, cfg, scenes: list[dict]) -> dict:
    """Mean PSNR of input and output, over whole images, over in-focus and over clearly defocused pixels, and
    the gain by blur size."""
    from inference import network_input, predict_image
    from metrics import psnr
    rows, preds = [], []
    for s in scenes:
        pred = predict_image(model, network_input(cfg, s["left"], s["right"], s["combined"]), cfg)
        preds.append(pred)
        sharp, blurred = s["blur"] < SHARP_PX, s["blur"] >= BLURRED_PX
        rows.append([psnr(s["sharp"], s["combined"]), psnr(s["sharp"], pred),
                     psnr_masked(s["sharp"], s["combined"], sharp), psnr_masked(s["sharp"], pred, sharp),
                     psnr_masked(s["sharp"], s["combined"], blurred), psnr_masked(s["sharp"], pred, blurred)])
    a = np.array(rows, dtype=np.float64)
    gains = a[:, 1] - a[:, 0]
    return {"n": len(scenes), "input_psnr": _mean(a[:, 0]), "model_psnr": _mean(a[:, 1]),
            "gain": _mean(a[:, 1]) - _mean(a[:, 0]), "worst_gain": float(np.min(gains)),
            "gain_se": standard_error(gains), "scene_gains": gains.tolist(),
            "blurred_gain_se": standard_error(a[:, 5] - a[:, 4]),
            "sharp_gain": _mean(a[:, 3] - a[:, 2]), "sharp_pixels": float(np.mean(
                [np.mean(s["blur"] < SHARP_PX) for s in scenes])),
            "blurred_gain": _mean(a[:, 5] - a[:, 4]), "blurred_pixels": float(np.mean(
                [np.mean(s["blur"] >= BLURRED_PX) for s in scenes])), "bands": band_gains(scenes, preds)}


def band_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g} px" if math.isfinite(hi) else f">={lo:g} px"


def band_gains(scenes: list[dict], preds: list[np.ndarray]) -> dict:
    """Per blur band: the fraction of the set's pixels in it and the PSNR gain over them, pooled (the squared
    errors of every scene's pixels in the band summed before the ratio, so a band a scene barely has counts
    by its pixels); gain NaN where no pixel falls in the band."""
    out = {}
    for lo, hi in BANDS:
        err_in = err_out = count = 0.0
        for s, pred in zip(scenes, preds):
            band = (s["blur"] >= lo) & (s["blur"] < hi)
            err_in += float(((s["combined"] - s["sharp"]) ** 2)[band].sum())
            err_out += float(((np.clip(pred, 0, 1) - s["sharp"]) ** 2)[band].sum())
            count += float(band.sum())
        values = count * scenes[0]["sharp"].shape[-1]          # squared errors summed: pixels x channels
        gain = _db(err_out / values) - _db(err_in / values) if count else float("nan")
        out[band_label(lo, hi)] = {"pixels": count / sum(s["blur"].size for s in scenes), "gain": gain}
    return out


def _mean(values: np.ndarray) -> float:
    """The mean over the scenes that have a value (a scene without such pixels has NaN); NaN if none has."""
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else float("nan")


def standard_error(values: np.ndarray) -> float:
    """The standard error of _mean(values): how far another draw of as many scenes may move it; NaN under two
    values."""
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")


def train_on_families(cfg, steps: int, progress: bool):
    """Synthesise TRAIN_FAMILIES data, train the demo DPDNet on it; returns the best checkpoint."""
    from demo import SCENES
    return _train_on_synthetic(cfg, TRAIN_FAMILIES, SCENES["full"]["n_train"], SEED, steps, progress)


def train_on_held_out(cfg, steps: int, progress: bool):
    """The held-out set's yardstick: the same recipe on HELD_OUT_FAMILIES data (another seed than the test set's)."""
    cfg = _reference_cfg(cfg, "held_out")
    return _train_on_synthetic(cfg, HELD_OUT_FAMILIES, REFERENCE_SCENES["held-out"], REFERENCE_SEED, steps, progress)


def _train_on_synthetic(cfg, families: dict, n_train: int, seed: int, steps: int, progress: bool):
    import synthesize
    synthesize.synthesize(cfg.resolve_path("dataset_root"), n_train=n_train, n_val=10, n_test=4,
                          width=cfg.working_width, height=cfg.working_height, seed=seed, workers=cfg.data_workers,
                          progress=progress, domain=check_domain(families))
    return _train(cfg, steps, progress)


def train_on_renderer2(cfg, steps: int, max_blur: float, progress: bool, planes: bool = False):
    """Write renderer2 train/val scenes in the DPDD layout, train the same recipe on them; returns the best
    checkpoint. planes: renderer2's planes over our content with our PSFs, noise-free (the distribution of the
    set "the same with our PSFs"); else renderer2's own scenes."""
    from images import write_image
    from synthesize import random_content, scene_paths
    cfg = _reference_cfg(cfg, "renderer2_planes" if planes else "renderer2")
    root = cfg.resolve_path("dataset_root")
    for split, count in (("train", REFERENCE_SCENES["planes" if planes else "renderer2"]), ("val", 10)):
        seed = REFERENCE_SEED + ("train", "val").index(split)
        ours = functools.partial(our_psfs_for, seed=seed)
        extra = dict(noise=False, content=random_content, psfs=ours) if planes else {}
        scenes = _renderer2().render_set(count, seed=seed, h=cfg.working_height, w=cfg.working_width,
                                         max_blur=max_blur, **extra)
        for i, s in enumerate(scenes):
            for key, image in scene_paths(root, split, i).items():
                write_image(image, s[{"source": "combined", "target": "sharp"}.get(key, key)], bits=16)
    return _train(cfg, steps, progress)


def _reference_cfg(cfg, name: str):
    """cfg with its own data, patch store and run folders for the reference model `name`."""
    import dataclasses
    return dataclasses.replace(cfg, dataset_root=f"{cfg.dataset_root}_{name}", patch_dir=f"{cfg.patch_dir}_{name}",
                               run_name=f"ood_{name}")


def _train(cfg, steps: int, progress: bool):
    """Build the patch store and train cfg's run for `steps`, the preset's lr schedule scaled to the budget; a run
    that learnt nothing (train.learnt_nothing: the demo recipe now and then leaves the network at its input) is
    trained once more with the next seed, since a model stuck at its input measures nothing."""
    import dataclasses
    import data_prep
    import train
    data_prep.build_store(cfg, progress=progress)
    epochs = max(1, steps // cfg.steps_per_epoch)
    cfg = dataclasses.replace(cfg, epochs=epochs, lr_decay_every=max(1, round(cfg.lr_decay_every * epochs / cfg.epochs)))
    for attempt in range(2):
        result = train.train(cfg, resume=False, verbose=1 if progress else 2)   # a fresh run: settings may have changed
        if not train.learnt_nothing(result["history"], result["input_val_loss"]) or attempt:
            return result["best"] or result["last"]
        retry = dataclasses.replace(cfg, seed=cfg.seed + 1, run_name=f"{cfg.run_name}_seed{cfg.seed + 1}")
        print(f"{cfg.run_name}: stuck at its input with seed {cfg.seed} (kept in {result['run_dir']}); training it "
              f"again with seed {retry.seed} as {retry.run_name}", flush=True)
        cfg = retry


def load_dual(path: str, cfg):
    """(model, its config) of a dual-pixel checkpoint; WeightsError for anything else."""
    import weights
    model, model_cfg = weights.load_model(path, cfg)
    if model_cfg.input_mode != "dual":
        raise weights.WeightsError(f"{path}: the check is for dual-pixel (DPDNet) models")
    return model, model_cfg


def run_stamp(weights_sha256: str, run_cfg, args) -> dict:
    """What a set's result for one model and inference variant depends on: the weights' bytes, how they run, the
    scenes drawn and the code that renders and checks them. A resumed check reuses a result only where this is
    unchanged."""
    import backends
    from inference import ensemble_transforms
    return {"weights_sha256": weights_sha256, "self_ensemble": len(ensemble_transforms(run_cfg)),
            **{key: getattr(run_cfg, key) for key in ("precision", "scales", "tile", "tile_overlap")},
            "scenes": args.scenes, "size": [args.width, args.height], "seed": SEED, "code_sha256": code_stamp(),
            "photos": photos_stamp(args.photos), **backends.info()}


def photos_stamp(folder: str) -> list:
    """The --photos folder's photographs as [name, bytes, modification time] ([] for scikit-image's): a resumed
    check starts afresh when they change."""
    import synthesize
    if not folder:
        return []
    return [[os.path.basename(p), os.path.getsize(p), os.path.getmtime(p)] for p in synthesize.photo_files(folder)]


def code_stamp(folder: str = REPO_DIR) -> str:
    """SHA-256 over the repository's scripts and the second renderer (names and bytes): after an edit or a pull a
    check starts afresh instead of mixing results of two versions of the code."""
    import glob
    import hashlib
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))) + [os.path.join(folder, "tests", "dp_renderer2.py")]:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, folder).encode() + b"\0" + f.read())
    return digest.hexdigest()


def resumable_results(partial: str, stamps: dict) -> dict:
    """{label: {set: result}}: the results an interrupted check of the same runs (stamps) left in `partial`, and
    an empty dict for every other label."""
    import json
    old = {"stamps": {}, "results": {}}
    if os.path.isfile(partial):
        with open(partial) as f:
            old = json.load(f)
    return {label: dict(old.get("results", {}).get(label, {})) if old.get("stamps", {}).get(label) == stamp else {}
            for label, stamp in stamps.items()}


def run_checks(runs: dict, stamps: dict, makers: dict, partial: str, progress: bool) -> dict:
    """{label: {set: evaluate()}} for every run (label: (model, config)) on every set of `makers`, rendering one set
    at a time. Each finished check is written to `partial` at once, and the ones an interrupted check of the same
    runs (stamps) left there are not redone."""
    from fileio import atomic_write_json
    from tqdm import tqdm
    results = resumable_results(partial, stamps)
    done = sum(name in results[label] for label in runs for name in makers)
    if done:
        print(f"resuming: {done} of {len(makers) * len(runs)} set checks already done in {partial}")
    bar = tqdm(total=len(makers) * len(runs), initial=done, desc="check", unit="run", disable=not progress,
               dynamic_ncols=True)
    for set_name, make in makers.items():
        todo = [label for label in runs if set_name not in results[label]]
        if not todo:
            continue
        t0 = time.time()
        scenes = make()
        tqdm.write(f"{set_name}: rendered {len(scenes)} scenes in {time.time() - t0:.0f} s")
        for label in todo:
            model, run_cfg = runs[label]
            results[label][set_name] = evaluate(model, run_cfg, scenes)
            atomic_write_json(partial, {"stamps": stamps, "results": results})
            tqdm.write(table({label: {set_name: results[label][set_name]}}).split("\n", 2)[2])
            bar.update()
        del scenes
    bar.close()
    return {label: {name: sets[name] for name in makers if name in sets} for label, sets in results.items()}


def inference_variants(name: str, model_cfg) -> dict:
    """{label: config} to evaluate a model with: as it runs by default and, where that is a self-ensemble, also in
    one pass, so that the table shows what the ensemble adds."""
    import dataclasses
    from inference import ensemble_transforms
    n = len(ensemble_transforms(model_cfg))
    if n == 1:
        return {name: model_cfg}
    return {f"{name}, one pass": dataclasses.replace(model_cfg, self_ensemble="off"),
            f"{name}, self-ensemble of {n}": model_cfg}


def table(results: dict) -> str:
    from results_page import markdown_table
    return markdown_table(
        ["model", "set", "n", "input dB", "model dB", "gain dB", "worst gain dB", "in-focus gain dB",
         "defocused gain dB"],
        [[model, name, str(r["n"]), f"{r['input_psnr']:.2f}", f"{r['model_psnr']:.2f}", _signed(r["gain"]),
          _signed(r["worst_gain"]), _signed(r["sharp_gain"]), _signed(r["blurred_gain"])]
         for model, sets in results.items() for name, r in sets.items()])


def _signed(value: float) -> str:
    """A gain for the tables: +1.23, or - where the set has no such pixels (NaN)."""
    return f"{value:+.2f}" if math.isfinite(value) else "-"


def band_table(results: dict) -> str:
    """Gain by blur size, one column per band: 'gain (share of the set's pixels)'."""
    from results_page import markdown_table
    labels = [band_label(lo, hi) for lo, hi in BANDS]
    return markdown_table(
        ["model", "set"] + [f"{b} gain dB (pixels)" for b in labels],
        [[model, name] + [_band_cell(r["bands"][b]) for b in labels]
         for model, sets in results.items() for name, r in sets.items()])


def pair_table(results: dict) -> str:
    """Per model and PAIRS entry: the defocused-pixel gain under our PSFs and under renderer2's on the same
    scenes, and the share kept; empty when no pair was checked (--only)."""
    from results_page import markdown_table
    rows = []
    for model, sets in results.items():
        for theirs, ours in PAIRS:
            if theirs in sets and ours in sets:
                a, b = sets[ours]["blurred_gain"], sets[theirs]["blurred_gain"]
                rows.append([model, theirs, _signed(a), _signed(b), _share(b, a)])
    header = ["model", "set (renderer2's PSFs)", "defocused gain, our PSFs dB", "defocused gain, renderer2's PSFs dB",
              "share kept"]
    return markdown_table(header, rows) if rows else ""


def share_table(results: dict, variants: dict) -> str:
    """Per model and set with a yardstick (YARDSTICKS) among the results: the yardstick's gain and the model's,
    over the whole image and over defocused pixels, and the model's share of each. `variants` maps a result
    label to (model name, inference variant); a model is compared with its yardstick run the same way (one pass
    or self-ensemble) where the yardstick has that variant, else with the yardstick as it runs by default."""
    from results_page import markdown_table
    rows = []
    for label, sets in results.items():
        name, variant = variants[label]
        for set_name, yardstick in YARDSTICKS.items():
            runs = [other for other in results if variants[other][0] == yardstick]
            if yardstick == name or set_name not in sets or not runs:
                continue
            same = [other for other in runs if variants[other][1] == variant]
            ref = results[(same or runs)[-1]][set_name]
            row = [label, set_name]
            for key in ("gain", "blurred_gain"):
                row += [_signed(ref[key]), _signed(sets[set_name][key]), _share(sets[set_name][key], ref[key])]
            rows.append(row)
    header = ["model", "set", "yardstick's gain dB", "model's gain dB", "share", "yardstick's defocused gain dB",
              "model's defocused gain dB", "share"]
    return markdown_table(header, rows) if rows else ""


def transfer_table(results: dict, variants: dict) -> str:
    """Per model (not the check's own --train and --reference models, which train on other data) and per
    TRANSFER_SETS entry among the results: the gain on OWN_SET and on that set, over the whole image and over
    defocused pixels, and the share of the first kept on the second."""
    from results_page import markdown_table
    own_trained = {FAMILIES_MODEL, *YARDSTICKS.values()}
    rows = []
    for label, sets in results.items():
        if variants[label][0] in own_trained or OWN_SET not in sets:
            continue
        own = sets[OWN_SET]
        for name in TRANSFER_SETS:
            if name in sets:
                row = [label, name]
                for key in ("gain", "blurred_gain"):
                    row += [_signed(own[key]), _signed(sets[name][key]), _share_with_error(sets[name], own, key)]
                rows.append(row)
    header = ["model", "set", f"gain on {OWN_SET} dB", "gain on the set dB", "share (± standard error)",
              f"defocused gain on {OWN_SET} dB", "defocused gain on the set dB", "share (± standard error)"]
    return markdown_table(header, rows) if rows else ""


def _share(part: float, whole: float) -> str:
    """A gain as a percentage of a reference gain, or - where the reference gains nothing or either is NaN."""
    return f"{100 * part / whole:.0f}%" if whole > 0 and math.isfinite(part) else "-"


def _share_with_error(part: dict, whole: dict, key: str) -> str:
    """_share of part[key] in whole[key], with its standard error from theirs (key + '_se', independent scenes) by
    the first-order propagation for a ratio where both are known."""
    p, w = part[key], whole[key]
    share = _share(p, w)
    p_se, w_se = part.get(key + "_se", float("nan")), whole.get(key + "_se", float("nan"))
    if share == "-" or not (math.isfinite(p_se) and math.isfinite(w_se)):
        return share
    return f"{share} ± {100 * math.sqrt(p_se ** 2 / w ** 2 + p ** 2 * w_se ** 2 / w ** 4):.0f}%"


def _band_cell(band: dict) -> str:
    share = 100 * band["pixels"]
    share = f"{share:.0f}%" if share >= 0.5 or share == 0 else "<1%"
    return f"{_signed(band['gain'])} ({share})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ") +
                                     f" The sets (--only): {'; '.join(SET_NAMES)}.")
    parser.add_argument("--weights", action="append", default=[], help="a dual-pixel checkpoint to check "
                                                                        "(repeatable)")
    parser.add_argument("--train", action="store_true", help="train the demo DPDNet on TRAIN_FAMILIES first (its "
                                                              "scenes, patches and checkpoints go to ood/ in the "
                                                              "repository: about 1 GB; --set dataset_root=, "
                                                              "patch_dir=, checkpoint_dir= put them elsewhere)")
    parser.add_argument("--reference", action="store_true", help="also train the demo DPDNet on the data of the "
                                                                  "held-out, renderer2 and twin sets: the gain "
                                                                  "attainable on each (into ood/ too, about 1 GB each)")
    parser.add_argument("--steps", type=int, help="--train's and --reference's budget in steps, in whole epochs of "
                                                  "steps_per_epoch (rounded down, at least one; default: the "
                                                  "preset's, epochs x steps_per_epoch: 4,000 for demo)")
    parser.add_argument("--only", action="append", metavar="SET", help="check only this set (repeatable; "
                                                                          "default: all sixteen)")
    parser.add_argument("--scenes", type=int, default=SHARE_SCENES, help=f"test scenes per set (default "
                                                                        f"{SHARE_SCENES}; fewer leave a share "
                                                                        f"between two sets uncertain)")
    parser.add_argument("--width", type=int, default=320, help="test image width (default 320, the demo's)")
    parser.add_argument("--height", type=int, default=208, help="test image height (default 208)")
    parser.add_argument("--photos", default="", metavar="DIR",
                        help="draw the photographs of the sets made with synthesize.py's content (every set but "
                             "renderer2's own textures and text) from DIR instead of scikit-image's six, as "
                             "synthesize.py --photos does: scenes of the training distribution whose pictures a model "
                             "never saw (the grey textures and the real-depth motorcycle scenes stay "
                             "scikit-image's); --train and --reference still train on scikit-image's")
    parser.add_argument("--out", help="where summary.md goes (default results/ood; required with --only, so that a "
                                      "partial check does not replace the full one)")
    parser.add_argument("--no-progress", action="store_true")
    add_config_args(parser, default="demo", default_text="demo")
    args = parser.parse_args(argv)
    args.overrides = [f"{k}={os.path.join(REPO_DIR, v)}" for k, v in (("dataset_root", "ood/data_train"),
                      ("patch_dir", "ood/patches"), ("checkpoint_dir", "ood/checkpoints"))] + \
                     ["run_name=ood_train_families", f"scales={CHECK_SCALES}"] + args.overrides
    cfg = config_from_args(args, verbose=False)
    if not args.weights and not args.train and not args.reference:
        sys.exit("error: nothing to check: give --weights, --train and/or --reference")
    unknown = [name for name in args.only or () if name not in SET_NAMES]
    if unknown:
        sys.exit(f"error: --only: no set named {unknown[0]!r} (the sets: {'; '.join(SET_NAMES)})")
    if args.only and not args.out:
        sys.exit("error: --only checks some sets: give --out, so that their summary does not replace results/ood's")
    args.out = args.out or os.path.join(REPO_DIR, "results", "ood")
    if (args.train or args.reference) and not cfg.steps_per_epoch:
        sys.exit("error: config: steps_per_epoch: --train and --reference need a fixed number of steps per epoch "
                 "(this preset trains one pass per epoch); --set steps_per_epoch=100")
    args.steps = args.steps or cfg.epochs * cfg.steps_per_epoch
    import synthesize
    import weights
    if args.photos:
        try:
            synthesize.photo_files(args.photos)
        except synthesize.SynthesisError as e:
            sys.exit(f"error: {e}")
    from fileio import atomic_write_json, atomic_write_text, json_safe
    partial = os.path.join(args.out, PARTIAL)
    with exit_on_error(OSError, interrupted=f"interrupted: any finished set checks are kept in {partial}; the same "
                                            f"command resumes from them"):
        models = {}
        progress, max_blur = not args.no_progress, synthesize.default_max_coc(cfg.working_width)
        if args.train or args.reference:
            weights.check_tile(cfg, "config")   # the networks it trains have the config's depth
        if args.train:
            models[FAMILIES_MODEL] = train_on_families(cfg, args.steps, progress)
        if args.reference:
            models[YARDSTICKS["held-out"]] = train_on_held_out(cfg, args.steps, progress)
            models[YARDSTICKS["renderer2"]] = train_on_renderer2(cfg, args.steps, max_blur, progress)
            models[YARDSTICKS["the same with our PSFs"]] = train_on_renderer2(cfg, args.steps, max_blur, progress,
                                                                              planes=True)
        for path in args.weights:
            models[os.path.relpath(os.path.abspath(path), REPO_DIR)] = path
        loaded = {name: load_dual(path, cfg) for name, path in models.items()}
        runs, variants, stamps = {}, {}, {}
        for name, (model, model_cfg) in loaded.items():
            sha256 = weights.file_stamp(models[name])["weights_sha256"]
            for label, run_cfg in inference_variants(name, model_cfg).items():
                runs[label], variants[label] = (model, run_cfg), (name, label[len(name):])
                stamps[label] = run_stamp(sha256, run_cfg, args)
        makers = set_makers(args.scenes, args.width, args.height, only=args.only, photos=args.photos)
        results = run_checks(runs, stamps, makers, partial, progress)
    summary = {"train_families": TRAIN_FAMILIES, "held_out_families": HELD_OUT_FAMILIES, "seed": SEED,
               "size": [args.width, args.height], "sharp_px": SHARP_PX, "blurred_px": BLURRED_PX,
               "bands_px": [[lo, hi] for lo, hi in BANDS], "pairs": PAIRS, "yardsticks": YARDSTICKS, "scales": cfg.scales,
               "photos": os.path.abspath(args.photos) if args.photos else "", "results": results}
    atomic_write_json(os.path.join(args.out, "summary.json"), json_safe(summary))
    photos = f"from {os.path.abspath(args.photos)}" if args.photos else "scikit-image's six"
    text = (f"# Out-of-distribution check (ood_check.py)\n\nTraining families: {TRAIN_FAMILIES}\n\n"
            f"Held-out families: {HELD_OUT_FAMILIES}\n\nPhotographs: {photos}\n\n{table(results)}\n\n"
            f"Gains are mean PSNR over the set minus the blurry input's; in-focus gain: PSNR over pixels blurred by "
            f"less than {SHARP_PX:g} px; defocused gain: over pixels blurred by {BLURRED_PX:g} px or more (scenes "
            f"without such pixels left out).\n\n"
            f"## Gain by blur size\n\nPSNR gain over the pixels of each blur band, pooled over the set's scenes; in "
            f"brackets the share of the set's pixels in the band.\n\n{band_table(results)}\n")
    pairs = pair_table(results)
    if pairs:
        text += (f"\n## The PSFs alone\n\nThe same scenes (content, planes, blur, tones, left/right gains, no noise) "
                 f"under synthesize.py's PSFs from the training families and under renderer2's: the gain on pixels "
                 f"blurred by {BLURRED_PX:g} px or more, and the share of it a model keeps under renderer2's PSFs."
                 f"\n\n{pairs}\n")
    transfer = transfer_table(results, variants)
    few = ("" if args.scenes >= SHARE_SCENES
           else f"; on fewer than {SHARE_SCENES} a share is uncertain by tens of percent")
    if transfer:
        text += (f"\n## Out of distribution against in distribution\n\nFor models trained on synthesize.py's "
                 f"defaults (the demo; the pretrained files up to blur size and smoothed content; the rows of a model "
                 f"trained on other data mean nothing): the gain on renderer2's noisy sets at the same size against "
                 f"the gain on {OWN_SET!r}, scenes of the distribution they trained on, and the share of it they "
                 f"keep, with its standard error over the scenes drawn (another training run of the same recipe "
                 f"moves it too). The small-blur set has no defocused pixels. {args.scenes} scenes per set{few}."
                 f"\n\n{transfer}\n")
    shares = share_table(results, variants)
    checked = {name for name, _ in variants.values()}
    if shares:
        text += (f"\n## Share of the attainable gain\n\nEach model's gain on a set against its yardstick's, the same "
                 f"recipe trained on that set's own distribution (--train, --reference): "
                 f"{'; '.join(f'{k}: {v}' for k, v in YARDSTICKS.items() if v in checked)}. On the noise-free twin "
                 f"set only the defocused columns compare deblurring (in-focus input pixels there are nearly exact)."
                 f"\n\n{shares}\n")
    atomic_write_text(os.path.join(args.out, "summary.md"), text)
    if os.path.exists(partial):
        os.remove(partial)
    print("\n" + table(results) + "\n\n" + band_table(results) + ("\n\n" + pairs if pairs else "")
          + ("\n\n" + transfer if transfer else "") + ("\n\n" + shares if shares else ""))
    print(f"\nwrote {os.path.join(args.out, 'summary.md')} and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
