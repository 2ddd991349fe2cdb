"""weights.py against the authors' released Keras 2.2.4 HDF5 layout, with the layer order taken from their
published architecture (DPDNet/model.py of github.com/Abdullah-Abuolaim/defocus-deblurring-dual-pixel), not
from weights.py: each of the 24 convolutions must land on the right layer of ours, with BGR turned into RGB.

Keras 2 names layers when they are created (conv2d_1 ... conv2d_24 in the order of the authors' unet()),
and four pairs of convolutions have identical shapes (encoder level k's second conv and decoder step k's
second conv), so only the order, not a shape check, can tell them apart.
"""

import json

import h5py
import keras
import numpy as np
import pytest

import weights
from config import make_config

# The authors' convolutions in creation order, at the paper's width: (Keras 2 name, kernel size, input
# channels, filters, the layer of model.py that must receive it). The decoder's 2x2 conv is created before
# the concatenation and the two 3x3 convs of its step; the head is a 3x3 conv to 3 channels, then a 1x1
# sigmoid conv. Input channels: 6 for DPDNet (left BGR, right BGR), 3 for DPDNet-Single.
IN = None
AUTHORS_CONVS = [
    ("conv2d_1", 3, IN, 64, "enc1_conv1"),
    ("conv2d_2", 3, 64, 64, "enc1_conv2"),
    ("conv2d_3", 3, 64, 128, "enc2_conv1"),
    ("conv2d_4", 3, 128, 128, "enc2_conv2"),
    ("conv2d_5", 3, 128, 256, "enc3_conv1"),
    ("conv2d_6", 3, 256, 256, "enc3_conv2"),
    ("conv2d_7", 3, 256, 512, "enc4_conv1"),
    ("conv2d_8", 3, 512, 512, "enc4_conv2"),
    ("conv2d_9", 3, 512, 1024, "bottleneck_conv1"),
    ("conv2d_10", 3, 1024, 1024, "bottleneck_conv2"),
    ("conv2d_11", 2, 1024, 512, "dec4_upconv"),
    ("conv2d_12", 3, 1024, 512, "dec4_conv1"),
    ("conv2d_13", 3, 512, 512, "dec4_conv2"),
    ("conv2d_14", 2, 512, 256, "dec3_upconv"),
    ("conv2d_15", 3, 512, 256, "dec3_conv1"),
    ("conv2d_16", 3, 256, 256, "dec3_conv2"),
    ("conv2d_17", 2, 256, 128, "dec2_upconv"),
    ("conv2d_18", 3, 256, 128, "dec2_conv1"),
    ("conv2d_19", 3, 128, 128, "dec2_conv2"),
    ("conv2d_20", 2, 128, 64, "dec1_upconv"),
    ("conv2d_21", 3, 128, 64, "dec1_conv1"),
    ("conv2d_22", 3, 64, 64, "dec1_conv2"),
    ("conv2d_23", 3, 64, 3, "head_conv"),
    ("conv2d_24", 1, 3, 3, "output"),
]
# The pairs a shape check cannot tell apart.
SAME_SHAPE_PAIRS = [("conv2d_2", "conv2d_22"), ("conv2d_4", "conv2d_19"), ("conv2d_6", "conv2d_16"),
                    ("conv2d_8", "conv2d_13")]

# Keras 2's model.layers for that graph (the order of the file's layer_names): every layer lies on the one
# longest path from input to output, so this is the build order with the weightless layers in between.
KERAS2_LAYER_ORDER = [
    "input_1",
    "conv2d_1", "conv2d_2", "max_pooling2d_1",
    "conv2d_3", "conv2d_4", "max_pooling2d_2",
    "conv2d_5", "conv2d_6", "max_pooling2d_3",
    "conv2d_7", "conv2d_8", "dropout_1", "max_pooling2d_4",
    "conv2d_9", "conv2d_10", "dropout_2",
    "up_sampling2d_1", "conv2d_11", "concatenate_1", "conv2d_12", "conv2d_13",
    "up_sampling2d_2", "conv2d_14", "concatenate_2", "conv2d_15", "conv2d_16",
    "up_sampling2d_3", "conv2d_17", "concatenate_3", "conv2d_18", "conv2d_19",
    "up_sampling2d_4", "conv2d_20", "concatenate_4", "conv2d_21", "conv2d_22",
    "conv2d_23", "conv2d_24",
]

