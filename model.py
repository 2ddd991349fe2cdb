"""DPDNet: the paper's 4-level U-Net on the left/right dual-pixel views (6 channels), or on the combined
image (DPDNet-Single, 3 channels). Built with keras.layers/keras.ops only, so it runs under the
TensorFlow, JAX and PyTorch backends of Keras 3."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import backends  # before keras: it checks KERAS_BACKEND
import keras
from keras import layers, ops

from config import Config, UserError


class InputShapeError(UserError):
    """An input the network cannot take; the message says what to change."""


@keras.saving.register_keras_serializable(package="dpdnet")
class InputGuard(layers.Layer):
    """Identity layer that rejects, with a clear message, shapes the U-Net cannot take."""

    def __init__(self, multiple: int, channels: int, input_mode: str = "dual", **kwargs):
        super().__init__(**kwargs)
        self.multiple, self.channels, self.input_mode = multiple, channels, input_mode

    def check(self, shape) -> None:
        """Raise InputShapeError for a wrong channel count or a height/width that is not a multiple of 2**depth."""
        h, w, c = shape[-3], shape[-2], shape[-1]
        if c is not None and c != self.channels:
            what = "left+right views (6)" if self.input_mode == "dual" else "one combined RGB image (3)"
            raise InputShapeError(f"input has {c} channels; the {self.input_mode} model takes {what}")
        for name, size in (("height", h), ("width", w)):
            if size is not None and size % self.multiple:
                raise InputShapeError(f"input {name} {size} is not a multiple of {self.multiple} (2**depth); pad the "
                                      f"image (images.pad_to_multiple) or crop it")

    def call(self, x):
        self.check(tuple(x.shape))
        if keras.backend.backend() == "tensorflow" and None in tuple(x.shape)[1:]:
            # tf.function traces with unknown sizes after the first shape: check at run time instead.
            import tensorflow as tf
            shape = tf.shape(x)
            with tf.control_dependencies([
                tf.debugging.assert_equal(shape[3], self.channels,
                                          message=f"DPDNet ({self.input_mode}) takes {self.channels} input channels"),
                tf.debugging.assert_equal(shape[1:3] % self.multiple, 0, message=(
                    f"DPDNet input height and width must be multiples of {self.multiple} (2**depth); "
                    f"pad the image (images.pad_to_multiple)")),
            ]):
                return tf.identity(x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "channels": self.channels,
                "input_mode": self.input_mode}


@keras.saving.register_keras_serializable(package="dpdnet")
class NoiseLevel(layers.Layer):
    """The input's noise level as one more channel, constant over each image: log10(sigma) + 2, sigma the noise std
    of one view (of the image, for DPDNet-Single) estimated without weights, so that the network can tell fine
    in-focus texture from noise. Dual: L - R cancels what both views share, so where they agree what is left is
    noise; the median absolute value of its channel mean's 3x3 Laplacian ([1,-2,1] x [1,-2,1], gain 6 on white
    noise), over 0.6745 (the median of |N(0, 1)|), ignores where the views differ by disparity. Single: the same
    over the image itself, where texture counts as noise too. Computed from whatever image the network is given,
    so a half-size pass or a tile is told its own level; a sigma below `floor` (Config.noise_floor) reads as the
    floor, which is 1e-4 for files saved before it was a setting (their layer config lacks it)."""

    def __init__(self, input_mode: str = "dual", floor: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.input_mode = input_mode
        self.floor = floor

    def sigma(self, x):
        """The per-image noise std estimate, shape (batch,)."""
        x = ops.cast(x, "float32")
        if self.input_mode == "dual":
            d = ops.mean(x[..., :3] - x[..., 3:6], axis=-1, keepdims=True)
            gain = 6 * math.sqrt(2 / 3)   # L - R doubles the variance, the mean of 3 channels divides it by 3
        else:
            d = ops.mean(x, axis=-1, keepdims=True)
            gain = 6 * math.sqrt(1 / 3)
        kernel = ops.convert_to_tensor([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype="float32")
        laplacian = ops.conv(d, ops.reshape(kernel, (3, 3, 1, 1)), padding="valid")
        return ops.median(ops.abs(laplacian), axis=(1, 2, 3)) / (0.6745 * gain)

    def call(self, x):
        level = ops.log10(ops.maximum(self.sigma(x), self.floor)) + 2
        return ops.ones_like(x[..., :1], dtype="float32") * ops.reshape(level, (-1, 1, 1, 1))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "input_mode": self.input_mode, "floor": self.floor}


def compute_precision(precision: str) -> str:
    """The dtype policy a precision setting means here: `auto` is mixed_bfloat16 where the CPU computes it natively
    (backends.native_bfloat16), else float32; the other settings are themselves."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if backends.native_bfloat16() else "float32"


