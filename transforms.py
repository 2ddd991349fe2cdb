"""The flips and turns that keep the dual-pixel geometry: train.py augments patches with them (`augment`), and
inference.predict_image averages a model's outputs over them (`self_ensemble`)."""

from __future__ import annotations

import numpy as np

# Per input mode: a horizontal flip mirrors the aperture, so the left and right views trade places (`_swap`);
# 90-degree turns would make the dual-pixel disparity vertical, which a left/right-split sensor never records,
# so they are used for the single (combined) image only.
TRANSFORMS = {
    "dual": ("identity", "hflip_swap", "vflip", "rot180_swap"),
    "single": ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose"),
}
_INVERSE = {"rot90": "rot270", "rot270": "rot90"}   # every other transform undoes itself


def apply(a: np.ndarray, name: str, swap_views: bool = False) -> np.ndarray:
    """One named transform of an (H, W, C) array. swap_views: `a` is a left+right input (6 channels), whose views
    trade places under the `_swap` transforms (each view keeps its own vignetting side and half-disc blur)."""
    if name in ("hflip", "hflip_swap", "rot180", "rot180_swap"):
        a = a[:, ::-1]
    if name in ("vflip", "rot180", "rot180_swap"):
        a = a[::-1]
    if swap_views and name.endswith("_swap"):
        a = np.concatenate([a[..., 3:6], a[..., 0:3]], axis=-1)
    if name == "rot90":
        a = np.rot90(a, 1)
    elif name == "rot270":
        a = np.rot90(a, 3)
    elif name == "transpose":
        a = a.transpose(1, 0, 2)
    elif name == "antitranspose":
        a = np.rot90(a, 2).transpose(1, 0, 2)
    return a


def invert(a: np.ndarray, name: str) -> np.ndarray:
    """Undo transform `name` on a model's output (H, W, 3), back to the orientation of the untransformed input."""
    return apply(a, _INVERSE.get(name, name))
