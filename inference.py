"""Running a model on a whole image of any size: build the network input from the views, pad to a multiple
of 2**depth, predict in one pass or in tiles with blended seams, crop back and clamp to [0, 1]; for weights
trained with augmentation, average over its flips (the self-ensemble); with `scales`, merge passes at several
sizes. test.py (so demo.py), deblur.py and ood_check.py all go through predict_image."""

from __future__ import annotations

import math
import os
import weakref

import cv2
import numpy as np

import transforms
from config import Config
from images import ImageError, crop, pad_to_multiple, to_float


def prefer_low_memory_cpu() -> None:
    """Turn TensorFlow's oneDNN CPU kernels off unless the user chose: they took 4.0 GB instead of 3.0 GB for a
    1680x1120 paper-model pass at the same speed (layout copies). Works only before TensorFlow is imported;
    scripts call it first thing. No effect on GPUs."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def network_input(cfg: Config, left: np.ndarray | None = None, right: np.ndarray | None = None,
                  combined: np.ndarray | None = None, names: tuple[str, ...] = ()) -> np.ndarray:
    """The float32 (H, W, C) input for cfg.input_mode: left+right views (6 ch) or the combined image (3 ch).

    Each image is normalised by its own bit depth (read from its dtype, never assumed). `names` label the
    images in the size-mismatch message (e.g. the file paths).
    """
    if cfg.input_mode == "dual":
        views, labels = [left, right], list(names) or ["left view", "right view"]
        if left is None or right is None:
            raise ImageError("the dual-pixel model needs both the left and the right view")
    else:
        views, labels = [combined], list(names) or ["image"]
        if combined is None:
            raise ImageError("the single-image model needs the combined image")
    shapes = [v.shape[:2] for v in views]
    if len(set(shapes)) > 1:
        raise ImageError(f"{labels[0]} is {shapes[0][1]}x{shapes[0][0]} but {labels[1]} is "
                         f"{shapes[1][1]}x{shapes[1][0]}: the views of a pair must have the same size")
    floats = [v if v.dtype == np.float32 else to_float(v) for v in views]
    return floats[0] if len(floats) == 1 else np.concatenate(floats, axis=-1)


_PREDICT_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its tf.function


def _predict_fn(model):
    """A compiled forward pass, made once per model. Under TensorFlow a tf.function with an unknown-size
    signature: graph mode frees each activation as soon as it is used (Keras' eager functional call keeps all
    of them, several GB at 1680x1120), and one trace serves every image and tile size. Under JAX and PyTorch,
    Keras' own compiled predict step."""
    import keras
    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch
    fn = _PREDICT_FNS.get(model)
    if fn is None:
        import tensorflow as tf
        channels, net = model.inputs[0].shape[-1], weakref.ref(model)  # no strong reference: the model can go
        fn = tf.function(lambda x: net()(x, training=False),
                         input_signature=[tf.TensorSpec((None, None, None, channels), tf.float32)],
                         reduce_retracing=True)
        _PREDICT_FNS[model] = fn
    return fn


