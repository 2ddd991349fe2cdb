"""Every setting of the reproduction in one dataclass, named presets, and the command-line parsing
that all scripts share (--preset NAME, --set key=value, one-line `error: ...` exits)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, fields
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # every script imports config first: quiet TF's C++ start-up logs

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    # --- paths (relative paths are resolved against the repository folder, see resolve_path) ---
    dataset_root: str = "dd_dp_dataset_canon"  # DPDD root; ./dd_dp_dataset_png is also found
    patch_dir: str = "patches"                  # patch store written by data_prep.py
    checkpoint_dir: str = "checkpoints"         # checkpoints/<run_name>/
    results_dir: str = "results"                # results/<run_name>/
    run_name: str = ""                          # empty: derived from the preset and input mode

    # --- data: the DPDD working resolution and the paper's patch extraction ---
    input_mode: str = "dual"                    # dual: left+right views (6 ch); single: combined (3 ch)
    working_width: int = 1680
    working_height: int = 1120
    patch_size: int = 512
    overlap: float = 0.6                        # train patches: stride int((1-overlap)*patch_size) = 204
    val_overlap: float = 0.01                   # val patches: stride 506
    discard_fraction: float = 0.3               # int(0.3*N) least sharp train patches dropped per image
    sobel_ksizes: tuple = (3, 7, 11, 15)
    black_level: int = 0                        # the dataset files' black and white values, for raw frames stored
    white_level: int = 0                        # unscaled (a 10-bit sensor: 1023); 0: the bit depth's maximum
                                                # (deblur.py: found from the values, as its output says)
    data_workers: int = 2                       # processes for data_prep
    loader_workers: int = 2                     # threads that load train.py's batches ahead of the step

    # --- network ---
    base_filters: int = 64
    depth: int = 4                              # number of 2x2 poolings; sizes must be multiples of 2**depth
    dropout: float = 0.4
    head: str = "sigmoid"                       # sigmoid: the paper; residual: mean of inputs + zero-init correction
    activation: str = "relu"                    # relu: the paper; leaky_relu (slope 0.2): units cannot die
    noise_input: bool = False                   # the first layer also sees the input's noise level, estimated
                                                # from the image without weights (model.NoiseLevel); the paper: off
    noise_floor: float = 1e-4                   # the lowest noise std noise_input tells the network: views that
                                                # read less (noise-free ones) read as this

    # --- training (the paper's recipe) ---
    batch_size: int = 5
    epochs: int = 200
    learning_rate: float = 2e-5
    lr_decay_every: int = 60                    # epochs between halvings
    lr_decay_factor: float = 0.5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-7
    loss: str = "mse"                           # mse (paper), l1 or charbonnier (train.make_loss)
    augment: bool = False                       # flips/rotations of patches (off in the paper)
    select_on: str = "val"                      # keep `best` by lowest val loss, or "train" as the authors did
    checkpoint_every_steps: int = 500           # `last` is also written every epoch
    steps_per_epoch: int = 0                    # 0: one pass over the patches
    precision: str = "float32"                  # float32, mixed_bfloat16, mixed_float16, or auto: bfloat16 where
                                                # the CPU computes it natively (model.compute_precision)
    xla: bool = False                           # TensorFlow: compile with XLA; JAX always does; not under torch
    strategy: str = "default"                   # default (one device); mirrored (every device of this host);
                                                # multiworker (several hosts; JAX only)
    lr_scaling: str = "none"                    # none, or linear: lr *= number of replicas (global batch = batch_size * replicas)
    seed: int = 0
    init_weights: str = ""                      # fine-tuning: a fresh run starts from these weights (any file
                                                # weights.load_model reads, same architecture); empty: from scratch

    # --- evaluation ---
    tile: int = 0                               # 0: whole image in one pass (the paper); else tile size
    tile_overlap: int = 128                     # measured max |tiled - whole| at 512/128: 2.4e-3 (512/64: 1.6e-2)
    self_ensemble: str = "auto"                 # average the outputs over the transforms of `augment` (4 flips
                                                # for dual, 8 flips/turns for single: 4x or 8x the time): on,
                                                # off, or auto: on for weights trained with augment (the paper's
                                                # were not: off)
    scales: int = 0                             # passes at N sizes, each half the last, the coarser ones' large
                                                # corrections merged in (inference.predict_image): for blur larger
                                                # than the weights were trained on; 1: full size only (the paper);
                                                # 0: auto, by the image's longer side against the frames the
                                                # weights were trained on (1 for the paper's weights on DPDD)

    def resolve_path(self, name: str) -> str:
        """Absolute path of a path setting; relative ones live under the repository, so scripts work from any folder."""
        return _resolve(getattr(self, name))

    def checkpoint_folder(self) -> str:
        """checkpoints/<run_name>/: where train.py writes the run's checkpoints and logs."""
        return os.path.join(self.resolve_path("checkpoint_dir"), self.run_name)

    def checkpoint_path(self, which: str = "best") -> str:
        """checkpoints/<run_name>/{best,last}.keras: a float-input DPDNet for
        keras.models.load_model(path, compile=False)."""
        if which not in ("best", "last"):
            raise ValueError(f"which: 'best' or 'last', got {which!r}")
        return os.path.join(self.checkpoint_folder(), f"{which}.keras")

    def results_folder(self) -> str:
        """results/<run_name>/: where test.py (and demo.py) write the run's results."""
        return os.path.join(self.resolve_path("results_dir"), self.run_name)

    @property
    def in_channels(self) -> int:
        return 6 if self.input_mode == "dual" else 3

    @property
    def train_stride(self) -> int:
        return int(round((1 - self.overlap) * self.patch_size, 6))

    @property
    def val_stride(self) -> int:
        return int(round((1 - self.val_overlap) * self.patch_size, 6))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sobel_ksizes"] = list(self.sobel_ksizes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_json(self, path: str) -> None:
        """Write the effective config atomically next to what a script produced."""
        from fileio import atomic_write_text
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config key '{unknown[0]}'")
        cfg = cls(**{k: (tuple(v) if k == "sobel_ksizes" else v) for k, v in d.items()})
        cfg.validate()
        return cfg

    @classmethod
    def load_json(cls, path: str) -> "Config":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def differences(self, stored: dict, where: str, keys=None, ignore=()) -> list[str]:
        """'key: OLD <where>, NEW now' for each setting (of `keys`, default all) that differs from a stored
        config dict; keys it lacks count as their defaults."""
        now = self.to_dict()
        return differences(stored, now, where, keys or sorted(now), ignore, defaults=Config().to_dict())

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = _FIELD_TYPES[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if expected is tuple:
                if not (isinstance(value, tuple) and value and all(isinstance(k, int) and not isinstance(k, bool) for k in value)):
                    raise ConfigError(f"{f.name}: expected a comma-separated list of integers, got {value!r}")
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{f.name}: expected {expected.__name__}, got {value!r}")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        for key in ("working_width", "working_height", "patch_size", "base_filters", "depth", "batch_size",
                    "epochs", "lr_decay_every", "data_workers", "loader_workers", "checkpoint_every_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("steps_per_epoch", "tile", "tile_overlap", "seed", "scales", "black_level", "white_level"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("overlap", "val_overlap", "discard_fraction", "dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        for key in ("learning_rate", "adam_epsilon", "noise_floor"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        for key in ("adam_beta1", "adam_beta2", "lr_decay_factor"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"{key}: must be in (0, 1], got {getattr(self, key)}")
        if any(k < 1 or k % 2 == 0 or k > 31 for k in self.sobel_ksizes):
            raise ConfigError(f"sobel_ksizes: OpenCV Sobel kernel sizes are odd numbers from 1 to 31, got {self.sobel_ksizes}")
        multiple = 2 ** self.depth
        if self.patch_size % multiple:
            raise ConfigError(f"patch_size: must be a multiple of 2**depth = {multiple}, got {self.patch_size}")
        if self.patch_size > min(self.working_width, self.working_height):
            raise ConfigError(f"patch_size: {self.patch_size} does not fit the working size "
                              f"{self.working_width}x{self.working_height}")
        if self.train_stride < 1 or self.val_stride < 1:
            raise ConfigError("overlap: leaves a patch stride below one pixel")
        if self.tile and self.tile <= 2 * self.tile_overlap:   # its multiple: the weights' depth (weights.check_tile)
            raise ConfigError(f"tile: must be larger than 2*tile_overlap ({2 * self.tile_overlap}), got {self.tile}")
        if self.white_level > 65535 or (self.white_level and self.black_level >= self.white_level):
            raise ConfigError(f"white_level: must be above black_level ({self.black_level}) and at most 65535, "
                              f"got {self.white_level}")
        if self.run_name and (os.sep in self.run_name or self.run_name in (".", "..")):
            raise ConfigError(f"run_name: must be a plain name, got {self.run_name!r}")


class UserError(ValueError):
    """A problem the user can fix (a setting, a file, a folder): every project error class derives from it, and
    every script's main shows its one-line message as `error: ...` (see exit_on_error)."""


class ConfigError(UserError):
    """A bad key or value; its message names the key."""


@contextlib.contextmanager
def exit_on_error(*also: type, interrupted: str = ""):
    """A script's main runs its work inside this: a UserError (or one of `also`) exits with status 1 and one line
    `error: MESSAGE`; Ctrl-C exits with status 130 after printing `interrupted` (what is kept, how to go on)."""
    try:
        yield
    except (UserError, *also) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        sys.exit(130)


def changed_keys(stored: dict, now: dict, keys=None, ignore=(), defaults: dict | None = None) -> list[str]:
    """The keys (of `keys`, default all of `now`'s) whose value in `stored` differs from `now`'s: "do these
    settings differ from the stored ones", for configs, manifests and run records alike. A key `stored` lacks
    counts as its value in `defaults` (None without); path settings are compared resolved."""
    out = []
    for key in keys or list(now):
        if key in ignore:
            continue
        old = stored.get(key, (defaults or {}).get(key))
        same = old == now[key]
        if key in PATH_KEYS and isinstance(old, str) and isinstance(now[key], str):
            same = _resolve(old) == _resolve(now[key])
        if not same:
            out.append(key)
    return out


def differences(stored: dict, now: dict, where: str, keys=None, ignore=(), defaults: dict | None = None) -> list[str]:
    """'key: OLD <where>, NEW now' for each of changed_keys()."""
    return [f"{key}: {stored.get(key, (defaults or {}).get(key))!r} {where}, {now[key]!r} now"
            for key in changed_keys(stored, now, keys, ignore, defaults)]


_FIELD_TYPES = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple}[f.type]
    for f in fields(Config)
}
_CHOICES = {
    "input_mode": ("dual", "single"),
    "head": ("sigmoid", "residual"),
    "activation": ("relu", "leaky_relu"),
    "loss": ("mse", "l1", "charbonnier"),
    "select_on": ("val", "train"),
    "self_ensemble": ("auto", "on", "off"),
    "precision": ("float32", "mixed_bfloat16", "mixed_float16", "auto"),
    "strategy": ("default", "mirrored", "multiworker"),
    "lr_scaling": ("none", "linear"),
}
PATH_KEYS = ("dataset_root", "patch_dir", "checkpoint_dir", "results_dir", "init_weights")   # empty: unset


