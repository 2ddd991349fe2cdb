"""Deblur your own dual-pixel pair (or, with the single-image model, one photo) of any size and bit depth.

    python deblur.py --weights checkpoints/dpdnet/best.keras --left L.png --right R.png --out sharp.png
    python deblur.py --weights W --input-dir pairs/ --out-dir sharp/       # NAME_L.png + NAME_R.png -> NAME.png
    python deblur.py --weights dpdnet_single.hdf5 --single photo.png --out sharp.png
    python deblur.py --weights W --left top.png --right bottom.png --rotate --out sharp.png

Bit depth is read from each file (8-bit divided by 255, 16-bit by 65535) and the output has the input's depth.
16-bit files whose values all fit in 10 or 12 bits are taken for raw sensor data stored unscaled (white 1023 or
4095; a guess from the values, stated, found once for a whole --input-dir), --white-level and --black-level set
the levels by hand, and the output is written back at the input's levels.
One-channel (grey) views, as phones often store dual-pixel data (one green channel), are copied into R, G and
B for the network; the output is then one channel too, the mean of the network's three, and deblur.py says so.
--rotate turns top/bottom views of vertical dual-pixel sensors by 90 degrees so that the disparity is
horizontal, as in the training data, and turns the result back. Weights trained with flips (`augment`, as the demo
presets do) are run on every one of those flips and the outputs averaged (self_ensemble; 4x the time, 8x
for the single-image model). An image larger than the frames the weights were trained on (the demo's weights, 320
wide, on a 1680-wide photo) also runs at half size, quarter size and so on (`scales`), where its blur is the size
the network knows, and the large corrections made there are merged in (README, "Scales").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

import weights
from config import (Config, UserError, add_config_args, add_inference_args, config_from_args, exit_on_error,
                    print_config)
from images import (IMAGE_EXTENSIONS, ImageError, bit_depth, levels, peak, quantize, read_image, to_float,
                    white_from_values, write_image)
from inference import ensemble_transforms, prefer_low_memory_cpu

prefer_low_memory_cpu()  # before TensorFlow is imported

OUTPUT_EXTENSIONS = (".png", ".tif", ".tiff")  # formats that hold 16 bits


class DeblurError(UserError):
    """Bad command-line input; one line for the user."""


def deblur_arrays(model, model_cfg: Config, left=None, right=None, combined=None, rotate: int = 0,
                  names: tuple[str, ...] = ()) -> np.ndarray:
    """Deblur uint8/uint16 (or float [0,1]) RGB arrays: left+right for the dual model, combined for the single
    one. rotate (0, 90, 270) turns the inputs counter-clockwise by that angle first and the result back.
    Returns float32 (H, W, 3) in [0, 1]."""
    from inference import network_input, predict_image
    k = {0: 0, 90: 1, 270: 3}[rotate]
    turn = (lambda a: None if a is None else np.rot90(a, k)) if k else (lambda a: a)
    x = network_input(model_cfg, turn(left), turn(right), turn(combined), names=names)
    y = predict_image(model, x, model_cfg)
    return np.ascontiguousarray(np.rot90(y, -k)) if k else y


def output_bits(*images: np.ndarray, names: tuple[str, ...] = ()) -> int:
    """8 or 16: the bit depth shared by the input files (a pair of different depths is an error)."""
    bits = [bit_depth(img) for img in images]
    if len(set(bits)) > 1:
        raise ImageError(f"{names[0]} is {bits[0]}-bit but {names[1]} is {bits[1]}-bit: "
                         f"the views of a pair must have the same bit depth")
    return bits[0]


def check_output_path(out: str, inputs: list[str]) -> None:
    if os.path.splitext(out)[1].lower() not in OUTPUT_EXTENSIONS:
        raise DeblurError(f"{out}: output must be .png or .tif (formats that hold 16-bit images)")
    for path in inputs:
        if os.path.abspath(path) == os.path.abspath(out):
            raise DeblurError(f"{out}: the output would overwrite an input")


def channel_count(*images: np.ndarray, names: tuple[str, ...] = ()) -> int:
    """1 or 3: the channel count shared by the input files (a grey view with an RGB one is an error)."""
    channels = [img.shape[2] for img in images]
    if len(set(channels)) > 1:
        raise ImageError(f"{names[0]} has {channels[0]} channel(s) but {names[1]} has {channels[1]}: "
                         f"the views of a pair must both be RGB or both be one channel")
    return channels[0]


def to_rgb(img: np.ndarray) -> np.ndarray:
    """A one-channel image copied into R, G and B (the network takes RGB); RGB unchanged."""
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def deblur_file(model, model_cfg: Config, out: str, left: str = "", right: str = "", single: str = "",
                rotate: int = 0, black: int = 0, white: int | None = None,
                found: bool = False) -> tuple[str, float | None]:
    """Read the input file(s), deblur, write `out` atomically with the input's bit depth, levels and channel count
    (one-channel inputs: the mean of the three output channels); returns what was read, in words. black, white:
    the input's levels (white None: found from these files' values, images.levels); found: the caller found white
    from the values of a whole folder (folder_levels). Also returns the noise std a network with noise_input is told
    at full size (noise_sigma; None for other networks)."""
    if model_cfg.input_mode == "dual":
        names = (left, right)
        imgs = [read_image(left, allow_grey=True), read_image(right, allow_grey=True)]
        bits = output_bits(*imgs, names=names)
        channels = channel_count(*imgs, names=names)
    else:
        names, imgs = (single,), [read_image(single, allow_grey=True)]
        bits, channels = output_bits(*imgs), imgs[0].shape[2]
    auto = white is None
    black, white = levels(*imgs, black=black, white=white, name=" and ".join(names))
    x = [to_rgb(to_float(img, black, white)) for img in imgs]
    if model_cfg.input_mode == "dual":
        y = deblur_arrays(model, model_cfg, left=x[0], right=x[1], rotate=rotate, names=names)
    else:
        y = deblur_arrays(model, model_cfg, combined=x[0], rotate=rotate)
    if channels == 1:
        y = y.mean(axis=2, keepdims=True)
    write_image(out, quantize(y, bits, black, white))
    fits_14_bits = auto and white == peak(16) and max(int(img.max()) for img in imgs) <= peak(14)
    text = describe(bits, channels, black, white, found or auto, fits_14_bits)
    return text, noise_sigma(model, model_cfg, x)


def noise_sigma(model, model_cfg: Config, views: list[np.ndarray]) -> float | None:
    """For a network told the noise level (noise_input): the noise std its own noise_level layer (model.NoiseLevel)
    estimates from these float views at full size; None for other networks."""
    if not model_cfg.noise_input:
        return None
    return float(model.get_layer("noise_level").sigma(np.concatenate(views, axis=2)[None])[0])


def noise_text(sigmas: list[float], floor: float) -> str:
    """The noise std of one image, or the range and median of a folder's, in words, and which read below the
    network's floor (Config.noise_floor), which is what those are told."""
    below = sum(s < floor for s in sigmas)
    if len(sigmas) == 1:
        return (f"noise std {sigmas[0]:.4f} of full scale as the network estimates it for noise_input" +
                (f", told as its floor {floor:g}" if below else ""))
    return (f"noise std {min(sigmas):.4f} to {max(sigmas):.4f} of full scale (median {np.median(sigmas):.4f}) as "
            f"the network estimates it for noise_input" +
            (f"; {below} of {len(sigmas)} below its floor {floor:g}, told as that" if below else ""))


