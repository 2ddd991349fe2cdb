"""A second, independently written dual-pixel renderer, used only to check that models trained on synthesize.py
data are not just learning synthesize.py (ood_check.py, tests/test_ood.py). It shares no code with
synthesize.py and models the optics another way on purpose (a caller may pass other PSFs in, as ood_check.py
does for its twin sets):

- PSFs by ray sampling: points drawn uniformly over a round or polygonal aperture, each split between the
  left and right photodiodes by a soft (logistic) weight on its horizontal position, splatted bilinearly
  onto the pixel grid, so the halves have soft, uneven edges and a little sampling noise.
- Content without scikit-image: sums of random oriented sinusoids, random-walk noise, checks and blobs; or, on
  request, rendered text (text_content: lines of random characters in OpenCV's Hershey fonts), content that
  synthesize.py does not draw.
- Scenes as 2-4 fronto-parallel planes with a signed blur diameter drawn directly (no thin-lens camera),
  one plane always in focus, composited back to front in linear light with FFT convolution (scipy). The signed
  blur falls from the back plane to the front one, as depth orders it in any camera: planes behind the
  in-focus one are blurred behind focus, planes in front of it in front of focus.
- Poisson-Gaussian noise from a photon count, a left/right gain ratio and sRGB, gamma 2.2 or linear output.
- On request (exposure < 1) a dimmer scene: the light times that factor before the noise, the sharp image too.
- On request (demosaic=True) a camera's raw conversion: the noise drawn per photosite of a Bayer mosaic (one of
  its four phases) and the colours interpolated back by Malvar, He and Cutler's linear filters (ICASSP 2004).

Sign convention as in DPDD: behind the focal plane (positive blur) the left view's PSF lies left of centre.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import correlate
from scipy.signal import fftconvolve


def aperture_psfs(diameter: float, rng: np.random.Generator, blades: int = 0, softness: float = 0.2,
                  samples: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) PSFs for a signed blur diameter in pixels, odd square, each summing to 1."""
    if abs(diameter) < 0.5:
        one = np.ones((1, 1))
        return one, one.copy()
    r = abs(diameter) / 2
    pts = rng.uniform(-1, 1, (samples * 2, 2))
    if blades >= 3:
        ang = np.arange(blades) * 2 * np.pi / blades + rng.uniform(0, np.pi)
        inside = np.max(pts @ np.stack([np.cos(ang), np.sin(ang)]), axis=1) <= np.cos(np.pi / blades)
    else:
        inside = (pts ** 2).sum(axis=1) <= 1
    pts = pts[inside][:samples]
    w_left = 1 / (1 + np.exp(pts[:, 0] / max(softness, 1e-3)))   # left photodiode: left part of the aperture
    if diameter < 0:
        pts = -pts                                                 # in front of focus the image turns over
    xy = pts * r
    half = int(np.ceil(r)) + 2
    size = 2 * half + 1
    out = []
    for w in (w_left, 1 - w_left):
        k = np.zeros((size, size))
        x, y = xy[:, 0] + half, xy[:, 1] + half
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            np.add.at(k, (y0 + dy, x0 + dx), w * ww)
        out.append(k / k.sum())
    return out[0], out[1]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    kind = rng.integers(4)
    if kind == 0:                           # oriented sinusoids
        g = sum(np.sin(2 * np.pi * (f * (np.cos(a) * xx + np.sin(a) * yy)) + p)
                for f, a, p in zip(rng.uniform(2, 40, 6), rng.uniform(0, np.pi, 6), rng.uniform(0, 6.3, 6)))
    elif kind == 1:                         # random walk (brown noise)
        g = np.cumsum(np.cumsum(rng.standard_normal((h, w)), axis=0), axis=1)
        g -= g.mean(axis=0, keepdims=True) + g.mean(axis=1, keepdims=True)
    elif kind == 2:                         # checks
        n = rng.uniform(4, 30)
        g = (np.floor(xx * n) + np.floor(yy * n)) % 2 + 0.3 * rng.standard_normal((h, w))
    else:                                   # blobs
        g = np.zeros((h, w))
        for _ in range(40):
            cy, cx, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.01, 0.1)
            g += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    g = (g - g.min()) / (np.ptp(g) + 1e-9)
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return a + (b - a) * g[..., None]


FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:-"