def _resolve(path: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(REPO_DIR, path))

# Named presets: overrides on top of the defaults (the defaults are the paper).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "single": {"input_mode": "single"},
}
# demo.py: a toy-scale DPDNet that learns in minutes on 2 CPU cores from synthetic 320x208 scenes (blur up to
# 14 px, domain-randomised: see synthesize.Domain): small U-Net, residual head (in-focus pixels start as the
# input), no dropout, Charbonnier loss (L1 for all but the smallest errors: it weighs the small errors of in-focus
# regions more than MSE, which taught the network to sharpen everything, without L1's kink at zero error, which
# held the correction at zero) and leaky ReLU (with ReLU the last decoder layer could die, leaving the network
# at the identity for good), flips that keep the dual-pixel geometry (a horizontal flip swaps the views), Adam
# 5e-4 times 0.3 every 2500 steps (at 1e-3 most bottleneck units died; results/demo.md), 4000 steps of batch 16,
# in mixed bfloat16 where the CPU computes it natively (precision auto), which buys the larger batch; told each
# input's noise level (noise_input), so that fine in-focus texture is not taken for noise (results/synthetic_ood.md).
_DEMO = {"dataset_root": "synthetic_demo", "patch_dir": "patches/demo", "working_width": 320, "working_height": 208,
         "patch_size": 64, "overlap": 0.5, "base_filters": 16, "depth": 3, "dropout": 0.0, "head": "residual",
         "batch_size": 16, "learning_rate": 5e-4, "steps_per_epoch": 100, "epochs": 40,
         "lr_decay_every": 25, "lr_decay_factor": 0.3, "checkpoint_every_steps": 1000, "augment": True,
         "loss": "charbonnier", "activation": "leaky_relu", "precision": "auto", "noise_input": True}