# Our channel -> the authors' channel: OpenCV's BGR per view.
FROM_BGR_INPUT = {6: [2, 1, 0, 5, 4, 3], 3: [2, 1, 0]}
FROM_BGR_OUTPUT = [2, 1, 0]


def authors_weights(in_channels: int, seed: int = 0) -> dict:
    """name -> (kernel, bias) with the authors' shapes, random so that every layer and channel differs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, k, cin, cout, _ in AUTHORS_CONVS:
        kernel = rng.standard_normal((k, k, cin or in_channels, cout), dtype=np.float32)
        out[name] = (kernel, rng.standard_normal(cout, dtype=np.float32))
    return out


def write_keras2_model(path: str, convs: dict, layer_order: list[str]) -> None:
    """The HDF5 file Keras 2.2.4's model.save writes: root attributes, then model_weights with layer_names,
    one group per layer (weightless ones with an empty weight_names) holding <layer>/kernel:0 and bias:0."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_("2.2.4")
        f.attrs["backend"] = np.bytes_("tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps({"class_name": "Model", "config": {
            "name": "model_1", "layers": [{"name": n} for n in layer_order]}}))
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([n.encode() for n in layer_order])
        group.attrs["backend"] = np.bytes_("tensorflow")
        group.attrs["keras_version"] = np.bytes_("2.2.4")
        for name in layer_order:
            layer = group.create_group(name)
            if name not in convs:
                layer.attrs["weight_names"] = np.asarray([])
                continue
            layer.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
            kernel, bias = convs[name]
            layer.create_dataset(f"{name}/kernel:0", data=kernel)
            layer.create_dataset(f"{name}/bias:0", data=bias)
        f.create_group("optimizer_weights")


def test_the_authors_order_has_four_same_shaped_pairs():
    shapes = {name: (k, cin, cout) for name, k, cin, cout, _ in AUTHORS_CONVS}
    for a, b in SAME_SHAPE_PAIRS:
        assert shapes[a] == shapes[b]
    unique = [s for s in shapes.values() if list(shapes.values()).count(s) == 1]
    assert len(unique) == len(AUTHORS_CONVS) - 2 * len(SAME_SHAPE_PAIRS)
    assert [n for n in KERAS2_LAYER_ORDER if n.startswith("conv2d_")] == [c[0] for c in AUTHORS_CONVS]


@pytest.mark.parametrize("mode,order", [("dual", "keras2"), ("single", "keras2"), ("dual", "shuffled")])
def test_each_authors_conv_lands_on_its_layer(tmp_path, mode, order):
    in_channels = 6 if mode == "dual" else 3
    convs = authors_weights(in_channels, seed=in_channels)
    layer_order = list(KERAS2_LAYER_ORDER)
    if order == "shuffled":  # a file whose layer list is out of order: the conv2d_<n> numbers still decide
        np.random.default_rng(1).shuffle(layer_order)
    path = str(tmp_path / "defocus_deblurring_dp_l5_s512_f0.7_d0.4.hdf5")
    write_keras2_model(path, convs, layer_order)

    model, model_cfg = weights.load_model(path, make_config("paper"))

    assert (model_cfg.input_mode, model_cfg.base_filters, model_cfg.depth, model_cfg.head) == (mode, 64, 4, "sigmoid")
    ours = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert ours == {c[4] for c in AUTHORS_CONVS}
    for name, _, _, _, our_name in AUTHORS_CONVS:
        kernel, bias = convs[name]
        if our_name == "enc1_conv1":
            kernel = kernel[:, :, FROM_BGR_INPUT[in_channels], :]
        if our_name == "output":
            kernel, bias = kernel[..., FROM_BGR_OUTPUT], bias[FROM_BGR_OUTPUT]
        layer = model.get_layer(our_name)
        assert np.array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel), f"{name} -> {our_name}: kernel"
        assert np.array_equal(keras.ops.convert_to_numpy(layer.bias), bias), f"{name} -> {our_name}: bias"