def describe(bits: int, channels: int, black: int, white: int, found: bool, fits_14_bits: bool) -> str:
    """What deblur.py read and wrote, in words: bit depth, channels, levels (raw data)."""
    text = f"{bits}-bit " + ("RGB" if channels == 3 else
                             "one channel (copied into R, G and B for the network; the output is their mean)")
    if found and white != peak(bits):
        text += (f", taken as {white.bit_length()}-bit raw data (every value within {white}): read between black "
                 f"{black} and white {white} and written back at that scale (--white-level {peak(bits)} reads it "
                 f"as {bits}-bit" + ("; --black-level N subtracts a sensor's black level)" if not black else ")"))
    elif black or white != peak(bits):
        text += f", read between black {black} and white {white} and written back at that scale"
    if fits_14_bits:
        text += f", every value within 14 bits (for 14-bit raw data pass --white-level {peak(14)})"
    return text


def folder_levels(jobs: list[tuple[str, dict]]) -> tuple[int | None, int]:
    """(white, largest value) of a folder's inputs: white found once from the values of them all
    (images.white_from_values), so that the frames of one camera are read alike whatever each one holds; None for
    files of several bit depths (each pair then finds its own). Reads every file once."""
    from tqdm import tqdm
    bits, high = set(), 0
    for _, inputs in tqdm(jobs, desc="levels", unit="img", leave=False):
        for path in inputs.values():
            img = read_image(path, allow_grey=True)
            bits.add(bit_depth(img))
            high = max(high, int(img.max()))
    return (white_from_values(bits.pop(), high) if len(bits) == 1 else None), high