PRESETS.update({
    "demo": _DEMO,
    "demo_single": {**_DEMO, "input_mode": "single"},
    # --quick shows that the pipeline runs (the suite runs it): 100 steps per network, its differences are noise
    "demo_quick": {**_DEMO, "dataset_root": "synthetic_demo_quick", "patch_dir": "patches/demo_quick", "epochs": 1},
})
# pretrained/dpdnet_synthetic.keras (pretrained/README.md), in three stages. synthetic_base: the demo's network and
# recipe on 1,200 scenes at 320x208 (blur up to 13.7 px), 30,000 steps, the decay moved with the length.
# synthetic_continued: that network trained 36,000 steps more on 2,400 other scenes (synthesize.py --seed 1), from
# the rate it ended at. synthetic: that network fine-tuned for 30,000 steps of batch 8 at a lower rate on 1,200
# scenes at 448x288 with blur up to 40 px, as in the backgrounds of DPDD-scale photos, on 96x96 patches that hold
# it; that data smooths 30% of layers in every split (synthesize.py --soft-content 0.3 --test-soft-content 0.3).
# All three stages floor the noise level at 1e-3, near what 8-bit quantisation alone reads, so that noise-free
# views are told a level near the lowest training shows rather than far below it (results/synthetic_ood.md,
# "The channel's floor").
PRESETS["synthetic_base"] = {**_DEMO, "dataset_root": "synthetic_1200", "patch_dir": "patches/synthetic",
                             "epochs": 300, "lr_decay_every": 188, "checkpoint_every_steps": 2000,
                             "noise_floor": 1e-3}
