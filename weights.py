"""Loading a trained DPDNet from any file a user may have: our .keras checkpoints (with the config.json saved
beside them), Keras 3 weight files, and the authors' Keras 2.2.4 HDF5 models, whose conv weights are mapped
onto our layers by order and shape with their BGR colour order turned into our RGB."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
import zipfile

import numpy as np

from config import Config, UserError, changed_keys

ARCH_KEYS = ("input_mode", "base_filters", "depth", "head", "activation", "dropout", "noise_input", "noise_floor")
# How the weights were trained, which decides how they are run (trained_settings): flips turn the self-ensemble on,
# and the size of the training frames sets the pyramid's sizes (inference.pyramid_levels); the patch size goes
# with the frames, so that the config stays valid.
TRAINED_KEYS = ("augment", "working_width", "working_height", "patch_size")
FRAME_KEYS = TRAINED_KEYS[1:]
# Our channel index -> the authors' channel index (BGR per view); each permutation is its own inverse.
BGR_PERM = {3: [2, 1, 0], 6: [2, 1, 0, 5, 4, 3]}


class WeightsError(UserError):
    """A weights file that cannot be used here; the message names the file and what is wrong."""


def mode_name(input_mode: str) -> str:
    return "DPDNet" if input_mode == "dual" else "DPDNet-Single"


def file_stamp(path: str) -> dict:
    """Path, size, modification time and SHA-256 of a weights file: what a results folder records, so that a
    resumed run can tell whether it still runs the same weights."""
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"weights": os.path.abspath(path), "weights_size": st.st_size, "weights_mtime": int(st.st_mtime),
            "weights_sha256": digest.hexdigest()}


def saved_config(weights_path: str) -> dict | None:
    """The architecture and training settings (ARCH_KEYS, TRAINED_KEYS) saved beside a checkpoint (config.json in
    its folder), or None."""
    folder = os.path.dirname(os.path.abspath(weights_path))
    stem = os.path.basename(weights_path).split(".")[0]
    for name in (f"{stem}.config.json", "config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    values = json.load(f)
            except (OSError, ValueError) as e:
                raise WeightsError(f"{path}: unreadable config beside the weights ({e})") from None
            return {k: values[k] for k in ARCH_KEYS + TRAINED_KEYS if k in values}
    return None


def describe_model(model, path: str = "model") -> dict:
    """The architecture settings of a loaded DPDNet, read from its layers; WeightsError if it is not one."""
    names = {layer.name for layer in model.layers}
    if "enc1_conv1" not in names or not any(n.startswith("dec1_") for n in names):
        raise WeightsError(f"{path}: not a DPDNet model (no enc1_conv1/dec1 layers; found "
                           f"{', '.join(sorted(names)[:6])}, ...)")
    channels = model.inputs[0].shape[-1]
    if channels not in (3, 6):
        raise WeightsError(f"{path}: the model takes {channels} input channels; DPDNet takes 6 (dual) or 3 (single)")
    depth = sum(1 for n in names if re.fullmatch(r"enc\d+_pool", n))
    noise = {"noise_floor": model.get_layer("noise_level").floor} if "noise_level" in names else {}
    return {"input_mode": "dual" if channels == 6 else "single",
            "base_filters": int(model.get_layer("enc1_conv1").filters), "depth": depth,
            "head": "residual" if "head_correction" in names else "sigmoid",
            "activation": model.get_layer("enc1_conv1").get_config()["activation"],
            "noise_input": "noise_level" in names, **noise}


def _build(cfg: Config):
    """Our model for cfg under cfg.precision's dtype policy."""
    from model import build_model, dtype_policy
    with dtype_policy(cfg.precision):
        return build_model(cfg)


def _with_arch(cfg: Config, arch: dict) -> Config:
    return dataclasses.replace(cfg, **{k: v for k, v in arch.items() if k in ARCH_KEYS})


def default_path(cfg: Config) -> str:
    """The run's best checkpoint, for scripts given no --weights; WeightsError saying what to do if it is missing."""
    path = cfg.checkpoint_path()
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no checkpoint for run {cfg.run_name!r} (train one with train.py, or pass --weights)")
    return path