def find_pairs(folder: str) -> list[tuple[str, str, str]]:
    """(name, left path, right path) for every NAME_L / NAME_R image pair in a folder; unpaired views are errors."""
    if not os.path.isdir(folder):
        raise DeblurError(f"{folder}: input folder not found")
    views: dict[str, dict[str, str]] = {}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in IMAGE_EXTENSIONS and stem[-2:] in ("_L", "_R"):
            views.setdefault(stem[:-2], {})[stem[-1]] = os.path.join(folder, f)
    if not views:
        raise DeblurError(f"{folder}: no NAME_L / NAME_R image pairs (.png or .tif)")
    for name, pair in views.items():
        if len(pair) == 1:
            have, miss = ("L", "R") if "L" in pair else ("R", "L")
            raise DeblurError(f"{pair[have]}: no matching {name}_{miss} view in {folder}")
    return [(name, pair["L"], pair["R"]) for name, pair in sorted(views.items())]


def find_singles(folder: str) -> list[tuple[str, str]]:
    if not os.path.isdir(folder):
        raise DeblurError(f"{folder}: input folder not found")
    found = [(os.path.splitext(f)[0], os.path.join(folder, f)) for f in sorted(os.listdir(folder))
             if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith(".")]
    if not found:
        raise DeblurError(f"{folder}: no .png or .tif images")
    return found


