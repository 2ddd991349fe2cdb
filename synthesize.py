"""Synthetic dual-pixel defocus data in the DPDD layout, made offline: layered scenes with depth, a thin-lens
camera, left/right PSFs and occlusion-aware compositing, with the camera randomised per scene (domain
randomisation: PSF family and aperture, DSLR or phone blur, left/right gain, ISO noise, tone curve, bit depth,
one-channel data, demosaicing, scenes with little or no noise; see Domain, and README, 'Training without DPDD'). The
photographs in the scenes are scikit-image's, or your own with --photos DIR.

    python synthesize.py --out synthetic_dpdd --train 100 --val 10 --test 20 --width 560 --height 368 --seed 0
    python synthesize.py --out syn_a --psf-families butterworth,ramp --tones srgb --noise-levels low   # fewer families
    python synthesize.py --out syn_own --photos ~/photos   # your own sharp photographs as the content
    python synthesize.py --out syn_ph --domain phone_fraction=0.6 --domain phone_blur_px=0.5,4   # any Domain setting

Writes {split}_c/source/NAME.png (blurry combined), {split}_c/target/TARGET.png (all-in-focus),
{split}_l/source/NAME_L.png and {split}_r/source/NAME_R.png (the two views), 16-bit PNG, plus
test_categories.csv (indoor/outdoor by depth range), scenes.csv (camera, PSF family, ISO, tone, bits, demosaicing
and blur per scene) and synthesize.json (the settings, the Domain included). Deterministic for a seed, resumable,
parallel (--workers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass

import cv2
import numpy as np

from config import REPO_DIR, UserError, changed_keys, exit_on_error
from dpdd import SPLITS, split_folders
from fileio import atomic_write_csv, atomic_write_json, is_temporary
from images import PHOTO_EXTENSIONS, peak, read_image, to_float, write_image

FORMAT_VERSION = 3                # bump when the same seed would give different images

# Canon EOS 5D Mark IV (the DPDD camera): 6720 x 4480 pixels of 5.36 um. A synthetic image `width` pixels
# wide shows the full sensor width, so it is downscaled by 6720 / width (DPDD itself: 4x, 1680 wide).
SENSOR_WIDTH_PX = 6720
PITCH_UM = 5.36
FOCAL_MM = (35.0, 85.0)           # log-uniform
F_NUMBER = (1.8, 5.6)             # log-uniform
FOCUS_M = {"indoor": (1.0, 5.0), "outdoor": (1.5, 10.0)}   # log-uniform focus distance; a surface is put there
OUTDOOR_MIN_FAR_M = 10.0          # test_categories rule: farthest depth >= 10 m (or infinity) is outdoor
DEFOCUS_VISIBLE_PX = 2.0          # blur diameter from which defocus counts as visible in the statistics
GAMMA = 2.2                       # content is display-encoded; blur, vignetting and noise act in linear light


class SynthesisError(UserError):
    """A bad argument or a clashing output folder; the message is one line naming it."""


# ----------------------------------------------------------------------------------------------- camera

def coc_pixels(depth_m, focal_mm: float, f_number: float, focus_m: float, pitch_um: float = PITCH_UM,
               downscale: float = 1.0):
    """Signed circle-of-confusion diameter in pixels: c = A*f/(S-f)*(d-S)/d with A = f/N (thin lens).

    Negative in front of the focal plane, 0 on it, positive behind; depth may be np.inf. Divided by the pixel
    pitch and by the downscale factor of the stored image relative to the sensor.
    """
    f = float(focal_mm)
    s = float(focus_m) * 1000.0
    if not (f > 0 and f_number > 0 and s > f and pitch_um > 0 and downscale > 0):
        raise ValueError(f"bad camera: focal {focal_mm} mm, f/{f_number}, focus {focus_m} m")
    d = np.asarray(depth_m, dtype=np.float64) * 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        c_mm = (f / f_number) * f / (s - f) * (1.0 - s / d)   # (d - S) / d, written so d = inf gives 1
    return c_mm * 1000.0 / pitch_um / downscale


@dataclass(frozen=True)
class Camera:
    """A thin-lens DSLR: focal length, f-number, focus distance, pixel pitch and the image's downscale."""
    focal_mm: float
    f_number: float
    focus_m: float
    pitch_um: float = PITCH_UM
    downscale: float = 1.0

    def coc(self, depth_m):
        return coc_pixels(depth_m, self.focal_mm, self.f_number, self.focus_m, self.pitch_um, self.downscale)


# ----------------------------------------------------------------------------------------------- PSFs

PSF_FAMILIES = ("butterworth", "ramp", "soft", "polygon")


@dataclass(frozen=True)
class PsfShape:
    """Shape of the left/right dual-pixel PSFs for one scene (sizes come from the CoC; this is everything else).

    family: butterworth: the shaded half-disc of Abuolaim et al. (ICCV 2021): a Butterworth high-pass
        shading rescaled to [beta, 1] (rim brighter than centre), cut-off at `cutoff` times the radius,
        a linear ramp across the disc, Gaussian window ~ size/`smooth`; right = left mirrored.
      ramp: Punnappurath et al. (ICCP 2020): a flat disc whose brightness rises linearly across each row.
      soft: a centre-bright (apodised) disc split between the views by a soft step of width `split`
        times the radius, blurred by `blur` times the radius (a soft, uneven phone PSF).
      polygon: an aperture of `blades` straight blades turned by `rotation` radians, shaded like `soft`
        (highlights show the blade shape).
    cats_eye: the fraction of the aperture cut off by the lens barrel (0: round; near the frame's corners
        real apertures look like a cat's eye), along direction `cats_angle`.
    right_scale, right_blur: the right PSF's size and extra softness relative to the left (phone halves
        are not exact mirror images). chroma: red blur (1 + chroma), blue (1 - chroma) times the green one
        (longitudinal chromatic aberration).
    field, field_tilt: how the PSF changes across the frame (real PSFs are calibrated per field position, not
        one per lens): at the left and right edges (u = -1, +1; the centre u = 0) the aperture is a cat's eye
        cut by `field` along the horizontal, and the right PSF's size relative to the left's is multiplied by
        (1 + field_tilt * u); see at(). Only these three PSFs are rendered; the images they make are blended
        linearly across the width in between (_blur_views).
    """
    beta: float = 0.15
    order: int = 4
    cutoff: float = 0.8
    smooth: float = 7.0
    family: str = "butterworth"
    blades: int = 0
    rotation: float = 0.0
    split: float = 0.3
    apodize: float = 0.0
    blur: float = 0.0
    cats_eye: float = 0.0
    cats_angle: float = 0.0
    right_scale: float = 1.0
    right_blur: float = 0.0
    chroma: float = 0.0
    field: float = 0.0
    field_tilt: float = 0.0

    def symmetric(self) -> bool:
        """True when the right PSF is exactly the left one mirrored (and all channels share one PSF)."""
        return (self.family in ("butterworth", "ramp") and self.cats_eye == 0 and self.right_scale == 1.0
                and self.right_blur == 0 and self.chroma == 0)

    def varies(self) -> bool:
        """True when the PSF changes across the frame (rendered by blending FIELD_ANCHORS' PSFs)."""
        return self.field > 0 or self.field_tilt != 0

    def at(self, u: float) -> "PsfShape":
        """The PSF of anchor u in FIELD_ANCHORS (-1: the frame's left edge, 0: its centre, +1: its right edge),
        a shape that no longer varies; at the centre the shape itself (its own cat's eye, if any)."""
        if not self.varies():
            return self
        cut = max(self.cats_eye, self.field * abs(u))
        return dataclasses.replace(self, cats_eye=cut, cats_angle=0.0 if cut > self.cats_eye else self.cats_angle,
                                   field=0.0, field_tilt=0.0, right_scale=self.right_scale * (1 + self.field_tilt * u))


FIELD_ANCHORS = (-1.0, 0.0, 1.0)     # field positions whose PSFs are blended (linearly in x) across the frame