PRESETS["synthetic_continued"] = {**PRESETS["synthetic_base"], "dataset_root": "synthetic_2400",
                                  "patch_dir": "patches/synthetic_2400", "learning_rate": 1.5e-4, "epochs": 360,
                                  "lr_decay_every": 240, "init_weights": "pretrained/dpdnet_synthetic_base.keras"}
PRESETS["synthetic"] = {**PRESETS["synthetic_base"], "dataset_root": "synthetic_large",
                        "patch_dir": "patches/synthetic_large", "working_width": 448, "working_height": 288,
                        "patch_size": 96, "batch_size": 8, "learning_rate": 2e-4, "epochs": 300,
                        "lr_decay_every": 120, "checkpoint_every_steps": 1000,
                        "init_weights": "pretrained/dpdnet_synthetic_continued.keras"}

# synthetic_gpu: a larger DPDNet (base 32, depth 4: 7.8 M weights, 16x the demo's) from the same generator, for one
# GPU under JAX (gpu_synthetic.sh, which makes its data): 640x416 scenes with blur up to 40 px, both splits 30%
# smoothed layers, 256x256 patches, 20,000 steps of batch 16; the noise level floored at 1e-3, as the pretrained
# files it would replace train; the demo's recipe otherwise. Not yet trained.
PRESETS["synthetic_gpu"] = {**_DEMO, "dataset_root": "synthetic_gpu", "patch_dir": "patches/synthetic_gpu",
                            "working_width": 640, "working_height": 416, "patch_size": 256, "base_filters": 32,
                            "depth": 4, "epochs": 200, "lr_decay_every": 125, "checkpoint_every_steps": 2000,
                            "precision": "mixed_bfloat16", "noise_floor": 1e-3}