def with_concrete_precision(cfg: Config) -> Config:
    """cfg with `auto` replaced by what it means here, for scripts that record the precision they run in."""
    return dataclasses.replace(cfg, precision=compute_precision(cfg.precision))


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under a Keras dtype policy (float32, mixed_bfloat16, mixed_float16, or auto: see
    compute_precision), then restore the old one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(compute_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _conv(filters: int, kernel: int, name: str, seed: int, activation: str = "relu", **kwargs) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, padding="same", activation=activation,
                         kernel_initializer=keras.initializers.HeNormal(seed), name=name, **kwargs)


def build_model(cfg: Config, height: int | None = None, width: int | None = None) -> keras.Model:
    """The DPDNet Keras model for `cfg`; fully convolutional unless height/width are given.

    Width (base_filters) and depth come from the config; with cfg.noise_input the first layer also sees the input's
    noise level (NoiseLevel). Under a mixed-precision policy the output layer still computes and returns float32,
    and so does the residual head's mean of the input views. Every initializer and dropout layer is seeded from
    cfg.seed, so the same config gives the same network on every backend without Keras' global seed (whose setter
    imports TensorFlow wherever it is installed, also under PyTorch).
    """
    seeds = iter(range(cfg.seed * 1000, cfg.seed * 1000 + 1000))
    act = cfg.activation
    guard = InputGuard(2 ** cfg.depth, cfg.in_channels, cfg.input_mode, name="input_guard")
    guard.check((height, width, cfg.in_channels))
    inputs = keras.Input((height, width, cfg.in_channels), name="dp_views" if cfg.input_mode == "dual" else "image")
    x = guard(inputs)
    if cfg.noise_input:   # the level in float32, from the inputs before any bfloat16 cast
        noise = NoiseLevel(cfg.input_mode, cfg.noise_floor, name="noise_level", dtype="float32")(inputs)
        x = layers.Concatenate(name="with_noise_level")([x, noise])

    skips = []
    for level in range(1, cfg.depth + 1):
        filters = cfg.base_filters * 2 ** (level - 1)
        x = _conv(filters, 3, f"enc{level}_conv1", next(seeds), act)(x)
        x = _conv(filters, 3, f"enc{level}_conv2", next(seeds), act)(x)
        if level == cfg.depth:
            x = layers.Dropout(cfg.dropout, seed=next(seeds), name=f"enc{level}_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    filters = cfg.base_filters * 2 ** cfg.depth
    x = _conv(filters, 3, "bottleneck_conv1", next(seeds), act)(x)
    x = _conv(filters, 3, "bottleneck_conv2", next(seeds), act)(x)
    x = layers.Dropout(cfg.dropout, seed=next(seeds), name="bottleneck_dropout")(x)

    for level in range(cfg.depth, 0, -1):
        filters = cfg.base_filters * 2 ** (level - 1)
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_upsample")(x)
        x = _conv(filters, 2, f"dec{level}_upconv", next(seeds), act)(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        x = _conv(filters, 3, f"dec{level}_conv1", next(seeds), act)(x)
        x = _conv(filters, 3, f"dec{level}_conv2", next(seeds), act)(x)

    # The residual head's correction is linear in the decoder features: behind a 3-channel ReLU (the paper's
    # head_conv) it often died early in training (all three units negative, the network stuck at its input).
    x = _conv(3, 3, "head_conv", next(seeds), activation="relu" if cfg.head == "sigmoid" else None)(x)
    if cfg.head == "sigmoid":
        outputs = layers.Conv2D(3, 1, activation="sigmoid",
                                kernel_initializer=keras.initializers.GlorotUniform(next(seeds)),
                                name="output", dtype="float32")(x)
    else:
        # Demo option: the mean of the input views plus a correction that starts at zero, so the
        # untrained network already returns the blurry image instead of grey.
        correction = layers.Conv2D(3, 1, kernel_initializer="zeros", name="head_correction", dtype="float32")(x)
        base = inputs if cfg.in_channels == 3 else layers.Average(name="view_mean", dtype="float32")(
            [inputs[..., :3], inputs[..., 3:]])
        outputs = layers.Add(name="output", dtype="float32")([layers.Activation("linear", dtype="float32",
                                                                                 name="input_mean")(base), correction])
    name = "DPDNet" if cfg.input_mode == "dual" else "DPDNet_Single"
    return keras.Model(inputs, outputs, name=name)


def count_params(model: keras.Model) -> int:
    """Trainable parameter count (31,035,151 for the paper's DPDNet)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