def _gauss_smooth(k: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return k
    return cv2.GaussianBlur(k, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)


def _butterworth_left(c: float, shape: PsfShape) -> np.ndarray:
    """The butterworth family's left PSF (unnormalised) for a signed CoC c != 0."""
    radius = abs(c) / 2.0
    half_disc = int(math.ceil(radius + 0.5))
    window = max(1, int(round((2 * half_disc + 1) / shape.smooth)))
    window += 1 - window % 2
    half = half_disc + window // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    r = np.hypot(x, y)
    disc = np.clip(radius + 0.5 - r, 0.0, 1.0)                     # anti-aliased disc of diameter |c|
    if shape.family == "ramp":
        shading = np.ones_like(r)
    else:
        t = (r / (shape.cutoff * radius)) ** (2 * shape.order)
        shading = shape.beta + (1.0 - shape.beta) * t / (1.0 + t)
    ramp = np.clip((1.0 - x / (radius + 0.5)) / 2.0, 0.0, 1.0)    # across the disc: 1 at its left edge, 0 at its right
    left = disc * shading * (ramp if c > 0 else ramp[:, ::-1])     # behind focus: left half; in front: swapped
    if window > 1 and shape.family == "butterworth":
        sigma = 0.3 * ((window - 1) * 0.5 - 1) + 0.8               # OpenCV's default for this window
        left = cv2.GaussianBlur(left, (window, window), sigma, borderType=cv2.BORDER_CONSTANT)
    return left


def _general_half(c: float, shape: PsfShape, side: int, scale: float, extra_blur: float) -> np.ndarray:
    """One view's PSF (unnormalised) for c > 0 of any family: aperture x shading x split, smoothed.
    side -1: the left view (the left part of the aperture), +1: the right view."""
    radius = max(abs(c) / 2.0 * scale, 0.25)
    sigma = (shape.blur + extra_blur) * radius
    half = int(math.ceil(radius + 1.0 + 3.0 * sigma))
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    r = np.hypot(x, y)
    if shape.family == "polygon" and shape.blades >= 3:
        n = shape.blades
        angles = shape.rotation + 2 * np.pi * np.arange(n) / n
        proj = np.max([x * np.cos(a) + y * np.sin(a) for a in angles], axis=0)
        aperture = np.clip(radius * math.cos(math.pi / n) + 0.5 - proj, 0.0, 1.0)
    else:
        aperture = np.clip(radius + 0.5 - r, 0.0, 1.0)
    if shape.cats_eye > 0:
        d = radius * shape.cats_eye            # two discs d apart, centred on the chief ray: a lens-shaped cut
        ox, oy = d * math.cos(shape.cats_angle), d * math.sin(shape.cats_angle)
        aperture = (np.clip(radius + 0.5 - np.hypot(x - ox, y - oy), 0.0, 1.0)
                    * np.clip(radius + 0.5 - np.hypot(x + ox, y + oy), 0.0, 1.0))
    if shape.family in ("butterworth", "ramp"):
        split = np.clip((1.0 + side * x / (radius + 0.5)) / 2.0, 0.0, 1.0)
        if shape.family == "butterworth":
            t = (r / (shape.cutoff * radius)) ** (2 * shape.order)
            aperture = aperture * (shape.beta + (1.0 - shape.beta) * t / (1.0 + t))
    else:
        aperture = aperture * np.exp(-shape.apodize * (r / radius) ** 2)
        split = 1.0 / (1.0 + np.exp(np.clip(-side * x / (shape.split * radius + 0.3), -50, 50)))
    k = aperture * split
    if shape.family == "butterworth":
        sigma = max(sigma, 0.3 * radius / shape.smooth * 2)
    return _gauss_smooth(k, sigma)


def _normalise(k: np.ndarray) -> np.ndarray:
    return (k / k.sum()).astype(np.float32)


@functools.lru_cache(maxsize=2048)
def _view_kernels_cached(c: float, shape: PsfShape, channel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    if abs(c * channel_scale) < 1e-6:
        delta = np.ones((1, 1), np.float32)
        return delta, delta.copy()
    c = c * channel_scale
    if shape.symmetric():
        left = _normalise(_butterworth_left(c, shape))
        return left, np.ascontiguousarray(left[:, ::-1])
    left = _general_half(abs(c), shape, -1, 1.0, 0.0)
    right = _general_half(abs(c), shape, +1, shape.right_scale, shape.right_blur)
    size = max(left.shape[0], right.shape[0])
    left, right = (np.pad(k, (size - k.shape[0]) // 2) for k in (left, right))
    if c < 0:                               # in front of the focal plane the aperture's image is turned over
        left, right = left[::-1, ::-1], right[::-1, ::-1]
    return _normalise(np.ascontiguousarray(left)), _normalise(np.ascontiguousarray(right))


def view_kernels(signed_coc_px: float, shape: PsfShape = PsfShape()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per colour channel (R, G, B) the left and right PSFs (odd square, each summing to 1) for a signed CoC.

    The channels share one PSF unless shape.chroma != 0. Behind the focal plane (c > 0) the left view's PSF
    lies left of centre, in front of it right of centre; c = 0 is a 1x1 delta. A shape that varies across the
    frame gives its PSF at the centre (shape.at(u) for the others).
    """
    c = float(signed_coc_px)
    scales = (1.0 + shape.chroma, 1.0, 1.0 - shape.chroma) if shape.chroma else (1.0, 1.0, 1.0)
    pairs = [_view_kernels_cached(c, shape, s) for s in scales]
    if not shape.chroma:
        return [p[0] for p in pairs], [p[1] for p in pairs]
    size = max(k.shape[0] for p in pairs for k in p)           # one size, so every channel blurs the same box
    pad = lambda k: np.pad(k, (size - k.shape[0]) // 2)
    return [pad(p[0]) for p in pairs], [pad(p[1]) for p in pairs]


def dp_kernels(signed_coc_px: float, shape: PsfShape = PsfShape()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left, right and combined PSFs (point images, odd square, each summing to 1) of the green channel.

    For the butterworth and ramp families on a round aperture the right PSF is the left mirrored
    horizontally; combined = (left + right) / 2. Behind the focal plane (c > 0) the left view sees the left
    half of the aperture, in front of it the right half; c = 0 is a 1x1 delta.
    """
    lefts, rights = view_kernels(signed_coc_px, shape)
    left, right = lefts[1].copy(), rights[1].copy()
    return left, right, (left + right) / 2.0


def centroid_x(kernel: np.ndarray) -> float:
    """Horizontal centroid of a kernel in pixels from its centre (negative: left of centre)."""
    x = np.arange(kernel.shape[1]) - kernel.shape[1] // 2
    return float((kernel.sum(axis=0) * x).sum() / kernel.sum())


# Quantisation of CoC for layered rendering: 0.5 px steps up to 4 px, then 10% steps (bins of equal blur size).
_COC_BINS = np.concatenate([np.arange(0.0, 4.0, 0.5), 4.0 * 1.1 ** np.arange(0, 40)]).astype(np.float64)


def quantize_coc(c):
    """Nearest bin centre, sign kept: 0, 0.5, ..., 3.5, then 4 * 1.1**k px."""
    c = np.asarray(c, dtype=np.float64)
    a = np.abs(c)
    i = np.clip(np.searchsorted(_COC_BINS, a), 1, len(_COC_BINS) - 1)
    lo, hi = _COC_BINS[i - 1], _COC_BINS[i]
    q = np.where(a - lo <= hi - a, lo, hi)
    return np.sign(c) * q


# ----------------------------------------------------------------------------------------------- rendering

@dataclass
class Layer:
    """One surface of a scene: display-encoded colour (H, W, 3; values above 1 are highlights), alpha (H, W)
    in [0, 1], and depth in metres, a number (fronto-parallel) or an (H, W) map (slanted, or a real depth map)."""
    colour: np.ndarray
    alpha: np.ndarray
    depth_m: float | np.ndarray


@dataclass
class Noise:
    """Sensor noise of the combined image in linear light: variance shot*signal + read**2. Each view gets half
    the photons at twice the gain, so twice that variance; combined = (L + R) / 2 has it again."""
    shot: float = 0.0
    read: float = 0.0


def _filter(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve with a PSF (cv2.filter2D correlates, so the kernel is flipped), reflecting at the borders."""
    return cv2.filter2D(img, -1, np.ascontiguousarray(psf[::-1, ::-1]), borderType=cv2.BORDER_REFLECT_101)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    r0, r1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    c0, c1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    h, w = mask.shape
    return slice(max(0, r0 - margin), min(h, r1 + margin)), slice(max(0, c0 - margin), min(w, c1 + margin))


def _blur_region(make_stack, nonzero: np.ndarray, psfs: list[np.ndarray]):
    """Blur the stack that make_stack(rows, cols) builds with each PSF, only over the bounding box of
    `nonzero` grown by the kernel radius; returns that box and one blurred crop per PSF (or None, []).

    Equal to blurring the whole frame inside the box: the input crop is grown by another radius, so no kernel
    reaches a false border.
    """
    half = max(p.shape[0] for p in psfs) // 2
    out_box = _box(nonzero, half)
    if out_box is None:
        return None, []
    h, w = nonzero.shape
    rows = slice(max(0, out_box[0].start - half), min(h, out_box[0].stop + half))
    cols = slice(max(0, out_box[1].start - half), min(w, out_box[1].stop + half))
    crop = make_stack(rows, cols)
    inner = (slice(out_box[0].start - rows.start, out_box[0].stop - rows.start),
             slice(out_box[1].start - cols.start, out_box[1].stop - cols.start))
    return out_box, [_filter(crop, p)[inner] for p in psfs]


def to_linear(display: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    return np.power(np.maximum(display, 0.0), gamma, dtype=np.float32)


def to_display(linear: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    return np.power(np.clip(linear, 0.0, 1.0), 1.0 / gamma, dtype=np.float32)


TONES = ("srgb", "gamma", "linear")


@dataclass(frozen=True)
class Sensor:
    """What the sensor and the camera pipeline do after the optics, per scene.

    imbalance: log of the left/right brightness ratio; vignetting: a smooth field of either sign added to it,
    v * f(x, y), f rising along direction `vig_angle` with a quadratic part `vig_curve` (on phones the views
    differ by tens of percent). The two photodiodes share the pixel's light, so the gains are 2w and 2(1 - w)
    with w = sigmoid(imbalance + v f): the ratio L/R is e^(imbalance + v f) and (L + R) / 2 is unchanged. tone: how linear light is
    stored: srgb (the IEC 61966-2-1 curve), gamma (linear ** (1 / gamma)) or linear (raw, as phones
    store it). bits: the levels the views and the combined image are quantised to (8, 10, 12, 16). grey:
    one-channel data (the content is one channel and the noise is shared by R, G and B). demosaic: "" (each pixel
    has all three colours) or a DEMOSAIC_METHODS entry: the views, the combined image and the target are sampled
    through the Bayer colour-filter pattern `bayer` and interpolated back (camera_pipeline). exposure: the factor
    on the scene's linear light before the gains and the noise (a dimmer scene or a shorter exposure at the same
    ISO: darker pixels with a lower signal-to-noise ratio), the sharp target's too.
    """
    imbalance: float = 0.0
    vignetting: float = 0.0
    vig_angle: float = 0.0
    vig_curve: float = 0.0
    tone: str = "gamma"
    gamma: float = GAMMA
    bits: int = 16
    grey: bool = False
    demosaic: str = ""
    bayer: str = "RGGB"
    exposure: float = 1.0

    def encode(self, linear: np.ndarray) -> np.ndarray:
        x = np.clip(linear, 0.0, 1.0).astype(np.float32)
        if self.tone == "linear":
            return x
        if self.tone == "srgb":
            return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)
        return np.power(x, 1.0 / self.gamma, dtype=np.float32)

    def gains(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """The left and right views' gains (H, W, 1) each; they average to 1 everywhere."""
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        xn, yn = x / max(w - 1, 1) * 2 - 1, y / max(h - 1, 1) * 2 - 1
        f = math.cos(self.vig_angle) * xn + math.sin(self.vig_angle) * yn + self.vig_curve * (xn ** 2 + yn ** 2)
        share = 1.0 / (1.0 + np.exp(-(self.imbalance + self.vignetting * f)))
        return (2 * share)[..., None].astype(np.float32), (2 * (1 - share))[..., None].astype(np.float32)


def _quantise(img: np.ndarray, bits: int) -> np.ndarray:
    """Round to the levels of a `bits`-bit image, staying float in [0, 1]."""
    top = float(peak(bits))
    return (np.rint(np.clip(img, 0.0, 1.0) * top) / top).astype(np.float32)


# Bayer patterns (the colours of the 2x2 block at the top left) and OpenCV's conversion code for each (OpenCV
# names a pattern by the block one pixel down and right); demosaicing methods and OpenCV's code suffixes.
BAYER_PATTERNS = {"RGGB": "BG", "BGGR": "RG", "GRBG": "GB", "GBRG": "GR"}
DEMOSAIC_METHODS = {"bilinear": "", "edge-aware": "_EA"}


def mosaic(linear: np.ndarray, pattern: str) -> np.ndarray:
    """The raw frame a Bayer sensor records of a linear RGB image: one colour per pixel, (H, W)."""
    raw = np.empty(linear.shape[:2], np.float32)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        raw[dy::2, dx::2] = linear[dy::2, dx::2, "RGB".index(colour)]
    return raw


def camera_pipeline(linear: np.ndarray, sensor: Sensor) -> np.ndarray:
    """A linear RGB image in [0, 1] sampled through the sensor's Bayer pattern and demosaiced (OpenCV, 16-bit), as
    a camera's raw converter does before the tone curve: fine detail softens a little and the noise, one draw
    per photosite, becomes correlated between neighbouring pixels and colours."""
    code = getattr(cv2, f"COLOR_Bayer{BAYER_PATTERNS[sensor.bayer]}2RGB{DEMOSAIC_METHODS[sensor.demosaic]}")
    raw = np.rint(np.clip(mosaic(linear, sensor.bayer), 0.0, 1.0) * 65535.0).astype(np.uint16)
    return (cv2.demosaicing(raw, code) / 65535.0).astype(np.float32)


def _blur_views(make_stack, nonzero, c: float, psf: PsfShape, shared: int):
    """Blur a stack of colour (3 channels) and `shared` coverage channels with both views' PSFs.

    Returns the box and, per view, an array of colour (3) followed by each shared channel once per colour
    channel (3 * shared), since with chromatic aberration every colour has its own PSF and so its own coverage.
    A PSF that varies across the frame is rendered with each of FIELD_ANCHORS' PSFs, blended with weights that
    fall linearly from 1 at an anchor's column to 0 at the next anchor's (they sum to 1 in every column).
    """
    if not psf.varies():
        return _blur_views_at(make_stack, nonzero, c, psf, shared)
    parts = [(u, *_blur_views_at(make_stack, nonzero, c, psf.at(u), shared)) for u in FIELD_ANCHORS]
    if parts[0][1] is None:
        return None, []
    # each anchor's box is the nonzero pixels' box grown by its own PSF's radius, and its blur is zero outside
    rows = slice(min(p[1][0].start for p in parts), max(p[1][0].stop for p in parts))
    cols = slice(min(p[1][1].start for p in parts), max(p[1][1].stop for p in parts))
    w = nonzero.shape[1]
    x = (np.arange(cols.start, cols.stop, dtype=np.float32) / max(w - 1, 1) * 2 - 1)[None, :, None]
    spacing = FIELD_ANCHORS[1] - FIELD_ANCHORS[0]
    views = [np.zeros((rows.stop - rows.start, cols.stop - cols.start, parts[0][2][0].shape[2]), np.float32)
             for _ in range(2)]
    for u, (r, q), blurred in parts:
        weight = np.clip(1.0 - np.abs(x - u) / spacing, 0.0, 1.0)[:, q.start - cols.start:q.stop - cols.start]
        for view, b in zip(views, blurred):
            view[r.start - rows.start:r.stop - rows.start, q.start - cols.start:q.stop - cols.start] += weight * b
    return (rows, cols), views


def _blur_views_at(make_stack, nonzero, c: float, psf: PsfShape, shared: int):
    """_blur_views for a PSF that is the same all over the frame."""
    kls, krs = view_kernels(c, psf)
    if kls[0] is kls[1] is kls[2] and krs[0] is krs[1] is krs[2]:
        box, blurred = _blur_region(make_stack, nonzero, [kls[0], krs[0]])
        if box is None:
            return None, []
        bl, br = blurred
        rep = lambda b: np.concatenate([b[..., :3]] + [np.repeat(b[..., 3 + j:4 + j], 3, axis=2)
                                                      for j in range(shared)], axis=2)
        return box, [rep(bl), rep(br)]
    outs = []
    for ch in range(3):
        pick = lambda rows, cols, ch=ch: make_stack(rows, cols)[..., [ch] + list(range(3, 3 + shared))]
        box, blurred = _blur_region(pick, nonzero, [kls[ch], krs[ch]])
        if box is None:
            return None, []
        outs.append(blurred)
    views = []
    for v in range(2):
        parts = [np.stack([outs[ch][v][..., 0] for ch in range(3)], axis=2)]
        parts += [np.stack([outs[ch][v][..., 1 + j] for ch in range(3)], axis=2) for j in range(shared)]
        views.append(np.concatenate(parts, axis=2))
    return box, views


def render_views(layers: list[Layer], camera: Camera, noise: Noise | None = None, vignetting: float = 0.0,
                 psf: PsfShape = PsfShape(), rng: np.random.Generator | None = None, gamma: float = GAMMA,
                 sensor: Sensor | None = None, target_noise: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render the left and right DP views, the combined image and the sharp image of layers given back to front.

    Each layer is split into slabs of equal quantised CoC. Slabs are blurred with their L/R PSFs (one per
    colour channel) as premultiplied colour and alpha and composited over what lies behind with (1 - blurred
    alpha), so defocused edges of near layers reveal the layers behind them. Inside one layer with a depth map
    a slab also covers the nearer parts of the same layer (which nearer slabs then replace), so no background
    leaks through the seams. Colours are decoded with `gamma`. Without `sensor`: vignetting (L darker to the
    right, R to the left, by up to `vignetting`) and noise act in linear light, combined = (L + R) / 2 there
    and everything is encoded with `gamma`. With `sensor`: its gain field, noise, demosaicing (the sharp image's
    too, without noise unless `target_noise`), tone curve and quantisation instead (the sharp image gets the tone
    curve, at 16 bits). All outputs are float32 (H, W, 3) in [0, 1]; the sharp image is noise-free, unless
    `target_noise`: then it carries the combined image's own noise realisation (and its quantisation), so
    in-focus pixels of input and target agree and a network trained on them has nothing to denoise.
    """
    h, w = layers[0].alpha.shape
    out_l = np.zeros((h, w, 3), np.float32)
    out_r = np.zeros((h, w, 3), np.float32)
    sharp = np.zeros((h, w, 3), np.float32)
    for layer in layers:
        alpha = np.clip(layer.alpha.astype(np.float32), 0.0, 1.0)
        colour = to_linear(layer.colour.astype(np.float32), gamma)
        premult = colour * alpha[..., None]
        sharp = premult + (1.0 - alpha[..., None]) * sharp
        layer_coc = quantize_coc(camera.coc(layer.depth_m))
        if layer_coc.ndim == 0:
            out_l, out_r = _composite_slab(premult, alpha, float(layer_coc), psf, out_l, out_r)
            continue
        # a layer with a depth map: accumulate it on its own (premultiplied colour, alpha), then composite
        acc_l = np.zeros((h, w, 6), np.float32)
        acc_r = np.zeros((h, w, 6), np.float32)
        visible = alpha > 0
        for value in sorted(np.unique(layer_coc[visible]), reverse=True):   # far (large c) to near
            own = (layer_coc <= value) & visible

            def make_stack(rows, cols):
                o = own[rows, cols].astype(np.float32)[..., None]
                return np.concatenate([premult[rows, cols] * o, alpha[rows, cols, None] * o, o], axis=2)

            box, (bl, br) = _blur_views(make_stack, own, float(value), psf, shared=2)
            for acc, b in ((acc_l, bl), (acc_r, br)):
                keep = 1.0 - b[..., 6:9]
                acc[box] = b[..., :6] + np.concatenate([keep, keep], axis=2) * acc[box]
        for out, acc in ((out_l, acc_l), (out_r, acc_r)):
            out[:] = acc[..., :3] + (1.0 - acc[..., 3:6]) * out
    if sensor is None:
        encode = functools.partial(to_display, gamma=gamma)
        if vignetting:
            ramp = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :, None]
            out_l *= 1.0 - vignetting * ramp
            out_r *= 1.0 + vignetting * ramp
    else:
        encode = sensor.encode
        gain_l, gain_r = sensor.gains(h, w)
        out_l *= gain_l * sensor.exposure
        out_r *= gain_r * sensor.exposure
        sharp = sharp * sensor.exposure
    if noise is not None and (noise.shot > 0 or noise.read > 0):
        rng = rng if rng is not None else np.random.default_rng(0)
        grey = sensor is not None and sensor.grey
        added = []
        for out in (out_l, out_r):
            var = 2.0 * noise.shot * np.maximum(out, 0.0) + 2.0 * noise.read ** 2
            z = rng.standard_normal((h, w, 1) if grey else out.shape, dtype=np.float32)
            added.append(np.sqrt(var) * z)
            out += added[-1]
        if target_noise:
            sharp = sharp + (added[0] + added[1]) / 2.0
    # Each view saturates on its own, and the combined image is the sum of the two photodiodes, so it is the
    # mean of the clipped views: a highlight that clips one view is clipped in the combined image too.
    out_l, out_r = np.clip(out_l, 0.0, 1.0), np.clip(out_r, 0.0, 1.0)
    combined = (out_l + out_r) / 2.0
    sharp = np.clip(sharp, 0.0, 1.0)
    if sensor is not None and sensor.demosaic and not sensor.grey:
        out_l, out_r, combined, sharp = (camera_pipeline(x, sensor) for x in (out_l, out_r, combined, sharp))
    views = [encode(out_l), encode(out_r), encode(combined)]
    target = encode(sharp)
    if sensor is not None and sensor.bits < 16:
        views = [_quantise(v, sensor.bits) for v in views]
        target = _quantise(target, sensor.bits) if target_noise else target
    return views[0], views[1], views[2], target


def _composite_slab(premult, alpha, c, psf, out_l, out_r):
    """Composite one fronto-parallel slab (premultiplied colour, alpha) over both views."""
    if c == 0.0:
        a = alpha[..., None]
        return premult + (1.0 - a) * out_l, premult + (1.0 - a) * out_r
    box, blurred = _blur_views(lambda rows, cols: np.concatenate([premult[rows, cols], alpha[rows, cols, None]], axis=2),
                               alpha > 0, c, psf, shared=1)
    if box is not None:
        bl, br = blurred
        out_l[box] = bl[..., :3] + (1.0 - bl[..., 3:6]) * out_l[box]
        out_r[box] = br[..., :3] + (1.0 - br[..., 3:6]) * out_r[box]
    return out_l, out_r


def visible_coc(layers: list[Layer], camera: Camera) -> np.ndarray:
    """Signed CoC (px) of the surface seen at each pixel, composited by alpha: the scene's defocus map."""
    h, w = layers[0].alpha.shape
    out = np.zeros((h, w), np.float64)
    for layer in layers:
        a = np.clip(layer.alpha, 0.0, 1.0)
        out = camera.coc(layer.depth_m) * a + (1.0 - a) * out
    return out


# ----------------------------------------------------------------------------------------------- content

@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    """The colour photographs scikit-image ships in its wheel (no download), display-encoded float32."""
    from skimage import data
    left, right, _ = data.stereo_motorcycle()
    imgs = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
            "rocket": data.rocket(), "motorcycle_left": left, "motorcycle_right": right}
    return {k: v.astype(np.float32) / 255.0 for k, v in imgs.items()}


@functools.lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    """Grey photographs and textures from scikit-image, float32 in [0, 1]."""
    from skimage import data
    names = ("brick", "grass", "gravel", "camera", "moon", "coins", "clock", "page", "text", "cell")
    return {n: getattr(data, n)().astype(np.float32) / 255.0 for n in names}


@functools.lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    from skimage import data
    return (~data.horse()).astype(np.uint8) * 255


@functools.lru_cache(maxsize=1)
def _motorcycle_depth() -> np.ndarray:
    """Metric depth (m) of stereo_motorcycle's left image from its Middlebury calibration, Z = f*B/(d + doffs);
    pixels without disparity (occlusions) take the farther of the nearest valid values along their row."""
    from skimage import data
    _, _, disp = data.stereo_motorcycle()
    disp = disp.astype(np.float64)
    valid = np.isfinite(disp)
    filled = disp.copy()
    for row, ok in zip(filled, valid):
        if ok.all() or not ok.any():
            continue
        idx = np.arange(len(row))
        left_i = np.maximum.accumulate(np.where(ok, idx, -1))
        right_i = np.minimum.accumulate(np.where(ok, idx, len(row))[::-1])[::-1]
        lv = np.where(left_i >= 0, row[np.clip(left_i, 0, None)], np.inf)
        rv = np.where(right_i < len(row), row[np.clip(right_i, None, len(row) - 1)], np.inf)
        row[~ok] = np.minimum(lv, rv)[~ok]
    filled[~np.isfinite(filled)] = np.nanmin(disp[valid])
    return (994.978 * 0.193001 / (filled + 31.086)).astype(np.float32)


def _crop_box(rng, src_h, src_w, h, w, min_scale):
    aspect = w / h
    ch, cw = (src_h, int(src_h * aspect)) if src_w >= src_h * aspect else (int(src_w / aspect), src_w)
    s = rng.uniform(min_scale, 1.0)
    ch, cw = max(8, int(ch * s)), max(8, int(cw * s))
    y0, x0 = int(rng.integers(0, src_h - ch + 1)), int(rng.integers(0, src_w - cw + 1))
    return y0, x0, ch, cw


def _resize(img, h, w, nearest=False):
    src_h, src_w = img.shape[:2]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if src_h >= h else cv2.INTER_CUBIC)
    return cv2.resize(img, (w, h), interpolation=interp)


def _jitter(rng, img):
    """Colour augmentation: exposure, white balance, saturation and contrast."""
    grey = img.mean(axis=2, keepdims=True)
    img = grey + rng.uniform(0.6, 1.3) * (img - grey)
    mean = img.mean()
    img = mean + rng.uniform(0.8, 1.2) * (img - mean)
    img = img * rng.uniform(0.75, 1.15) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def photo_files(folder: str) -> tuple[str, ...]:
    """The photographs in `folder` (its image files, sorted by name, so that a seed draws the same ones); listed
    on every draw, not cached, so that what the manifest counts is what the scenes draw from."""
    if not os.path.isdir(folder):
        raise SynthesisError(f"--photos {folder}: not a folder")
    files = tuple(os.path.join(folder, f) for f in sorted(os.listdir(folder))
                  if f.lower().endswith(PHOTO_EXTENSIONS) and not f.startswith("."))
    if not files:
        raise SynthesisError(f"--photos {folder}: holds no photographs ({', '.join(PHOTO_EXTENSIONS)})")
    return files


@functools.lru_cache(maxsize=4)
def _read_photo(path: str) -> np.ndarray:
    return read_image(path, allow_grey=True)


def pick_photo(rng, photos: str = "") -> np.ndarray:
    """One photograph as stored: from the folder `photos` (uint8 or uint16, (H, W, 3) or grey (H, W, 1)) or, with
    "", from scikit-image's six (float32 RGB). rgb_float converts what is kept of it."""
    if not photos:
        imgs = _photos()
        return imgs[list(imgs)[int(rng.integers(len(imgs)))]]
    files = photo_files(photos)
    return _read_photo(files[int(rng.integers(len(files)))])


def rgb_float(img: np.ndarray) -> np.ndarray:
    """(A part of) a photograph from pick_photo as display-encoded float32 RGB in [0, 1]; grey as three equal
    channels."""
    img = img if img.dtype == np.float32 else to_float(img)
    img = img[..., None] if img.ndim == 2 else img
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def photo_content(rng, h, w, photos: str = ""):
    img = pick_photo(rng, photos)
    y0, x0, ch, cw = _crop_box(rng, *img.shape[:2], h, w, 0.5)
    out = rgb_float(_resize(img[y0:y0 + ch, x0:x0 + cw], h, w))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return _jitter(rng, np.clip(out, 0, 1))


def texture_content(rng, h, w):
    """A grey photograph or texture mapped onto a random two-colour gradient."""
    tex = _textures()
    grey = tex[list(tex)[int(rng.integers(len(tex)))]]
    y0, x0, ch, cw = _crop_box(rng, *grey.shape, h, w, 0.4)
    g = _resize(grey[y0:y0 + ch, x0:x0 + cw], h, w)
    if rng.random() < 0.5:
        g = g[:, ::-1]
    if rng.random() < 0.5:
        g = g[::-1]
    lo, hi = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return np.clip(lo + (hi - lo) * np.clip(g, 0, 1)[..., None], 0, 1).astype(np.float32)


def noise_content(rng, h, w):
    """Coloured 1/f^p noise (natural-image power spectrum)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(h, w)) ** rng.uniform(0.8, 1.4)
    chans = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
        chans.append(np.fft.irfft2(spec, s=(h, w)))
    x = np.stack(chans, axis=2)
    x = x @ rng.uniform(-0.3, 1.0, (3, 3))          # correlated colours
    lo, hi = np.percentile(x, 1, axis=(0, 1)), np.percentile(x, 99, axis=(0, 1))
    return np.clip((x - lo) / np.maximum(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _leaf_radii(rng, n, rmin, rmax):
    u = rng.random(n)                               # p(r) ~ r^-3: the dead-leaves model's scale invariance
    return (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5


def leaves_content(rng, h, w, photos: str = ""):
    """A dead-leaves image: occluding discs and rectangles with power-law sizes until the frame is covered,
    colours drawn from a photograph, faint texture."""
    photo = pick_photo(rng, photos)
    step = max(1, math.ceil(math.sqrt(photo.shape[0] * photo.shape[1] / 1e6)))   # a million colours are plenty
    palette = rgb_float(photo[::step, ::step]).reshape(-1, 3)
    n = int(rng.integers(1000, 1600))
    scale = min(h, w) / 368.0
    radii = _leaf_radii(rng, n, 4.0 * scale, 0.3 * min(h, w))
    colours = (palette[rng.integers(0, len(palette), n + 1)] * 255).astype(np.int32)
    cx, cy = rng.uniform(-0.1, 1.1, n) * w, rng.uniform(-0.1, 1.1, n) * h
    square = rng.random(n) < 0.3
    aspect, angle = rng.uniform(0.3, 1.0, n), rng.uniform(0, 180, n)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colours[n]
    for i in range(n):
        colour = tuple(int(v) for v in colours[i])
        if square[i]:
            box = cv2.boxPoints(((cx[i], cy[i]), (2 * radii[i], 2 * radii[i] * aspect[i]), angle[i]))
            cv2.fillPoly(img, [np.round(box).astype(np.int32)], colour, cv2.LINE_AA)
        else:
            cv2.circle(img, (int(cx[i]), int(cy[i])), max(1, int(radii[i])), colour, -1, cv2.LINE_AA)
    out = img.astype(np.float32) / 255.0
    out *= 1.0 + 0.15 * (noise_content(rng, h, w).mean(axis=2, keepdims=True) - 0.5)
    return np.clip(out, 0, 1)


def pattern_content(rng, h, w):
    """Gratings and checks at a random angle and period (strong edges in every direction)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(4, 40)
    u = (x * np.cos(theta) + y * np.sin(theta)) / period
    if rng.random() < 0.5:
        v = (-x * np.sin(theta) + y * np.cos(theta)) / period
        g = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif rng.random() < 0.5:
        g = (np.floor(u) % 2).astype(np.float32)
    else:
        g = 0.5 + 0.5 * np.sin(2 * np.pi * u)
    lo, hi = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return np.clip(lo + (hi - lo) * g[..., None], 0, 1).astype(np.float32)


CONTENTS = {"photo": photo_content, "texture": texture_content, "noise": noise_content,
            "leaves": leaves_content, "pattern": pattern_content}


def random_content(rng, h, w, weights=(0.35, 0.25, 0.1, 0.15, 0.15), photos: str = ""):
    """One layer's content, its kind drawn with `weights` (in CONTENTS' order); photos: as pick_photo."""
    name = list(CONTENTS)[int(rng.choice(len(CONTENTS), p=np.array(weights) / sum(weights)))]
    return CONTENTS[name](rng, h, w, photos) if name in ("photo", "leaves") else CONTENTS[name](rng, h, w)


def random_mask(rng, h, w) -> np.ndarray:
    """An object silhouette with anti-aliased, slightly soft edges: ellipse, polygon, board, blob, leaves, horse."""
    m = np.zeros((h, w), np.uint8)
    s = min(h, w)
    cx, cy = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
    size = rng.uniform(0.12, 0.45) * s
    kind = int(rng.choice(6, p=[0.2, 0.2, 0.2, 0.15, 0.15, 0.1]))
    if kind == 0:
        cv2.ellipse(m, (cx, cy), (int(size), int(size * rng.uniform(0.4, 1.0))), rng.uniform(0, 180), 0, 360,
                    255, -1, cv2.LINE_AA)
    elif kind == 1:
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size * rng.uniform(0.5, 1.0, k)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    elif kind == 2:
        box = cv2.boxPoints(((cx, cy), (2 * size, 2 * size * rng.uniform(0.3, 1.0)), rng.uniform(-30, 30)))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 255, cv2.LINE_AA)
    elif kind == 3:
        blob = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), size / 4)
        g = np.exp(-((np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2) / (2 * size ** 2))
        level = blob / (blob.std() + 1e-6) + 3.0 * g - 1.5
        m = np.where(level > 0, 255, 0).astype(np.uint8)
    elif kind == 4:
        for r in _leaf_radii(rng, int(rng.integers(3, 25)), 0.03 * s, 0.2 * s):
            x = int(cx + rng.normal(0, size * 0.6))
            y = int(cy + rng.normal(0, size * 0.6))
            cv2.circle(m, (x, y), int(r), 255, -1, cv2.LINE_AA)
    else:
        horse = _horse()
        hh = int(2 * size)
        hw = int(hh * horse.shape[1] / horse.shape[0])
        small = cv2.resize(horse, (hw, hh), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            small = small[:, ::-1]
        y0, x0 = cy - hh // 2, cx - hw // 2
        ys, xs = slice(max(0, y0), min(h, y0 + hh)), slice(max(0, x0), min(w, x0 + hw))
        m[ys, xs] = small[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    alpha = m.astype(np.float32) / 255.0
    soft = rng.uniform(0.0, 1.0)
    if soft > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), soft)
    return alpha


def _add_highlights(rng, colour, alpha):
    """A few small light sources (display values 1.2-2, i.e. 1.5-4.6x white in linear light): bokeh when defocused."""
    h, w = alpha.shape
    ys, xs = np.nonzero(alpha > 0.9)
    if len(ys) == 0:
        return colour
    colour = colour.copy()
    for _ in range(int(rng.integers(3, 25))):
        i = int(rng.integers(len(ys)))
        tint = rng.uniform(0.8, 1.0, 3)
        cv2.circle(colour, (int(xs[i]), int(ys[i])), int(rng.integers(1, 4)),
                   tuple(float(v) for v in tint * rng.uniform(1.2, 2.0)), -1)
    return colour


# ----------------------------------------------------------------------------------------------- scenes

@dataclass
class SceneSpec:
    """Everything that fixes one synthetic scene before rendering (dpdd.Scene is a scene's files on disk)."""
    kind: str
    category: str
    layers: list[Layer]
    camera: Camera
    noise: Noise
    vignetting: float
    psf: PsfShape
    depth_range_m: tuple[float, float]
    sensor: Sensor = Sensor()
    camera_kind: str = "dslr"
    iso: float = 100.0


def _log_uniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _slanted_inv_depth(rng, h, w, inv_far, inv_near):
    """Inverse depth of a slanted plane: affine in image coordinates (exact under perspective projection)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(inv_far, inv_near, 2)
    if rng.random() < 0.6:   # ground or ceiling: depth changes mostly down the frame
        t = y / (h - 1) if rng.random() < 0.8 else 1 - y / (h - 1)
        t = t + rng.uniform(-0.3, 0.3) * (x / (w - 1) - 0.5)
    else:                    # a wall seen at an angle
        t = x / (w - 1) if rng.random() < 0.5 else 1 - x / (w - 1)
    return (a + (b - a) * np.clip(t, 0, 1)).astype(np.float32)


def _procedural_scene(rng, h, w, kind, category, cam, max_coc_px, photos=""):
    """A background plane and occluding layers (colour, alpha, inverse depth), far to near, one of them
    through the focal plane, all within the blur limit; indoor backgrounds at 1.5-8 m, outdoor at 20 m or more.
    photos: where photographs come from (pick_photo)."""
    inv_s = 1.0 / cam.focus_m
    k = float(cam.coc(np.inf))
    lo_cap, hi_cap = max(0.0, inv_s * (1 - max_coc_px / k)), inv_s * (1 + max_coc_px / k)

    def window(a, b):
        return a, max(a, b)

    if kind == "leaves":
        bg_colour = leaves_content(rng, h, w, photos)
    elif kind == "planes":
        bg_colour = random_content(rng, h, w, weights=(0.3, 0.4, 0.1, 0.0, 0.2), photos=photos)
    else:
        bg_colour = random_content(rng, h, w, weights=(0.6, 0.15, 0.05, 0.1, 0.1), photos=photos)
    slanted_bg = rng.random() < (0.6 if kind == "planes" else 0.35)
    if category == "outdoor":
        fg = window(1 / 30.0, min(1 / 1.0, hi_cap))
        bg_lo, bg_hi = window(lo_cap, 1 / 20.0)
        if slanted_bg:   # ground plane from the far distance (top) to a few metres (bottom)
            far = rng.uniform(bg_lo, bg_hi)
            near = rng.uniform(*window(far, min(hi_cap, 1 / 2.0)))
            t = np.mgrid[0:h, 0:w][0].astype(np.float32) / (h - 1)
            bg_inv = far + (near - far) * np.clip(t + rng.uniform(-0.2, 0.2) * (np.arange(w) / (w - 1) - 0.5), 0, 1)
        else:
            bg_inv = bg_lo if rng.random() < 0.5 else float(rng.uniform(bg_lo, bg_hi))   # often at infinity
    else:
        fg = window(1 / 6.0, min(1 / 0.5, hi_cap))
        if slanted_bg:   # floor or wall running from far behind to in front of the focal plane
            bg_inv = _slanted_inv_depth(rng, h, w, *window(max(lo_cap, 1 / 8.0), min(hi_cap, 1 / 1.0)))
        else:
            bg_inv = float(rng.uniform(*window(max(lo_cap, 1 / 8.0), min(inv_s, 1 / 1.5))))
    n = int(rng.integers(1, 5)) if kind != "leaves" else int(rng.integers(2, 6))
    focus_layer = int(rng.integers(1 if category == "outdoor" else 0, n + 1))   # outdoors: not the background

    def through_focus(inv, alpha):
        """Move a surface in depth so that a random point of it lies on the focal plane."""
        if np.ndim(inv) == 0:
            return inv_s
        ys, xs = np.nonzero(alpha > 0.5)
        p = int(rng.integers(len(ys))) if len(ys) else 0
        return inv + (inv_s - (inv[ys[p], xs[p]] if len(ys) else inv.mean()))

    bg_alpha = np.ones((h, w), np.float32)
    if focus_layer == 0:
        bg_inv = through_focus(bg_inv, bg_alpha)
    layers = [(bg_colour, bg_alpha, bg_inv)]
    for i in range(1, n + 1):
        if kind == "leaves":
            colour = (leaves_content(rng, h, w, photos) if rng.random() < 0.5
                      else random_content(rng, h, w, photos=photos))
            alpha = np.zeros((h, w), np.float32)
            for _ in range(int(rng.integers(1, 4))):
                alpha = np.maximum(alpha, random_mask(rng, h, w))
        else:
            colour = random_content(rng, h, w, photos=photos)
            alpha = random_mask(rng, h, w)
        lo, hi = window(max(fg[0], float(np.mean(bg_inv))), fg[1])
        inv = float(rng.uniform(lo, hi))
        if kind == "planes" and rng.random() < 0.5:   # a tilted board around that depth
            inv = inv + _slanted_inv_depth(rng, h, w, -0.5, 0.5) * rng.uniform(0.05, 0.4) * inv
        layers.append((colour, alpha, through_focus(inv, alpha) if i == focus_layer else inv))
    if rng.random() < 0.3:
        j = int(rng.integers(len(layers)))
        layers[j] = (_add_highlights(rng, layers[j][0], layers[j][1]), layers[j][1], layers[j][2])
    layers = [(c, a, float(np.clip(i, lo_cap, hi_cap)) if np.ndim(i) == 0 else np.clip(i, lo_cap, hi_cap))
              for c, a, i in layers]
    return layers[:1] + sorted(layers[1:], key=lambda t: float(np.mean(t[2])))   # far (small 1/d) first


def _draw_camera(rng, focus_range, downscale, accept=lambda cam: True, tries=50) -> Camera:
    """A DSLR setting drawn log-uniformly over focal length, f-number and focus distance; drawn again (a
    photographer picks another lens or stop) until `accept` holds, else the try with the smallest blur."""
    best = None
    for _ in range(tries):
        cam = Camera(_log_uniform(rng, *FOCAL_MM), _log_uniform(rng, *F_NUMBER), _log_uniform(rng, *focus_range),
                     PITCH_UM, downscale)
        if accept(cam):
            return cam
        if best is None or cam.coc(np.inf) < best.coc(np.inf):
            best = cam
    return best


def with_background_blur(cam: Camera, blur_px: float, width: int) -> Camera:
    """The camera with its crop (downscale) changed so that infinity is blurred by blur_px, the crop kept
    between the whole frame and a 1:1 crop of the sensor's pixels."""
    downscale = cam.downscale * float(cam.coc(np.inf)) / blur_px
    return dataclasses.replace(cam, downscale=float(np.clip(downscale, 1.0, SENSOR_WIDTH_PX / width)))


CAMERA_KINDS = ("dslr", "phone")
NOISE_LEVELS = {"clean": (0.01, 100.0), "low": (100.0, 800.0), "high": (800.0, 6400.0)}   # ISO ranges


@dataclass(frozen=True)
class Domain:
    """What synthesize.py draws per scene (domain randomisation) and from which families; the defaults are the
    widest ranges, which train the model that travels best between cameras. The out-of-distribution check
    (ood_check.py) trains on some families and validates on the ones held back.

    psf_families: PSF shapes drawn uniformly (PsfShape.family): butterworth, ramp, soft, polygon.
    cameras: dslr (the thin-lens 5D Mark IV range, blur up to --max-coc) and phone (the largest blur of the
      scene log-uniform in phone_blur_px, views up to `phone_imbalance` apart, noisier, often linear,
      one-channel and 10/12-bit); a scene is a phone one with probability phone_fraction.
    noise_levels: low (ISO 100-800) and high (ISO 800-6400), one drawn uniformly per scene, or clean (ISO
      0.01-100: from no noise at all, below 16-bit quantisation, as in a rendered image or a denoised photograph,
      to base ISO): shot variance 1e-5 x ISO/100 and read noise 2.5e-4 x sqrt(ISO/100) in linear light (x4 and x2
      on phones).
    clean_fraction: the fraction of scenes whose ISO is drawn again from "clean" whatever noise_levels says, so
      that a network told the noise level (noise_input) sees its low end in training too. Drawn after everything
      else, so the same seed gives the same scenes with only those made clean. 0 disables it.
    tones: srgb, gamma (gamma_range) or linear (raw).
    bits: the quantisation levels allowed (DSLR scenes draw 8 or 16, phone scenes 10 or 12; either falls back
      to any allowed value).
    imbalance / vignetting: the largest |log L/R brightness ratio| and signed gain-field strength of DSLR
      scenes (phones: phone_imbalance / phone_vignetting); see Sensor.
    asymmetry: the right PSF's size within 1 +- this of the left's (phones; half of it on a DSLR).
    cats_eye: the largest fraction of the aperture cut off (drawn in 30% of scenes).
    chroma: the largest relative blur difference of red and blue against green (drawn in half the scenes).
    field / field_tilt: the largest cat's-eye cut at the frame's left and right edges and the largest change of
      the right PSF's relative size there (PsfShape.field, field_tilt; drawn in 40% of scenes, 0 disables).
      Turning them on takes one more draw per scene from the scene's stream, so the sensor drawn after it (tone,
      bits, left/right gains, grey) changes too: the same content and cameras with other sensors.
    background_blur: the fraction of DSLR scenes (not the real-depth motorcycle) whose crop is chosen so that the
      background at infinity is blurred by a diameter drawn log-uniform from a third of the blur limit to all of
      it, as in a photograph taken wide open for a blurred background (the crop stays within the sensor's full
      resolution and at most the whole frame; indoor backgrounds, at most 8 m away, get less); drawn cameras and
      zoom alone rarely blur backgrounds that much. Turning it on takes one more draw per scene before the layout
      is drawn, so every scene's content and layout change, not only the chosen ones'. 0 disables it.
    soft_content / test_soft_content / soft_sigma: the fraction of layers whose content is smoothed by a Gaussian
      of sigma drawn log-uniform in soft_sigma pixels, the silhouette kept sharp: surfaces that look soft although
      they are in focus (skin, prints, painted walls, smooth patterns), so the network has to read defocus from the
      two views rather than from how soft the content looks. soft_content holds for train and val scenes (default
      0.3), test_soft_content for test scenes (default 0.1, the most at which the demo's DPDNet-Single, which
      cannot tell the two apart, still beats the input; None: soft_content, as in folders made before it existed):
      results/synthetic_ood.md, "Soft content". Drawn after everything else, so the same seed gives the same
      scenes with only those layers smoothed. 0 disables it.
    grey_fraction: DSLR scenes drawn one-channel (phones: half of them).
    zoom: the image shows 1/zoom of the sensor's width (a crop, or a camera with a smaller downscale), zoom
      drawn log-uniform in this range per scene: blur in pixels grows with it (up to --max-coc). At 320 wide,
      zoom 5.25 is a crop of a DPDD-resolution (1680 wide) photograph; (1, 1): the whole frame (format 2).
      Default (1, 5.25): at 320x208, 40% of pixels blurred by 2 px or more (30% at (1, 1)), input PSNR ~31 dB
      (~34 dB); the demo DPDNet's gain over the input on its test split rose from +0.15 to +0.44 dB.
    demosaic: the fraction of colour (not one-channel) scenes recorded through a Bayer colour-filter pattern
      (one of the four, drawn) and demosaiced by a method drawn from DEMOSAIC_METHODS (OpenCV's bilinear and
      edge-aware), the target with the same pattern and method: a real camera's views are demosaiced, so their
      noise is correlated between neighbouring pixels and colours and their finest detail a little soft.
      Drawn after everything else, so the same seed gives the same scenes with only those demosaiced. Off (0) by
      default: at 0.5 the demo's DPDNet lost more on scenes without demosaicing than it gained on demosaiced ones
      (results/synthetic_ood.md, "Demosaiced views").
    dark_fraction / dark_stops: the fraction of scenes exposed darker, by a number of stops drawn uniformly in
      dark_stops (1-4: the scene's linear light times 1/2 to 1/16, before the noise, so darker scenes are noisier
      for their brightness): phone raw data is often stored far below white, and dim scenes are dark in any
      camera. Drawn after everything else, so the same seed gives the same scenes with only those darkened. 0
      disables it.
    target_noise: False: the all-in-focus target is noise-free; True: the train and val targets carry the combined
      image's own noise (see render_views), so the network learns to undo blur, not to denoise; test targets stay
      noise-free (the truth a result is scored against).
    photos: a folder of sharp photographs ("" for scikit-image's six colour ones, all there is without a download),
      drawn wherever a layer's content is a photograph and for the colours of dead-leaves layers; the real-depth
      motorcycle scene keeps its own. Whatever is in them becomes the target, so they should be in focus and
      clean (each is cropped to 50-100% of its size and resized to the frame, which averages some noise away).
    """
    psf_families: tuple = PSF_FAMILIES
    cameras: tuple = CAMERA_KINDS
    noise_levels: tuple = ("low", "high")
    clean_fraction: float = 0.0
    tones: tuple = TONES
    bits: tuple = (8, 10, 12, 16)
    phone_fraction: float = 0.3
    phone_blur_px: tuple = (0.5, 6.0)
    gamma_range: tuple = (1.8, 2.6)
    imbalance: float = 0.1
    vignetting: float = 0.12
    phone_imbalance: float = 0.4
    phone_vignetting: float = 0.25
    asymmetry: float = 0.15
    cats_eye: float = 0.35
    chroma: float = 0.08
    field: float = 0.0
    field_tilt: float = 0.0
    background_blur: float = 0.0
    soft_content: float = 0.3
    test_soft_content: float | None = 0.1
    soft_sigma: tuple = (0.5, 4.0)
    grey_fraction: float = 0.05
    zoom: tuple = (1.0, 5.25)
    demosaic: float = 0.0
    dark_fraction: float = 0.0
    dark_stops: tuple = (1.0, 4.0)
    target_noise: bool = False
    photos: str = ""

    def validate(self) -> None:
        for name, allowed in (("psf_families", PSF_FAMILIES), ("cameras", CAMERA_KINDS),
                              ("noise_levels", tuple(NOISE_LEVELS)), ("tones", TONES), ("bits", (8, 10, 12, 16))):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise SynthesisError(f"{name}: must be a non-empty choice of {', '.join(map(str, allowed))}, "
                                     f"got {', '.join(map(str, values)) or 'nothing'}")
        if not (len(self.zoom) == 2 and 0 < self.zoom[0] <= self.zoom[1]):
            raise SynthesisError(f"zoom: must be a range (lo, hi) with 0 < lo <= hi, got {self.zoom}")
        if not 0 <= self.field < 1:
            raise SynthesisError(f"field: the cat's-eye cut must be in [0, 1), got {self.field}")
        for name in ("background_blur", "demosaic", "clean_fraction", "dark_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SynthesisError(f"{name}: a fraction of scenes in [0, 1], got {getattr(self, name)}")
        for name in ("soft_content", "test_soft_content"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise SynthesisError(f"{name}: a fraction of layers in [0, 1], got {value}")
        if not (len(self.soft_sigma) == 2 and 0 < self.soft_sigma[0] <= self.soft_sigma[1]):
            raise SynthesisError(f"soft_sigma: must be a range (lo, hi) with 0 < lo <= hi, got {self.soft_sigma}")
        if not 0 <= self.field_tilt < 1:
            raise SynthesisError(f"field_tilt: must be in [0, 1), got {self.field_tilt}")
        if not (len(self.dark_stops) == 2 and 0 <= self.dark_stops[0] <= self.dark_stops[1]):
            raise SynthesisError(f"dark_stops: must be a range (lo, hi) with 0 <= lo <= hi, got {self.dark_stops}")
        for name in ("phone_blur_px", "gamma_range"):
            lo_hi = getattr(self, name)
            if not (len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] < math.inf):
                raise SynthesisError(f"{name}: must be a finite range (lo, hi) with 0 < lo <= hi, got {lo_hi}")
        for name in ("phone_fraction", "grey_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SynthesisError(f"{name}: a fraction of scenes in [0, 1], got {getattr(self, name)}")
        for name in ("imbalance", "vignetting", "phone_imbalance", "phone_vignetting"):
            if not 0 <= getattr(self, name) < math.inf:
                raise SynthesisError(f"{name}: the largest strength, drawn with either sign, must be finite and >= 0, "
                                     f"got {getattr(self, name)}")
        for name in ("asymmetry", "cats_eye", "chroma"):
            if not 0 <= getattr(self, name) < 1:
                raise SynthesisError(f"{name}: must be in [0, 1), got {getattr(self, name)}")

    def for_split(self, split: str) -> "Domain":
        """The domain the scenes of `split` are drawn from: test scenes take test_soft_content where it is set."""
        if split != "test" or self.test_soft_content is None:
            return self
        return dataclasses.replace(self, soft_content=self.test_soft_content, test_soft_content=None)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# Domain settings added after a dataset format, and the value a manifest without them was made with.
DOMAIN_ADDED = {"field": 0.0, "field_tilt": 0.0, "background_blur": 0.0, "soft_content": 0.0,
                "test_soft_content": None, "soft_sigma": list(Domain.soft_sigma), "demosaic": 0.0,
                "clean_fraction": 0.0, "dark_fraction": 0.0, "dark_stops": list(Domain.dark_stops), "photos": ""}


def draw_psf(rng, domain: Domain, phone: bool) -> PsfShape:
    """One scene's PSF shape from the domain's families and ranges (a DSLR's or, with `phone`, a phone's)."""
    family = str(rng.choice(domain.psf_families))
    kw = {"family": family}
    if family == "butterworth":
        kw.update(beta=float(rng.uniform(0.1, 0.2)), order=int(rng.integers(3, 10)), cutoff=float(rng.uniform(0.8, 1.0)))
    elif family in ("soft", "polygon"):
        kw.update(split=float(rng.uniform(0.1, 0.6)), apodize=float(rng.uniform(-0.7, 1.5)),
                  blur=float(rng.uniform(0.02, 0.2)))
        if family == "polygon":
            kw.update(blades=int(rng.integers(5, 10)), rotation=float(rng.uniform(0, np.pi)))
    if rng.random() < 0.3:
        kw.update(cats_eye=float(rng.uniform(0, domain.cats_eye)), cats_angle=float(rng.uniform(0, 2 * np.pi)))
    asym = domain.asymmetry if phone else domain.asymmetry / 2
    if rng.random() < (0.8 if phone else 0.4):
        kw.update(right_scale=float(rng.uniform(1 - asym, 1 + asym)), right_blur=float(rng.uniform(0, 0.1)))
    if rng.random() < 0.5:
        kw.update(chroma=float(rng.uniform(-domain.chroma, domain.chroma)))
    if (domain.field or domain.field_tilt) and rng.random() < 0.4:
        kw.update(field=float(rng.uniform(0, domain.field)),
                  field_tilt=float(rng.uniform(-domain.field_tilt, domain.field_tilt)))
    return PsfShape(**kw)


def _draw_sensor(rng, domain: Domain, phone: bool) -> Sensor:
    imb, vig = (domain.phone_imbalance, domain.phone_vignetting) if phone else (domain.imbalance, domain.vignetting)
    tones = list(domain.tones)
    if phone and "linear" in tones and rng.random() < 0.6:
        tone = "linear"                                   # phone dual-pixel data is mostly raw
    else:
        tone = str(rng.choice(tones))
    preferred = [b for b in ((10, 12) if phone else (8, 16)) if b in domain.bits] or list(domain.bits)
    bits = int(rng.choice(preferred, p=None if phone or len(preferred) != 2 else [0.3, 0.7]))
    return Sensor(imbalance=float(rng.uniform(-imb, imb)), vignetting=float(rng.uniform(-vig, vig)),
                  vig_angle=float(rng.normal(0, 0.3)), vig_curve=float(rng.uniform(-0.5, 0.5)), tone=tone,
                  gamma=float(rng.uniform(*domain.gamma_range)), bits=bits,
                  grey=bool(rng.random() < (0.5 if phone else domain.grey_fraction)))


def _draw_noise(rng, domain: Domain, phone: bool, level: str | None = None) -> tuple[Noise, float]:
    lo, hi = NOISE_LEVELS[level or str(rng.choice(domain.noise_levels))]
    iso = _log_uniform(rng, lo, hi)
    shot, read = 1e-5 * iso / 100, 2.5e-4 * math.sqrt(iso / 100)
    if phone:
        shot, read = 4 * shot, 2 * read
    return Noise(shot=shot, read=read), iso


def sample_scene(rng: np.random.Generator, width: int, height: int, max_coc_px: float,
                 category: str | None = None, domain: Domain = Domain()) -> SceneSpec:
    """Draw one scene: the camera kind (DSLR or phone, see Domain), content and layout, a camera over a DSLR
    range (35-85 mm, f/1.8-f/5.6, focus 1-10 m, 5D Mark IV pitch) focused on one of its surfaces, depths that
    keep every blur within max_coc_px (a phone scene: within its own, smaller limit), noise, PSF shape and
    sensor. Outdoor scenes need a camera whose blur at 20 m fits; the real-depth motorcycle scene draws
    cameras until its depth range fits, and as a last resort pulls depths towards the focal plane.
    `category` (indoor: backgrounds within 8 m; outdoor: 20 m or more) is drawn when None."""
    h, w = height, width
    downscale = SENSOR_WIDTH_PX / width
    if category is None:
        category = "outdoor" if rng.random() < 0.5 else "indoor"
    if category not in ("indoor", "outdoor"):
        raise ValueError(f"category must be indoor or outdoor, got {category!r}")
    phone = "phone" in domain.cameras and ("dslr" not in domain.cameras or rng.random() < domain.phone_fraction)
    if phone:
        max_coc_px = min(max_coc_px, _log_uniform(rng, *domain.phone_blur_px))
    if domain.zoom[1] > domain.zoom[0]:
        downscale /= _log_uniform(rng, *domain.zoom)
    else:
        downscale /= domain.zoom[0]
    kinds = ["motorcycle", "layers", "leaves", "planes"]   # the motorcycle's real depth is indoors, 2-5 m
    kind = str(rng.choice(kinds, p=[0.3, 0.3, 0.2, 0.2] if category == "indoor" else [0.0, 0.4, 0.3, 0.3]))
    if kind == "motorcycle":
        photo = _photos()["motorcycle_left"]
        depth = _motorcycle_depth()
        y0, x0, ch, cw = _crop_box(rng, *depth.shape, h, w, 0.55)
        colour = _resize(photo[y0:y0 + ch, x0:x0 + cw], h, w)
        inv = (1.0 / _resize(depth[y0:y0 + ch, x0:x0 + cw], h, w, nearest=True)).astype(np.float32)
        if rng.random() < 0.5:
            colour, inv = colour[:, ::-1], inv[:, ::-1]
        inv_focus = float(inv.flat[int(rng.integers(inv.size))])      # focus on a random point of the scene
        spread = float(np.max(np.abs(1.0 - inv / inv_focus)))      # c = K * (1 - S / d)
        cam = _draw_camera(rng, (1 / inv_focus, 1 / inv_focus), downscale,
                           lambda c: float(c.coc(np.inf)) * spread <= max_coc_px)
        k = float(cam.coc(np.inf))
        if k * spread > max_coc_px:
            inv = inv_focus + (inv - inv_focus) * (max_coc_px / (k * spread))
        raw = [(_jitter(rng, np.clip(colour, 0, 1)), np.ones((h, w), np.float32), inv)]
    else:
        if category == "outdoor":
            cam = _draw_camera(rng, FOCUS_M[category], downscale, lambda c: float(c.coc(20.0)) <= max_coc_px)
        else:
            cam = _draw_camera(rng, FOCUS_M[category], downscale)
        if not phone and domain.background_blur and rng.random() < domain.background_blur:
            cam = with_background_blur(cam, _log_uniform(rng, max_coc_px / 3, max_coc_px), width)
        raw = _procedural_scene(rng, h, w, kind, category, cam, max_coc_px, domain.photos)
    layers = []
    for colour, alpha, inv in raw:
        inv = np.asarray(inv, np.float64)
        with np.errstate(divide="ignore"):
            depth = np.where(inv > 0, 1.0 / np.maximum(inv, 1e-12), np.inf)
        layers.append(Layer(colour, alpha, float(depth) if depth.ndim == 0 else depth.astype(np.float32)))
    depths = np.concatenate([np.ravel(l.depth_m)[np.ravel(np.broadcast_to(l.alpha, (h, w)) > 0)]
                             if np.ndim(l.depth_m) else [l.depth_m] for l in layers])
    near, far = float(np.min(depths)), float(np.max(depths))
    category = "outdoor" if far >= OUTDOOR_MIN_FAR_M else "indoor"
    noise, iso = _draw_noise(rng, domain, phone)
    psf = draw_psf(rng, domain, phone)
    sensor = _draw_sensor(rng, domain, phone)
    if sensor.grey:                                # one-channel data: the green channel everywhere
        layers = [dataclasses.replace(l, colour=np.repeat(l.colour[..., 1:2], 3, axis=2)) for l in layers]
    if domain.soft_content:
        layers = [soften(rng, l, domain) for l in layers]
    if domain.demosaic and not sensor.grey and rng.random() < domain.demosaic:
        sensor = dataclasses.replace(sensor, demosaic=str(rng.choice(list(DEMOSAIC_METHODS))),
                                     bayer=str(rng.choice(list(BAYER_PATTERNS))))
    if domain.clean_fraction and rng.random() < domain.clean_fraction:
        noise, iso = _draw_noise(rng, domain, phone, "clean")
    if domain.dark_fraction and rng.random() < domain.dark_fraction:
        sensor = dataclasses.replace(sensor, exposure=2.0 ** -float(rng.uniform(*domain.dark_stops)))
    return SceneSpec(kind, category, layers, cam, noise, 0.0, psf, (near, far), sensor, "phone" if phone else "dslr", iso)


def soften(rng, layer: Layer, domain: Domain) -> Layer:
    """The layer with its content smoothed (with probability Domain.soft_content) and its silhouette kept."""
    if rng.random() >= domain.soft_content:
        return layer
    sigma = _log_uniform(rng, *domain.soft_sigma)
    return dataclasses.replace(layer, colour=cv2.GaussianBlur(layer.colour, (0, 0), sigma,
                                                              borderType=cv2.BORDER_REFLECT))


# ----------------------------------------------------------------------------------------------- dataset

def scene_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator per (seed, split, scene), so any worker makes any scene identically."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index), stream]))


def scene_names(split: str, index: int) -> tuple[str, str]:
    """(source, target) file stems; both sort by scene index, so list_scenes pairs them by position."""
    base = f"syn_{split}_{index:05d}"
    return base + "_s", base + "_t"


def scene_paths(root: str, split: str, index: int) -> dict[str, str]:
    src, tgt = scene_names(split, index)
    names = {"source": src + ".png", "target": tgt + ".png", "left": src + "_L.png", "right": src + "_R.png"}
    return {key: os.path.join(folder, names[key]) for key, folder in split_folders(root, split).items()}


def make_scene(seed: int, split: str, index: int, width: int, height: int, max_coc_px: float,
               render: bool = True, domain: Domain = Domain()) -> tuple[dict[str, np.ndarray], dict]:
    """Sample and (if `render`) render one scene: images {source, target, left, right, defocus (|CoC| in px
    per pixel)} and its metadata."""
    category = ("indoor", "outdoor")[index % 2]         # alternate, so every split is balanced
    domain = domain.for_split(split)
    scene = sample_scene(scene_rng(seed, split, index), width, height, max_coc_px, category, domain)
    coc = visible_coc(scene.layers, scene.camera)
    src, tgt = scene_names(split, index)
    meta = {"split": split, "index": index, "source": src, "target": tgt, "category": scene.category,
            "kind": scene.kind, "focal_mm": round(scene.camera.focal_mm, 2),
            "f_number": round(scene.camera.f_number, 2), "focus_m": round(scene.camera.focus_m, 3),
            "near_m": round(scene.depth_range_m[0], 3), "far_m": round(scene.depth_range_m[1], 3),
            "max_abs_coc_px": round(float(np.abs(coc).max()), 2),
            "defocused_fraction": round(float((np.abs(coc) >= DEFOCUS_VISIBLE_PX).mean()), 4),
            "camera": scene.camera_kind, "psf": scene.psf.family, "iso": round(scene.iso, 2),
            "tone": scene.sensor.tone, "bits": scene.sensor.bits, "grey": int(scene.sensor.grey),
            "lr_ratio": round(math.exp(scene.sensor.imbalance), 3), "psf_field": round(scene.psf.field, 3),
            "psf_field_tilt": round(scene.psf.field_tilt, 3), "demosaic": scene.sensor.demosaic or "none",
            "bayer": scene.sensor.bayer if scene.sensor.demosaic else "",
            "exposure": round(scene.sensor.exposure, 4)}
    if not render:
        return {}, meta
    left, right, combined, sharp = render_views(scene.layers, scene.camera, scene.noise, scene.vignetting,
                                                scene.psf, rng=scene_rng(seed, split, index, stream=1),
                                                sensor=scene.sensor,
                                                target_noise=domain.target_noise and split != "test")
    return {"source": combined, "target": sharp, "left": left, "right": right,
            "defocus": np.abs(coc).astype(np.float32)}, meta


def _scene_task(args) -> tuple[dict, bool]:
    root, seed, split, index, width, height, max_coc_px, domain = args
    paths = scene_paths(root, split, index)
    done = all(os.path.isfile(p) for p in paths.values())
    images, meta = make_scene(seed, split, index, width, height, max_coc_px, render=not done, domain=domain)
    for key in ("target", "left", "right", "source"):
        if not done:
            write_image(paths[key], images[key], bits=16)
    return meta, not done


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is handled once, by the parent
    cv2.setNumThreads(1)


def default_max_coc(width: int) -> float:
    """Largest blur diameter: 24 px at 560 wide (radius 12), scaled with the width."""
    return 24.0 * width / 560.0


def settings(seed: int, width: int, height: int, max_coc_px: float, domain: Domain = Domain()) -> dict:
    """What a dataset folder is made with (its synthesize.json), so that a resumed run makes the same dataset;
    with `photos`, also how many the folder holds (a folder that gained or lost some draws other scenes)."""
    out = {"generator": "synthesize.py", "format_version": FORMAT_VERSION, "seed": seed, "width": width,
           "height": height, "max_coc_px": max_coc_px, "domain": domain.to_dict()}
    if domain.photos:
        out["photo_files"] = len(photo_files(domain.photos))
    return out


def synthesize(out_root: str, n_train: int = 100, n_val: int = 10, n_test: int = 20, width: int = 560,
               height: int = 368, seed: int = 0, workers: int = 2, max_coc_px: float | None = None,
               progress: bool = True, domain: Domain = Domain()) -> dict:
    """Write (or complete) a synthetic DP dataset in the DPDD layout under out_root and return a summary.

    Scenes whose four files exist are kept, so an interrupted run resumes; settings other than the counts must
    match the folder's synthesize.json. Raises SynthesisError (one line) for bad arguments or a clashing folder.
    """
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    for split, n in counts.items():
        if not 0 <= n <= 99999:
            raise SynthesisError(f"--{split}: scene count must be 0-99999, got {n}")
    if sum(counts.values()) == 0:
        raise SynthesisError("nothing to make: all scene counts are 0")
    if width < 32 or height < 32:
        raise SynthesisError(f"image size {width}x{height}: width and height must be at least 32")
    if workers < 1:
        raise SynthesisError(f"--workers: must be at least 1, got {workers}")
    max_coc_px = float(default_max_coc(width) if max_coc_px is None else max_coc_px)
    if max_coc_px <= 0:
        raise SynthesisError(f"--max-coc: must be positive, got {max_coc_px}")
    domain.validate()
    root = os.path.abspath(out_root)
    want = settings(int(seed), int(width), int(height), max_coc_px, domain)
    manifest = os.path.join(root, "synthesize.json")
    check_output_folder(root, manifest, want, counts)
    os.makedirs(root, exist_ok=True)
    for folder, _, names in os.walk(root):           # leftovers of writes cut off by an interruption
        for name in names:
            if is_temporary(name):
                os.remove(os.path.join(folder, name))
    atomic_write_json(manifest, {**want, "counts": counts})
    tasks = [(root, int(seed), split, i, int(width), int(height), max_coc_px, domain)
             for split in SPLITS for i in range(counts[split])]
    from tqdm import tqdm
    start = time.time()
    metas, written = [], 0
    with tqdm(total=len(tasks), desc="synthesize", unit="scene", disable=not progress) as bar, \
            _scene_results(tasks, workers) as results:
        for meta, wrote in results:
            metas.append(meta)
            written += wrote
            bar.update()
    seconds = time.time() - start
    metas.sort(key=lambda m: (SPLITS.index(m["split"]), m["index"]))
    columns = list(metas[0])
    atomic_write_csv(os.path.join(root, "scenes.csv"), columns, [[m[c] for c in columns] for m in metas])
    tests = [m for m in metas if m["split"] == "test"]
    if tests:
        atomic_write_csv(os.path.join(root, "test_categories.csv"), ["index", "source", "target", "category"],
                         [[i + 1, m["source"], m["target"], m["category"]] for i, m in enumerate(tests)])
    categories = {c: sum(m["category"] == c for m in tests) for c in ("indoor", "outdoor")}
    return {"root": root, "counts": counts, "written": written, "skipped": len(tasks) - written,
            "seconds": round(seconds, 2), "test_categories": categories,
            "defocused_fraction": round(float(np.mean([m["defocused_fraction"] for m in metas])), 4),
            "settings": want}


def check_output_folder(root: str, manifest: str, want: dict, counts: dict) -> None:
    """SynthesisError unless root is new or was made by synthesize.py with the same settings and no more scenes
    than asked for: a resumed run must complete the same dataset, never mix two."""
    if os.path.isfile(manifest):
        with open(manifest) as f:
            have = json.load(f)
        clash = [(k, have.get(k), want[k]) for k in changed_keys(have, want, ignore=("domain",))]
        old_domain = have.get("domain", {})
        clash += [(f"domain.{k}", old_domain.get(k, DOMAIN_ADDED.get(k)), want["domain"][k])
                  for k in changed_keys(old_domain, want["domain"], defaults=DOMAIN_ADDED)]
        if clash:
            key, was, now = clash[0]
            raise SynthesisError(f"{manifest}: folder was made with {key}={was!r}, not {now!r}; use another --out "
                                 f"or remove the folder")
    elif os.path.isdir(root) and any(os.path.isdir(os.path.join(root, f"{s}_c")) for s in SPLITS):
        raise SynthesisError(f"{root}: holds a dataset not made by synthesize.py (no synthesize.json); use another --out")
    for split, n in counts.items():
        src_dir = split_folders(root, split)["source"]
        if os.path.isdir(src_dir):
            extra = sorted(f for f in os.listdir(src_dir) if f.endswith(".png") and not f.startswith(".")
                           and f.startswith(f"syn_{split}_") and int(f.split("_")[2]) >= n)
            if extra:
                raise SynthesisError(f"{os.path.join(src_dir, extra[0])}: beyond the {n} {split} scenes asked for "
                                     f"(left by a larger run); use another --out or ask for at least as many")


@contextlib.contextmanager
def _scene_results(tasks: list, workers: int):
    """The (meta, written) of each scene task, made in this process or over `workers` spawned ones."""
    if workers == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield map(_scene_task, tasks)
        finally:
            cv2.setNumThreads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")   # no fork: the caller may hold TensorFlow threads
        with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
            yield pool.imap_unordered(_scene_task, tasks, chunksize=1)


def domain_from_args(args) -> Domain:
    """The Domain of the command line: its own flags (--psf-families, --field, --soft-content, ...) and --domain
    KEY=VALUE for every other Domain setting; a bad value is a SynthesisError."""
    def items(text, kind=str):
        try:
            return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
        except ValueError:
            raise SynthesisError(f"cannot read {text!r} as a comma-separated list") from None
    return Domain(psf_families=items(args.psf_families), cameras=items(args.cameras),
                  noise_levels=items(args.noise_levels), tones=items(args.tones), bits=items(args.bits, int),
                  field=args.field, field_tilt=args.field_tilt, background_blur=args.background_blur,
                  soft_content=args.soft_content, test_soft_content=args.test_soft_content, demosaic=args.demosaic,
                  clean_fraction=args.clean_fraction, dark_fraction=args.dark_fraction,
                  photos=os.path.abspath(args.photos) if args.photos else "",
                  **domain_overrides(args.domain, flagged=set(vars(args))))


def domain_overrides(items: list[str], flagged: set = frozenset()) -> dict:
    """{setting: value} of --domain KEY=VALUE items, each read as the type of that Domain field's default (ranges
    comma-separated); a setting in `flagged` has its own flag and is refused here, so that each is set one way."""
    fields = {f.name: f for f in dataclasses.fields(Domain)}
    out = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep:
            raise SynthesisError(f"--domain expects KEY=VALUE, got {item!r}")
        if key not in fields:
            raise SynthesisError(f"--domain: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        if key in flagged:
            raise SynthesisError(f"--domain {key}: set it with --{key.replace('_', '-')}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                out[key] = text.lower() in ("true", "1", "yes", "on")
            elif isinstance(default, tuple):
                out[key] = tuple(type(default[0])(t.strip()) for t in text.split(",") if t.strip())
            else:
                out[key] = type(default)(text)
        except ValueError:
            raise SynthesisError(f"--domain {key}: cannot read {text!r} as the type of its default "
                                 f"{default!r}") from None
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO_DIR, "synthetic_dpdd"),
                        help="dataset root to write (default: synthetic_dpdd in the repository)")
    parser.add_argument("--train", type=int, default=100, help="training scenes (default 100)")
    parser.add_argument("--val", type=int, default=10, help="validation scenes (default 10)")
    parser.add_argument("--test", type=int, default=20, help="test scenes (default 20)")
    parser.add_argument("--width", type=int, default=560, help="image width in pixels (default 560)")
    parser.add_argument("--height", type=int, default=368, help="image height in pixels (default 368)")
    parser.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--max-coc", type=float, default=None,
                        help="largest blur diameter in pixels (default 24 at 560 wide, scaled with the width)")
    d = Domain()
    for flag, default in (("--psf-families", d.psf_families), ("--cameras", d.cameras),
                          ("--noise-levels", d.noise_levels), ("--tones", d.tones), ("--bits", d.bits)):
        parser.add_argument(flag, default=",".join(map(str, default)),
                            help=f"comma-separated choice drawn per scene (default {','.join(map(str, default))}; "
                                 f"see Domain in synthesize.py)")
    parser.add_argument("--field", type=float, default=d.field,
                        help="PSFs that change across the frame, in 40%% of scenes: the largest cat's-eye cut at the "
                             "left and right edges (e.g. 0.35; default 0: off; see Domain)")
    parser.add_argument("--field-tilt", type=float, default=d.field_tilt,
                        help="... and the largest change of the right PSF's relative size there (e.g. 0.15; default 0)")
    parser.add_argument("--background-blur", type=float, default=d.background_blur,
                        help=f"fraction of DSLR scenes whose background is blurred by a third of --max-coc to all "
                             f"of it (default {d.background_blur:g}; see Domain)")
    parser.add_argument("--soft-content", type=float, default=d.soft_content,
                        help=f"fraction of layers whose content is smoothed by a Gaussian of sigma "
                             f"{d.soft_sigma[0]:g}-{d.soft_sigma[1]:g} px, in focus or not (default {d.soft_content:g}; "
                             f"see Domain)")
    parser.add_argument("--test-soft-content", type=float, default=d.test_soft_content,
                        help=f"... in the test scenes (default {d.test_soft_content:g}; see Domain)")
    parser.add_argument("--demosaic", type=float, default=d.demosaic,
                        help=f"fraction of colour scenes recorded through a Bayer pattern and demosaiced "
                             f"(default {d.demosaic:g}; see Domain)")
    parser.add_argument("--clean-fraction", type=float, default=d.clean_fraction,
                        help=f"fraction of scenes with little or no noise (ISO 0.01-100) whatever --noise-levels says "
                             f"(default {d.clean_fraction:g}; see Domain)")
    parser.add_argument("--dark-fraction", type=float, default=d.dark_fraction,
                        help=f"fraction of scenes exposed {d.dark_stops[0]:g}-{d.dark_stops[1]:g} stops darker, before "
                             f"the noise (default {d.dark_fraction:g}; see Domain)")
    parser.add_argument("--photos", default=d.photos, metavar="DIR",
                        help="a folder of your own sharp photographs (png, tif, jpg, bmp, webp; 8 or 16 bit, RGB or "
                             "grey), drawn as the photographic content instead of scikit-image's six (see Domain)")
    parser.add_argument("--domain", action="append", default=[], metavar="KEY=VALUE",
                        help="any other Domain setting, repeatable: e.g. --domain phone_fraction=0.5 --domain "
                             "zoom=1,3 --domain target_noise=true (ranges and choices comma-separated; the "
                             "settings, their defaults and meanings: Domain in synthesize.py)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.max_coc is None:
        args.max_coc = default_max_coc(args.width)   # the value synthesize() would use, so the line says it
    print("settings: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in vars(args).items()))
    with exit_on_error(interrupted="interrupted: finished scenes are kept; run the same command again to resume"):
        summary = synthesize(args.out, args.train, args.val, args.test, args.width, args.height, args.seed,
                             args.workers, args.max_coc, progress=not args.no_progress, domain=domain_from_args(args))
    print(f"{summary['root']}: wrote {summary['written']} scenes, kept {summary['skipped']} "
          f"in {summary['seconds']:.1f} s; test categories {summary['test_categories']}; "
          f"mean fraction of pixels with blur >= {DEFOCUS_VISIBLE_PX:g} px: {summary['defocused_fraction']:.2f}")


if __name__ == "__main__":
    main()