def forward(model, x: np.ndarray) -> np.ndarray:
    """One network pass on an (H, W, C) float32 array whose sides the network accepts; (H, W, 3) float32."""
    y = _predict_fn(model)(np.ascontiguousarray(x[None], dtype=np.float32))
    return np.asarray(y[0], dtype=np.float32)


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Start offsets of the fewest tiles of `tile` pixels that cover `length` with neighbours overlapping by at
    least `overlap`: spread evenly (so the overlaps, and the context each pixel keeps, are as large as that
    count allows), the last flush with the end, all aligned to `multiple` so every tile's pooling grid matches
    the whole image's. `length` and `tile` are multiples of `multiple`."""
    if length <= tile:
        return [0]
    max_gap = max(multiple, (tile - overlap) // multiple * multiple)
    for n in range(2, length // multiple + 2):
        starts = [int(i * (length - tile) / (n - 1)) // multiple * multiple for i in range(n)]
        if max(b - a for a, b in zip(starts, starts[1:])) <= max_gap:
            return starts
    return list(range(0, length - tile + 1, multiple))


def blend_weights(starts: list[int], tile: int, overlap: int, length: int) -> list[np.ndarray]:
    """Per-tile 1-D weights along one axis that sum to 1 at every pixel.

    Inside each overlap, a linear ramp (`overlap` pixels wide, at most half the overlap, centred on it) hands
    over from one tile to the next; the pixels nearer a tile's inner edge get weight 0, since they saw the
    least context. The 2-D weight of a tile is the outer product of its two axes' weights.
    """
    weights = [np.ones(min(tile, length), np.float64) for _ in starts]
    for k in range(len(starts) - 1):
        a, b = starts[k + 1], starts[k] + tile        # overlap of tiles k and k+1: [a, b)
        if b <= a:
            continue                                  # tile_overlap 0: tiles just touch
        ramp_len = max(1, min(overlap, (b - a) // 2))
        c0 = a + (b - a - ramp_len) // 2              # blend region [c0, c0 + ramp_len)
        up = (np.arange(ramp_len) + 0.5) / ramp_len   # weight of tile k+1 across the blend region
        left, right = weights[k], weights[k + 1]
        left[c0 - starts[k]: c0 - starts[k] + ramp_len] *= 1 - up
        left[c0 + ramp_len - starts[k]:] = 0
        right[: c0 - starts[k + 1]] = 0
        right[c0 - starts[k + 1]: c0 - starts[k + 1] + ramp_len] *= up
    total = np.zeros(length)
    for s, wt in zip(starts, weights):
        total[s:s + len(wt)] += wt
    if not total.all():
        raise ValueError(f"tiles {starts} of {tile} px leave pixels of a {length} px side uncovered")
    return [(wt / total[s:s + len(wt)]).astype(np.float32) for s, wt in zip(starts, weights)]


def predict_tiled(model, x: np.ndarray, tile: int, overlap: int, multiple: int) -> np.ndarray:
    """Predict an (H, W, C) array whose sides are multiples of `multiple` tile by tile, blending the seams."""
    h, w = x.shape[:2]
    ys, xs = tile_starts(h, tile, overlap, multiple), tile_starts(w, tile, overlap, multiple)
    th, tw = min(tile, h), min(tile, w)
    wy, wx = blend_weights(ys, th, overlap, h), blend_weights(xs, tw, overlap, w)
    out = np.zeros((h, w, 3), np.float32)
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            weight = wy[i][:, None, None] * wx[j][None, :, None]
            if not weight.any():
                continue
            out[y0:y0 + th, x0:x0 + tw] += weight * forward(model, x[y0:y0 + th, x0:x0 + tw])
    return out


def ensemble_transforms(cfg: Config) -> tuple[str, ...]:
    """The transforms predict_image averages the outputs over: all of the input mode's augmentation transforms
    when self_ensemble is on, or auto and the weights were trained with augment (they saw each of them, so each
    is a fair second opinion); otherwise the identity alone."""
    if cfg.self_ensemble == "on" or (cfg.self_ensemble == "auto" and cfg.augment):
        return transforms.TRANSFORMS[cfg.input_mode]
    return ("identity",)


PYRAMID_MIN_SIDE = 32     # the pyramid stops before a level whose shorter side would be below this
MERGE_SIGMA = 2.0         # px at the coarser size: the neighbourhood whose mean correction decides the merge
MERGE_FROM, MERGE_FULL = 0.02, 0.06   # mean absolute correction where merging starts and where it is whole


def predict_image(model, x: np.ndarray, cfg: Config) -> np.ndarray:
    """Deblur one (H, W, C) float32 input of any size: float32 (H, W, 3) in [0, 1]. At each size of the pyramid
    (pyramid_levels: one unless the image is larger than the frames the weights were trained on) the mean of the
    outputs for each transform of ensemble_transforms(cfg), each turned back (one output without the
    self-ensemble)."""
    height, width = x.shape[:2]
    return _predict_pyramid(model, x, cfg, pyramid_sizes(height, width, pyramid_levels(cfg, height, width)))


def pyramid_levels(cfg: Config, height: int, width: int) -> int:
    """How many sizes predict_image runs an image at: cfg.scales, or with 0 (auto) one more for each doubling by
    which its longer side exceeds that of the frames the weights were trained on (cfg.working_width/height, as
    weights.load_model sets them), rounded: blur grows with the frame, so halving the image brings it back to
    sizes the network has seen. Never more than pyramid_sizes allows for the image."""
    asked = cfg.scales or 1 + max(0, round(math.log2(max(height, width) / max(cfg.working_width, cfg.working_height))))
    return len(pyramid_sizes(height, width, asked))


def pyramid_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """The (height, width) of each level predict_image runs for `scales`: the image's own, then each halved
    (rounded down), as many as asked for while the shorter side stays at least PYRAMID_MIN_SIDE."""
    sizes = [(height, width)]
    while len(sizes) < scales and min(sizes[-1]) // 2 >= PYRAMID_MIN_SIDE:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


def _predict_pyramid(model, x: np.ndarray, cfg: Config, sizes: list[tuple[int, int]]) -> np.ndarray:
    """The output at x's own size (sizes[0]) plus, where the output for the input at half that size (sizes[1],
    itself such a pyramid) changes the image much more than this one did, that difference:
    out = full + up(w * (half - down(full))), w rising from 0 to 1 as the difference's local mean goes from
    MERGE_FROM to MERGE_FULL. A network trained on smaller blur meets a big photo's large blur at a size where it
    is small; elsewhere (in-focus detail, noise, the blur it knows) the full-size pass stands."""
    full = _predict_ensemble(model, x, cfg)
    if len(sizes) == 1:
        return full
    half = _predict_pyramid(model, _resize(x, sizes[1]), cfg, sizes[1:])
    change = half - _resize(full, sizes[1])
    local = cv2.GaussianBlur(np.abs(change).mean(axis=2), (0, 0), MERGE_SIGMA)
    weight = np.clip((local - MERGE_FROM) / (MERGE_FULL - MERGE_FROM), 0.0, 1.0)
    return np.clip(full + _resize(change * weight[..., None], sizes[0]), 0.0, 1.0)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 at size (height, width): area-averaged when shrinking, bilinear when enlarging; three
    channels at a time (OpenCV's area resampling takes at most four at factors that are not whole)."""
    mode = cv2.INTER_AREA if size[0] < image.shape[0] else cv2.INTER_LINEAR
    parts = [cv2.resize(image[..., i:i + 3], (size[1], size[0]), interpolation=mode).reshape(size + (-1,))
             for i in range(0, image.shape[2], 3)]
    return np.concatenate(parts, axis=2)


def _predict_ensemble(model, x: np.ndarray, cfg: Config) -> np.ndarray:
    """The mean of the outputs for each transform of ensemble_transforms(cfg), each turned back."""
    names = ensemble_transforms(cfg)
    total = np.zeros(x.shape[:2] + (3,), np.float32)
    for name in names:
        turned = np.ascontiguousarray(transforms.apply(x, name, swap_views=cfg.input_mode == "dual"))
        total += transforms.invert(_predict_once(model, turned, cfg), name)
    return total / len(names)


def _predict_once(model, x: np.ndarray, cfg: Config) -> np.ndarray:
    """One output for x: padded by reflection to a multiple of 2**cfg.depth (nothing changes at 1680x1120), one
    pass, or tiles of cfg.tile pixels overlapping by cfg.tile_overlap when cfg.tile > 0, then cropped back and
    clamped."""
    multiple = 2 ** cfg.depth
    padded, size = pad_to_multiple(x, multiple)
    h, w = padded.shape[:2]
    if cfg.tile and (h > cfg.tile or w > cfg.tile):
        y = predict_tiled(model, padded, cfg.tile, cfg.tile_overlap, multiple)
    else:
        y = forward(model, padded)
    return np.clip(crop(y, size), 0.0, 1.0)