def load_model(path: str, cfg: Config):
    """Load any supported weights file; returns (model, model_cfg).

    model_cfg is cfg (precision `auto` made concrete) with the architecture (input mode, width, depth, head) the
    file holds, read from the checkpoint's saved config.json or from the weights themselves (cfg supplies it
    only for a bare Keras 3 .weights.h5 without a saved config), and with `augment` and the frame and patch size
    as the weights were trained (trained_settings).
    Raises WeightsError with one line on anything unusable.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: weights file not found")
    from model import with_concrete_precision
    cfg = with_concrete_precision(cfg)
    saved = saved_config(path)
    model, model_cfg = _load(path, cfg, saved)
    check_tile(model_cfg, path)
    return model, dataclasses.replace(model_cfg, **trained_settings(path, saved))


def check_tile(cfg: Config, where: str) -> None:
    """A tile size must be a multiple of 2**depth of the network that runs it: the loaded weights' (load_model), or
    the config's for a script that trains its networks before it evaluates them (demo.py, ood_check.py)."""
    multiple = 2 ** cfg.depth
    if cfg.tile and cfg.tile % multiple:
        raise WeightsError(f"{where}: tile {cfg.tile} is not a multiple of {multiple}, 2**depth of a depth-{cfg.depth} "
                           f"network")


def trained_settings(path: str, saved: dict | None) -> dict:
    """TRAINED_KEYS as the weights were trained: whether with `augment`'s flips, and on which frames and patches.
    As the config train.py keeps inside its .keras checkpoints says, else the config.json beside them, else the
    paper's (the authors' files and bare weights do not say: no flips, 1680x1120 frames, 512-pixel patches); the
    frame keys are taken together or not at all."""
    inside: dict = {}
    if zipfile.is_zipfile(path):
        from train import TrainError, read_checkpoint_state
        try:
            inside = read_checkpoint_state(path).get("config", {})
        except TrainError:
            pass
    found = {**(saved or {}), **{k: v for k, v in inside.items() if k in TRAINED_KEYS}}
    frames = ({k: int(found[k]) for k in FRAME_KEYS} if all(k in found for k in FRAME_KEYS)
              else {k: getattr(Config, k) for k in FRAME_KEYS})
    return {"augment": bool(found.get("augment", Config.augment)), **frames}


def _load(path: str, cfg: Config, saved: dict | None):
    """The model in the file, by its kind (.keras archive, Keras 3 weights, Keras 2 HDF5), and its config."""
    if zipfile.is_zipfile(path):
        return _load_keras_archive(path, cfg, saved)
    import h5py
    try:
        with h5py.File(path, "r") as f:
            version = _text(f.attrs.get("keras_version", ""))
            whole_model = "model_config" in f.attrs
            keras3_weights = "layers" in f and "vars" in f
    except OSError:
        raise WeightsError(f"{path}: neither a .keras archive nor an HDF5 file") from None
    if keras3_weights:
        model_cfg = _with_arch(cfg, saved or {})
        model = _build(model_cfg)
        try:
            with warnings.catch_warnings():  # Keras 3.15 warns about weightless containers it skips
                warnings.filterwarnings("ignore", message="Skipping nested container")
                model.load_weights(path)
        except Exception as e:  # Keras names the mismatching layer or shape
            raise WeightsError(f"{path}: does not fit a {mode_name(model_cfg.input_mode)} with base_filters "
                               f"{model_cfg.base_filters}, depth {model_cfg.depth} ({_first_line(e)}); "
                               f"set the architecture with --preset/--set") from None
        return model, model_cfg
    if version.startswith("3") and whole_model:
        return _load_keras_archive(path, cfg, saved)
    return load_keras2_hdf5(path, cfg)


def _load_keras_archive(path: str, cfg: Config, saved: dict | None):
    import keras
    from model import InputGuard, NoiseLevel  # noqa: F401  (registered with Keras for deserialisation)
    try:
        loaded = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise WeightsError(f"{path}: Keras could not load it ({_first_line(e)})") from None
    arch = describe_model(loaded, path)
    if saved:
        clash = changed_keys(saved, arch, keys=[k for k in arch if k in saved])
        if clash:
            raise WeightsError(f"{path}: the config.json beside it says {clash[0]}={saved[clash[0]]!r} but the "
                               f"model has {arch[clash[0]]!r}")
    model_cfg = _with_arch(cfg, {**(saved or {}), **arch})
    if loaded.get_layer("enc1_conv1").dtype_policy.name == model_cfg.precision:
        return loaded, model_cfg
    model = _build(model_cfg)
    model.set_weights(loaded.get_weights())
    return model, model_cfg