def run(args, cfg: Config) -> list[str]:
    """Carry out a parsed command line; returns the files written."""
    from tqdm import tqdm
    folder_mode = bool(args.input_dir)
    if folder_mode == bool(args.left or args.right or args.single):
        raise DeblurError("give either --left/--right (or --single) with --out, or --input-dir with --out-dir")
    if args.single and (args.left or args.right):
        raise DeblurError("--single takes one combined image; do not give --left/--right with it")
    if not folder_mode and not args.single and not (args.left and args.right):
        raise DeblurError("the dual-pixel model needs both --left and --right")
    if folder_mode and not args.out_dir:
        raise DeblurError("--input-dir needs --out-dir")
    if not folder_mode and not args.out:
        raise DeblurError("--out is required (the deblurred image, .png or .tif)")
    for path in [p for p in (args.left, args.right, args.single) if p]:
        if not os.path.isfile(path):
            raise ImageError(f"{path}: file not found")

    black = cfg.black_level if args.black_level is None else args.black_level
    white = args.white_level if args.white_level is not None else cfg.white_level or None
    cfg = dataclasses.replace(cfg, black_level=black, white_level=white or 0)   # saved with the output
    weights_path = args.weights or weights.default_path(cfg)
    model, model_cfg = weights.load_model(weights_path, cfg)
    single_inputs = model_cfg.input_mode == "single" if folder_mode else bool(args.single)
    if model_cfg.input_mode == "dual" and single_inputs:
        raise DeblurError(f"{weights_path}: these are DPDNet weights (left+right dual-pixel views); pass --left and "
                          f"--right, or use DPDNet-Single weights for one image")
    if model_cfg.input_mode == "single" and not single_inputs:
        raise DeblurError(f"{weights_path}: these are DPDNet-Single weights (one combined image); pass --single "
                          f"IMAGE instead of --left/--right")
    print_config(model_cfg, f"{args.preset}, with the network and training settings saved with {weights_path}")

    passes = len(ensemble_transforms(model_cfg))
    if passes > 1:
        print(f"self-ensemble: each output is the mean of {passes} passes over flips of the input "
              f"(--set self_ensemble=off: one pass, {passes}x faster)")
    if model_cfg.scales == 0:
        print(f"scales: an image larger than the {model_cfg.working_width}x{model_cfg.working_height} frames these "
              f"weights were trained on also runs at half size (and quarter, ... one more per doubling), whose large "
              f"corrections are merged in: at most 1.33x the time (--set scales=1: full size only)")
    elif model_cfg.scales > 1:
        print(f"scales: each image runs at up to {model_cfg.scales} sizes, each half the last, whose large "
              f"corrections are merged in: at most 1.33x the time")
    if not folder_mode:
        check_output_path(args.out, [p for p in (args.left, args.right, args.single) if p])
        read, sigma = deblur_file(model, model_cfg, args.out, args.left, args.right, args.single, args.rotate, black,
                                  white)
        model_cfg.save_json(os.path.splitext(args.out)[0] + ".config.json")
        noise = "" if sigma is None else f", {noise_text([sigma], model_cfg.noise_floor)}"
        print(f"wrote {args.out} ({read}{noise})")
        return [args.out]

    jobs = ([(name, {"single": path}) for name, path in find_singles(args.input_dir)] if single_inputs else
            [(name, {"left": left, "right": right}) for name, left, right in find_pairs(args.input_dir)])
    os.makedirs(args.out_dir, exist_ok=True)
    model_cfg.save_json(os.path.join(args.out_dir, "config.json"))
    found = white is None
    white, high = folder_levels(jobs) if found else (white, None)
    written, kinds, sigmas = [], set(), []
    for name, inputs in tqdm(jobs, desc="deblur", unit="img"):
        out = os.path.join(args.out_dir, name + ".png")
        check_output_path(out, list(inputs.values()))
        if os.path.exists(out) and not args.overwrite:
            continue
        kind, sigma = deblur_file(model, model_cfg, out, rotate=args.rotate, black=black, white=white, found=found,
                                  **inputs)
        kinds.add(kind)
        if sigma is not None:
            sigmas.append(sigma)
        written.append(out)
    skipped = len(jobs) - len(written)
    print(f"wrote {len(written)} image(s) to {args.out_dir}" +
          (f"; {skipped} already there (--overwrite to redo them)" if skipped else ""))
    for kind in sorted(kinds):
        print(f"  read: {kind}")
    if sigmas:
        print(f"  {noise_text(sigmas, model_cfg.noise_floor)}")
    if white == peak(16) and high is not None and high <= peak(14):
        print(f"  every value within 14 bits: for 14-bit raw data pass --white-level {peak(14)}")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_inference_args(parser)
    parser.add_argument("--left", help="left (or, with --rotate, top) dual-pixel view")
    parser.add_argument("--right", help="right (or, with --rotate, bottom) dual-pixel view")
    parser.add_argument("--single", help="one combined image, for DPDNet-Single weights")
    parser.add_argument("--out", help="output image (.png or .tif); same bit depth as the input")
    parser.add_argument("--input-dir", help="a folder of NAME_L / NAME_R pairs (for DPDNet-Single weights: of images)")
    parser.add_argument("--out-dir", help="where --input-dir's results go, as NAME.png")
    parser.add_argument("--overwrite", action="store_true", help="redo images already in --out-dir")
    parser.add_argument("--rotate", type=int, nargs="?", const=90, default=0, choices=(0, 90, 270),
                        help="vertical dual-pixel sensors: turn the top/bottom views by 90 degrees counter-clockwise "
                             "(or 270) before the network and back after")
    parser.add_argument("--white-level", type=int, metavar="N",
                        help="the value of white in the input files (default: the bit depth's maximum, 255 or 65535; "
                             "1023 or 4095 for 16-bit files whose values all fit in 10 or 12 bits, as raw sensor data "
                             "is often stored); the same as --set white_level=N")
    parser.add_argument("--black-level", type=int, metavar="N",
                        help="the value of black in the input files: a raw sensor's black level, subtracted before "
                             "the network and added back to the output (default 0); the same as --set black_level=N")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, verbose=False)   # printed once the weights have said what the network is
    with exit_on_error():
        run(args, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
