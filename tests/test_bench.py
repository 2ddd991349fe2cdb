"""bench.py's FLOP count (its hand-written formula) against one read off the network model.py builds."""

import keras
import pytest

import bench
from config import make_config
from model import build_model


def flops_from_layers(model: keras.Model) -> int:
    """2 x multiply-adds of every Conv2D, from its kernel and output shapes (what bench.conv_flops counts)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout
    return total


@pytest.mark.parametrize("preset, height, width", [("paper", 1120, 1680), ("single", 512, 512),
                                                   ("demo", 208, 320)])
def test_conv_flops_match_the_built_network(preset, height, width):
    cfg = make_config(preset)
    assert bench.conv_flops(cfg, height, width) == flops_from_layers(build_model(cfg, height, width))


def test_paper_forward_pass_flops():
    assert bench.conv_flops(make_config("paper"), 1120, 1680) == pytest.approx(3.149e12, rel=1e-3)