@dataclasses.dataclass
class Keras2File:
    """The conv layers of a Keras 2 HDF5 file in build order: (layer name, kernel, bias)."""
    path: str
    keras_version: str
    convs: list

    @property
    def in_channels(self) -> int:
        return int(self.convs[0][1].shape[2])

    @property
    def base_filters(self) -> int:
        return int(self.convs[0][1].shape[3])

    @property
    def depth(self) -> int:
        """A depth-d DPDNet has 5d + 4 convs (2 per encoder level, 2 bottleneck, 3 per decoder step, 2 head)."""
        n = len(self.convs)
        if n < 9 or (n - 4) % 5:
            raise WeightsError(f"{self.path}: {n} conv layers, which is no DPDNet (depth d has 5d+4: 24 for the paper)")
        return (n - 4) // 5


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_keras2_hdf5(path: str) -> Keras2File:
    """The conv weights of a Keras 2 HDF5 file (a whole model, or save_weights output) in build order.

    Layers come in the file's `layer_names` order, which for Keras' automatic names conv2d_1 ... conv2d_24 is
    also their numeric order; that numeric order is used when every conv name has the pattern.
    """
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise WeightsError(f"{path}: not an HDF5 file") from None
    with f:
        version = _text(f.attrs.get("keras_version", "unknown"))
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise WeightsError(f"{path}: no Keras layer list (attribute layer_names) in the HDF5 file")
        convs = []
        for name in (_text(n) for n in group.attrs["layer_names"]):
            layer = group[name]
            arrays = [np.asarray(layer[_text(w)]) for w in layer.attrs.get("weight_names", [])]
            if not arrays:
                continue
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
                raise WeightsError(f"{path}: layer {name} has weights of shapes {[a.shape for a in arrays]}; "
                                   f"DPDNet has only conv layers (a 4-D kernel and a bias)")
            convs.append((name, kernels[0].astype(np.float32), biases[0].astype(np.float32)))
    if not convs:
        raise WeightsError(f"{path}: no weights in the HDF5 file")
    numbers = [re.fullmatch(r"conv2d_(\d+)", n) for n, _, _ in convs]
    if all(numbers):
        convs = [c for _, c in sorted(zip((int(m.group(1)) for m in numbers), convs), key=lambda t: t[0])]
    return Keras2File(path, version, convs)


def load_keras2_hdf5(path: str, cfg: Config, bgr: bool = True):
    """Our model carrying the weights of a Keras 2 HDF5 DPDNet (the authors' released files); (model, model_cfg).

    The architecture is read from the weight shapes; the k-th conv of the file goes to our k-th conv (build
    order: encoder, bottleneck, then upconv/conv1/conv2 per decoder step, head_conv, output) after an exact
    shape check. With bgr=True (the authors trained on OpenCV's BGR images) the first layer's input channels
    and the output layer's channels are reversed per view, so the model takes and returns RGB.
    """
    import keras
    saved = read_keras2_hdf5(path)
    if saved.in_channels not in BGR_PERM:
        raise WeightsError(f"{path}: first layer takes {saved.in_channels} channels; DPDNet takes 6 (dual) or 3 "
                           f"(single)")
    arch = {"input_mode": "dual" if saved.in_channels == 6 else "single", "base_filters": saved.base_filters,
            "depth": saved.depth, "head": "sigmoid", "noise_input": False}
    model_cfg = _with_arch(cfg, arch)
    model = _build(model_cfg)
    ours = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if len(ours) != len(saved.convs):
        raise WeightsError(f"{path}: {len(saved.convs)} conv layers, our {mode_name(model_cfg.input_mode)} of depth "
                           f"{model_cfg.depth} has {len(ours)}")
    for layer, (name, kernel, bias) in zip(ours, saved.convs):
        want = (tuple(layer.kernel.shape), tuple(layer.bias.shape))
        if (kernel.shape, bias.shape) != want:
            raise WeightsError(f"{path}: layer {name} has kernel {kernel.shape} and bias {bias.shape}, but our "
                               f"{layer.name} needs {want[0]} and {want[1]}: not a DPDNet of this shape")
    if bgr:
        first, last = saved.convs[0], saved.convs[-1]
        saved.convs[0] = (first[0], first[1][:, :, BGR_PERM[saved.in_channels], :], first[2])
        saved.convs[-1] = (last[0], last[1][..., BGR_PERM[3]], last[2][BGR_PERM[3]])
    for layer, (_, kernel, bias) in zip(ours, saved.convs):
        layer.set_weights([kernel, bias])
    return model, model_cfg


def check_input_mode(model_cfg: Config, cfg: Config, path: str) -> None:
    """WeightsError when the weights take another input than the data the config describes."""
    if model_cfg.input_mode != cfg.input_mode:
        fix = "--preset single" if model_cfg.input_mode == "single" else "--preset paper"
        raise WeightsError(f"{path}: these are {mode_name(model_cfg.input_mode)} weights "
                           f"({model_cfg.in_channels}-channel input) but the config's input_mode is "
                           f"{cfg.input_mode} ({cfg.in_channels} channels); use {fix} or "
                           f"--set input_mode={model_cfg.input_mode}")