def parse_value(key: str, text: str) -> Any:
    """Parse the text of `--set key=value` into the key's type; ConfigError names the key."""
    if key not in _FIELD_TYPES:
        raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(_FIELD_TYPES))})")
    kind = _FIELD_TYPES[key]
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is tuple:
            return tuple(int(t) for t in text.replace("(", "").replace(")", "").split(",") if t.strip())
        return text
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {kind.__name__}") from None


def make_config(preset: str = "paper", overrides: dict[str, Any] | None = None) -> Config:
    """The preset's config with overrides applied and validated."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    values = dict(PRESETS[preset])
    values.update(overrides or {})
    for key in values:
        if key not in _FIELD_TYPES:
            raise ConfigError(f"unknown config key '{key}'")
    cfg = Config(**values)
    if not cfg.run_name:
        cfg.run_name = default_run_name(preset, cfg)
    cfg.validate()
    return cfg


def default_run_name(preset: str, cfg: Config) -> str:
    name = "dpdnet" if preset in ("paper", "single") else preset
    if cfg.input_mode == "single" and not name.endswith("single"):
        name += "_single"
    return name


def add_config_args(parser: argparse.ArgumentParser, default: str | None = "paper",
                    default_text: str = "paper") -> None:
    """Add --preset and --set to a script's parser (default: the preset used when --preset is not given)."""
    parser.add_argument("--preset", default=default,
                        help=f"named settings: {', '.join(PRESETS)} (default: {default_text})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set batch_size=2 (repeatable)")


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """--weights, --tile and --tile-overlap for the scripts that run trained weights on whole images (test.py,
    deblur.py); the tile flags are --set tile=N / tile_overlap=N as flags of their own (config_from_args applies
    them after --set)."""
    parser.add_argument("--weights", help="checkpoint (.keras), Keras 3 .weights.h5, or the authors' Keras 2 .hdf5 "
                                          "(default: checkpoints/<run_name>/best.keras)")
    parser.add_argument("--tile", type=int, help="tile size in pixels (a multiple of 2**depth: 16 for the paper "
                                                 "network) when the whole image does not fit the GPU; default: the "
                                                 "whole image in one pass, as the paper")
    parser.add_argument("--tile-overlap", type=int, help="overlap of neighbouring tiles in pixels "
                                                         f"(default {Config.tile_overlap})")


def config_from_args(args: argparse.Namespace, verbose: bool = True) -> Config:
    """Build the effective config from --preset/--set (and --tile/--tile-overlap where the script has them); a bad
    key or value exits with one line naming it."""
    tiles = [f"{key}={getattr(args, key)}" for key in ("tile", "tile_overlap") if getattr(args, key, None) is not None]
    try:
        overrides = {}
        for item in args.overrides + tiles:
            if "=" not in item:
                raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
            key, text = item.split("=", 1)
            key = key.strip()
            value = parse_value(key, text)
            if key in PATH_KEYS and value and not os.path.isabs(value):
                value = os.path.abspath(value)  # a path typed by the user means the current folder
            overrides[key] = value
        cfg = make_config(args.preset, overrides)
    except ConfigError as e:
        sys.exit(f"error: config: {e}")
    if verbose:
        print_config(cfg, args.preset)
    return cfg


def print_config(cfg: Config, preset: str) -> None:
    print(f"config (preset {preset}):")
    for key, value in cfg.to_dict().items():
        print(f"  {key} = {value}")
