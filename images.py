"""Image reading and writing for the whole project: bit depth detected from the file, the black and white levels
of raw data, RGB order in memory (OpenCV's BGR never leaves this file), and reflection padding to a multiple of
2**depth."""

from __future__ import annotations

import os

import cv2
import numpy as np

from config import UserError
from fileio import atomic_path

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
# what synthesize.py --photos also reads as content: photographs are often JPEG
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS + (".jpg", ".jpeg", ".bmp", ".webp")


class ImageError(UserError):
    """An image that cannot be used; the message names the file and what is wrong."""


def read_image(path: str, allow_grey: bool = False) -> np.ndarray:
    """Read an RGB image unchanged: uint8 or uint16 (H, W, 3). Grayscale (returned as (H, W, 1) when
    allow_grey), alpha or other depths are errors."""
    if not os.path.isfile(path):
        raise ImageError(f"{path}: file not found")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: unreadable or truncated image (OpenCV could not decode it)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if allow_grey and img.ndim == 2:
        return img[:, :, None].copy()
    if img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        expected = "3 (RGB) or 1" if allow_grey else "3 (RGB)"
        raise ImageError(f"{path}: has {channels} channel(s), expected {expected}")
    return img[:, :, ::-1].copy()


# Bit depth <-> pixel type and largest value, for every script: 8-bit images are divided by 255, 16-bit by 65535.
DTYPES = {8: np.uint8, 16: np.uint16}


def peak(bits: int) -> int:
    """The largest value of a `bits`-bit image (white): 255, 1023, 4095, 65535."""
    return 2 ** bits - 1


def bit_depth(img: np.ndarray) -> int:
    """8 or 16, from the array's pixel type."""
    for bits, dtype in DTYPES.items():
        if img.dtype == dtype:
            return bits
    raise ImageError(f"unsupported pixel type {img.dtype}")


def max_value(img: np.ndarray) -> int:
    """255 for 8-bit, 65535 for 16-bit: the divisor that maps the image to [0, 1]."""
    return peak(bit_depth(img))


def to_float(img: np.ndarray, black: int = 0, white: int | None = None) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]: (value - black) / (white - black), white the bit depth's maximum unless
    given (raw data: `levels`); values outside the two levels are clipped."""
    if black == 0 and white is None:
        return img.astype(np.float32) / np.float32(max_value(img))
    top = max_value(img) if white is None else white
    return np.clip((img.astype(np.float32) - np.float32(black)) / np.float32(top - black), 0.0, 1.0)


def quantize(img: np.ndarray, bits: int = 16, black: int = 0, white: int | None = None) -> np.ndarray:
    """Float [0, 1] -> uint8/uint16 between the levels black and white (default 0 and the bit depth's maximum),
    clamped and rounded (the authors truncated)."""
    if bits not in DTYPES:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = peak(bits) if white is None else white
    if not 0 <= black < top <= peak(bits):
        raise ValueError(f"levels black {black}, white {top} do not fit a {bits}-bit image")
    return np.rint(np.clip(img, 0.0, 1.0) * (top - black) + black).astype(DTYPES[bits])


# Raw sensor data is often stored unscaled in 16-bit files: a 10- or 12-bit sensor's values fill only the low bits
# (white 1023 or 4095), and black is the sensor's black level rather than 0.
RAW_BITS = (10, 12)


def white_from_values(bits: int, high: int) -> int:
    """The white level of `bits`-bit data whose largest value is `high`: the bit depth's maximum, except for 16-bit
    data whose values all fit in 10 or 12 bits, taken as raw data stored unscaled: 1023 or 4095. A gamma-encoded
    photo that dark is black; a dim linear export or an under-exposed raw frame of more bits is misread."""
    if bits == 16:
        for raw in RAW_BITS:
            if high <= peak(raw):
                return peak(raw)
    return peak(bits)


def levels(*images: np.ndarray, black: int = 0, white: int | None = None, name: str = "") -> tuple[int, int]:
    """(black, white): the values that mean black and white in these images; white as given, else found from their
    values (`white_from_values`). ImageError unless 0 <= black < white <= the bit depth's maximum."""
    bits, where = bit_depth(images[0]), f"{name}: " if name else ""
    found = white is None
    if found:
        white = white_from_values(bits, max(int(img.max()) for img in images))
    if not 0 < white <= peak(bits):
        raise ImageError(f"{where}white level {white} is outside 1..{peak(bits)}, the range of {bits}-bit images")
    if not 0 <= black < white:
        how = (f" (found from the values: {white.bit_length()}-bit raw data; --white-level sets it)"
               if found and white != peak(bits) else "")
        raise ImageError(f"{where}black level {black} must be at least 0 and below the white level {white}{how}")
    return black, white


def rescale(img: np.ndarray, black: int = 0, white: int | None = None) -> np.ndarray:
    """An image with levels black and white (None: its bit depth's maximum) as a full-range 16-bit one; unchanged
    when the levels are its bit depth's own, so ordinary files keep their values and depth exactly."""
    if black == 0 and white in (None, max_value(img)):
        return img
    return quantize(to_float(img, black, white), 16)


def write_image(path: str, img: np.ndarray, bits: int | None = None) -> None:
    """Write an RGB image atomically; float input is quantised to `bits` (default 16)."""
    if img.dtype.kind == "f":
        img = quantize(img, bits or 16)
    elif bits is not None and img.dtype != DTYPES[bits]:
        raise ValueError(f"{path}: {img.dtype} image cannot be written as {bits}-bit")
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, np.ascontiguousarray(img[:, :, ::-1])):
            raise ImageError(f"{path}: OpenCV could not write the image")


def pad_to_multiple(img: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the bottom and right of an (H, W, C) array up to multiples of `multiple`.

    Returns the padded array and the original (H, W) for crop(). Nothing changes when both sides
    already are multiples (1120x1680 with multiple 16); a side shorter than its padding is reflected repeatedly.
    """
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return img, (h, w)
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect"), (h, w)


def crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Undo pad_to_multiple."""
    return img[: size[0], : size[1]]