def text_content(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A page of text: lines of 10-60 random characters in a random Hershey font, 0.3-1.4 scale, 1-2 px strokes,
    anti-aliased, in one colour on another, top to bottom of the frame; display values (H, W, 3) in [0, 1]."""
    bg, fg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg
    y = int(rng.integers(0, 12))
    while y < h + 10:
        font, scale, thick = FONTS[int(rng.integers(len(FONTS)))], float(rng.uniform(0.3, 1.4)), int(rng.integers(1, 3))
        line = "".join(rng.choice(list(CHARS), int(rng.integers(10, 60))))
        (_, th), base = cv2.getTextSize(line, font, scale, thick)
        y += th + int(rng.integers(2, 10))
        cv2.putText(img, line, (int(rng.integers(-40, 20)), y), font, scale, tuple(float(c) for c in fg), thick,
                    cv2.LINE_AA)
        y += base
    return img


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
    if rng.random() < 0.5:
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        return np.clip((1 - d) * min(rx, ry) / 2, 0, 1)
    return np.clip(np.minimum(rx - abs(xx - cx), ry - abs(yy - cy)) + 0.5, 0, 1)


def _encode(lin: np.ndarray, tone: str) -> np.ndarray:
    lin = np.clip(lin, 0, 1)
    if tone == "linear":
        return lin
    if tone == "gamma":
        return lin ** (1 / 2.2)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


# Malvar-He-Cutler demosaicing filters (x 1/8): green at red or blue sites; red at green sites in a red row
# (ROW) or a red column (COL, its transpose); red at blue sites (blue alike, the roles swapped).
_MHC_G = np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]]) / 8
_MHC_ROW = np.array([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]]) / 8
_MHC_COL = _MHC_ROW.T
_MHC_DIAG = np.array([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0],
                      [0, 0, -1.5, 0, 0]]) / 8


def bayer_masks(h: int, w: int, phase: int) -> dict:
    """Boolean (H, W) masks of the red, green and blue sites of an RGGB mosaic shifted by phase (0-3: down
    phase // 2 rows and right phase % 2 columns), so every phase is one of the four Bayer patterns."""
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = (yy + phase // 2) % 2, (xx + phase % 2) % 2
    return {"r": (yy == 0) & (xx == 0), "g": yy != xx, "b": (yy == 1) & (xx == 1)}


def demosaic_mhc(lin: np.ndarray, phase: int) -> np.ndarray:
    """Sample a linear (H, W, 3) image through the Bayer mosaic of `phase` and interpolate the missing colours
    with Malvar-He-Cutler; the frame's edges mirrored (which keeps the mosaic's period)."""
    h, w = lin.shape[:2]
    m = bayer_masks(h, w, phase)
    raw = lin[..., 0] * m["r"] + lin[..., 1] * m["g"] + lin[..., 2] * m["b"]
    f = {name: correlate(raw, k, mode="mirror") for name, k in
         (("g", _MHC_G), ("row", _MHC_ROW), ("col", _MHC_COL), ("diag", _MHC_DIAG))}
    red_row = np.any(m["r"], axis=1)[:, None]                 # rows holding red sites (the others blue)
    out = np.empty_like(lin)
    out[..., 1] = np.where(m["g"], raw, f["g"])
    for c, own, other in ((0, m["r"], m["b"]), (2, m["b"], m["r"])):
        in_own_row = red_row if c == 0 else ~red_row
        at_green = np.where(in_own_row, f["row"], f["col"])
        out[..., c] = np.where(own, raw, np.where(other, f["diag"], at_green))
    return np.clip(out, 0, 1)


def render_scene(rng: np.random.Generator, h: int = 208, w: int = 320, max_blur: float = 12.0,
                 tone: str | None = None, noise: bool = True, content=None, psfs=None, demosaic: bool = False,
                 exposure: float = 1.0) -> dict:
    """One scene: float32 'left', 'right', 'combined', 'sharp' (H, W, 3) in [0, 1] and 'blur' (H, W), the
    |blur diameter| in pixels of the surface seen at each pixel, plus a description. noise=False: the same
    scene without its photon and read noise. content(rng, h, w): another source of plane textures (display
    values in [0, 1], (H, W, 3)) instead of this renderer's own. psfs(signed blur) -> (left, right): other optics'
    PSFs in place of this renderer's, every other draw the same, so the two renders differ only in the PSFs.
    demosaic: the views, the combined image and the sharp one through a Bayer mosaic and Malvar-He-Cutler
    (demosaic_mhc), the noise drawn per photosite; drawn after everything else, so the scene is otherwise the
    same. exposure: the scene's linear light (and the sharp image's) times this before the noise, as a dimmer
    scene at the same photon count at white: darker, and noisier for its brightness."""
    n_planes = int(rng.integers(2, 5))
    sizes = np.sort(rng.uniform(0, max_blur, n_planes - 1))[::-1]   # |blur| of the planes out of focus
    focus = int(rng.integers(n_planes))                        # one surface in focus; planes go back to front,
    blurs = np.concatenate([sizes[:focus], [0.0], -np.sort(sizes[focus:])])   # so the signed blur falls
    blades = int(rng.choice([0, 0, 5, 6, 8]))
    softness = float(rng.uniform(0.05, 0.5))
    tone = tone or str(rng.choice(["srgb", "gamma", "linear"]))
    lin_left, lin_right, sharp = np.zeros((h, w, 3)), np.zeros((h, w, 3)), np.zeros((h, w, 3))
    blur_map = np.zeros((h, w))
    for i, b in enumerate(blurs):               # back (index 0, full frame) to front
        colour = np.clip((content or _texture)(rng, h, w), 0, 1) ** 2.2
        alpha = np.ones((h, w)) if i == 0 else _shape_mask(rng, h, w)
        sharp = colour * alpha[..., None] + sharp * (1 - alpha[..., None])
        blur_map = abs(b) * alpha + blur_map * (1 - alpha)
        kl, kr = aperture_psfs(b, rng, blades, softness)          # drawn either way: the same stream
        if psfs is not None:
            kl, kr = psfs(b)
        layer = np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=2)
        for out, k in ((lin_left, kl), (lin_right, kr)):
            p = k.shape[0] // 2                                    # mirror the frame's edges, no dark rim
            padded = np.pad(layer, ((p, p), (p, p), (0, 0)), mode="symmetric")
            blurred = np.stack([fftconvolve(padded[..., c], k, mode="valid") for c in range(4)], axis=2)
            out[:] = blurred[..., :3] + out * (1 - blurred[..., 3:4])
    ratio = float(np.exp(rng.uniform(-0.25, 0.25)))
    lin_left, lin_right = lin_left * np.sqrt(ratio) * exposure, lin_right / np.sqrt(ratio) * exposure
    sharp = sharp * exposure
    photons = float(10 ** rng.uniform(2.5, 4.5))                # photons at white per view
    noisy = [rng.poisson(np.clip(v, 0, None) * photons) / photons + rng.normal(0, 0.002, v.shape)
             for v in (lin_left, lin_right)] if noise else [lin_left, lin_right]
    combined = (noisy[0] + noisy[1]) / 2
    phase = None
    if demosaic:
        phase = int(rng.integers(4))
        noisy, combined, sharp = ([demosaic_mhc(v, phase) for v in noisy], demosaic_mhc(combined, phase),
                                  demosaic_mhc(sharp, phase))
    out = {k: _encode(v, tone).astype(np.float32) for k, v in
           (("left", noisy[0]), ("right", noisy[1]), ("combined", combined), ("sharp", sharp))}
    out["blur"] = blur_map.astype(np.float32)
    out["desc"] = {"blurs": [round(float(b), 2) for b in blurs], "blades": blades, "softness": round(softness, 3),
                   "tone": tone, "lr_ratio": round(ratio, 3), "photons": round(photons) if noise else None,
                   "bayer_phase": phase}
    return out


def render_set(n: int, seed: int = 1234, h: int = 208, w: int = 320, max_blur: float = 12.0, noise: bool = True,
               content=None, psfs=None, demosaic: bool = False, exposure: float = 1.0) -> list[dict]:
    """n scenes, deterministic for the seed (and the same scenes with or without noise, or with other PSFs).
    psfs(i): scene i's render_scene psfs."""
    return [render_scene(np.random.default_rng([seed, i]), h, w, max_blur, noise=noise, content=content,
                         psfs=None if psfs is None else psfs(i), demosaic=demosaic, exposure=exposure)
            for i in range(n)]
