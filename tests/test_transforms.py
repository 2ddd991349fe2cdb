"""The flips and turns that keep the dual-pixel geometry (transforms.py): as train.py's augmentation, and as the
self-ensemble of inference.predict_image, checked against hand computations with models whose output is a
known function of the input; and which weights get the self-ensemble (weights.load_model, deblur.py)."""

import dataclasses
import json
import zipfile

import keras
import numpy as np
import pytest

import transforms
import weights
from config import Config, make_config
from evalkit import TINY, load_script, save_checkpoint, tiny_model, write_keras2_hdf5
from images import read_image, to_float, write_image
from inference import ensemble_transforms, predict_image
from train import STATE_JSON
from transforms import TRANSFORMS


def test_augmentation_keeps_dual_pixel_geometry():
    """A horizontal flip swaps the left and right views; dual input never gets 90-degree turns; the single
    image gets all 8 flips/rotations; input and target always move together."""
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 4, 6)), rng.random((4, 4, 3))
    fx, fy = transforms.apply(x, "hflip_swap", swap_views=True), transforms.apply(y, "hflip_swap")
    assert np.array_equal(fx[..., :3], x[:, ::-1, 3:]) and np.array_equal(fx[..., 3:], x[:, ::-1, :3])
    assert np.array_equal(fy, y[:, ::-1])
    assert np.array_equal(transforms.apply(x, "vflip", swap_views=True), x[::-1])
    assert not any("rot90" in t or "transpose" in t for t in TRANSFORMS["dual"])
    assert len({transforms.apply(y, t).tobytes() for t in TRANSFORMS["single"]}) == 8


def test_invert_undoes_every_transform():
    y = np.random.default_rng(1).random((5, 7, 3))
    for name in TRANSFORMS["single"] + TRANSFORMS["dual"]:
        assert np.array_equal(transforms.invert(transforms.apply(y, name), name), y), name
    assert not np.array_equal(transforms.apply(transforms.apply(y, "rot90"), "rot90"), y)  # rot90 needs rot270


def shift_model(channels: int) -> keras.Model:
    """out(y, x) = channels 0-2 of the input at (y, x + 1): a 3x3 convolution with one tap, zero padding."""
    inp = keras.Input((None, None, channels))
    conv = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)
    model = keras.Model(inp, conv(inp))
    kernel = np.zeros((3, 3, channels, 3), np.float32)
    for c in range(3):
        kernel[1, 2, c, c] = 1.0
    conv.set_weights([kernel])
    return model


def test_dual_self_ensemble_swaps_the_views_and_turns_each_output_back():
    """With the model out = L(y, x+1): the horizontal flips see the views swapped and mirrored, so they give
    R(y, x-1) once turned back, and the mean of the 4 is (L(y, x+1) + R(y, x-1)) / 2."""
    rng = np.random.default_rng(2)
    left, right = rng.random((16, 24, 3), np.float32), rng.random((16, 24, 3), np.float32)
    cfg = make_config("paper", {**TINY, "self_ensemble": "on"})
    out = predict_image(shift_model(6), np.concatenate([left, right], -1), cfg)
    expected = (left[1:-1, 2:] + right[1:-1, :-2]) / 2
    np.testing.assert_allclose(out[1:-1, 1:-1], expected, atol=1e-6)
    one = predict_image(shift_model(6), np.concatenate([left, right], -1), dataclasses.replace(cfg, self_ensemble="off"))
    np.testing.assert_allclose(one[1:-1, 1:-1], left[1:-1, 2:], atol=1e-6)


def test_single_self_ensemble_averages_the_eight_flips_and_turns():
    """With out = I(y, x+1), the 8 flips and turns turned back shift towards each of the 4 neighbours twice."""
    img = np.random.default_rng(3).random((16, 24, 3), np.float32)
    cfg = make_config("paper", {**TINY, "input_mode": "single", "self_ensemble": "on"})
    out = predict_image(shift_model(3), img, cfg)
    expected = (img[1:-1, 2:] + img[1:-1, :-2] + img[2:, 1:-1] + img[:-2, 1:-1]) / 4
    np.testing.assert_allclose(out[1:-1, 1:-1], expected, atol=1e-6)


@pytest.mark.parametrize("augment, setting, passes", [(True, "auto", 4), (False, "auto", 1), (True, "off", 1),
                                                      (False, "on", 4)])
def test_weights_trained_with_flips_get_the_self_ensemble(tmp_path, augment, setting, passes):
    """auto follows `augment` in the config.json beside the weights, not the preset running them (demo: on)."""
    model, cfg = tiny_model("dual", seed=0, augment=augment)
    path = save_checkpoint(model, cfg, str(tmp_path / "run"))
    _, model_cfg = weights.load_model(path, make_config("demo", {"self_ensemble": setting}))
    assert len(ensemble_transforms(model_cfg)) == passes


def test_weights_that_do_not_say_run_in_one_pass_unless_train_py_stored_it(tmp_path):
    """The authors' HDF5 and a .keras without config.json say nothing about flips: one pass under any preset; a
    train.py checkpoint moved away from its config.json still carries its config inside."""
    demo = make_config("demo")
    model, cfg = tiny_model("dual", seed=0)
    write_keras2_hdf5(model, str(tmp_path / "authors.hdf5"))
    model.save(str(tmp_path / "bare.keras"))
    for name in ("authors.hdf5", "bare.keras"):
        assert ensemble_transforms(weights.load_model(str(tmp_path / name), demo)[1]) == ("identity",), name
    with zipfile.ZipFile(tmp_path / "bare.keras", "a") as z:
        z.writestr(STATE_JSON, json.dumps({"config": {**cfg.to_dict(), "augment": True}}))
    assert len(ensemble_transforms(weights.load_model(str(tmp_path / "bare.keras"), make_config("paper"))[1])) == 4


def test_weights_carry_the_width_of_their_training_frames(tmp_path):
    """pyramid_levels reads the training frames from model_cfg: the weights' own (the config inside a train.py
    checkpoint, else config.json beside them), the paper's for files that do not say, never the preset's; and
    model_cfg stays a valid config (patches that fit the frames)."""
    frame = lambda c: (c.working_width, c.working_height, c.patch_size)   # noqa: E731
    model, cfg = tiny_model("dual", seed=0, working_width=320, working_height=208, patch_size=64)
    path = save_checkpoint(model, cfg, str(tmp_path / "run"))
    loaded = weights.load_model(path, make_config("paper"))[1]
    assert frame(loaded) == (320, 208, 64)
    assert frame(Config.from_dict(loaded.to_dict())) == (320, 208, 64)            # validates
    write_keras2_hdf5(model, str(tmp_path / "authors.hdf5"))
    assert frame(weights.load_model(str(tmp_path / "authors.hdf5"), make_config("demo"))[1]) == (1680, 1120, 512)
    model.save(str(tmp_path / "bare.keras"))
    with zipfile.ZipFile(tmp_path / "bare.keras", "a") as z:
        z.writestr(STATE_JSON, json.dumps({"config": {**cfg.to_dict(), "working_width": 448, "working_height": 288}}))
    with open(tmp_path / "config.json", "w") as f:            # a folder's config.json loses to the checkpoint's own
        json.dump({**cfg.to_dict(), "working_width": 640, "working_height": 416}, f)
    assert frame(weights.load_model(str(tmp_path / "bare.keras"), make_config("demo"))[1]) == (448, 288, 64)


def test_deblur_averages_the_flipped_passes(tmp_path, capsys):
    """deblur.py on weights trained with augment: the output is the mean of the four passes, computed here by
    hand from the network's own outputs on the flipped and swapped views."""
    model, cfg = tiny_model("dual", seed=5, augment=True)
    path = save_checkpoint(model, cfg, str(tmp_path / "run"))
    rng = np.random.default_rng(6)
    views = {v: (rng.random((32, 48, 3)) * 65535).astype(np.uint16) for v in "LR"}
    for v, img in views.items():
        write_image(str(tmp_path / f"s_{v}.png"), img, bits=16)
    load_script("deblur").main(["--weights", path, "--left", str(tmp_path / "s_L.png"), "--right",
                                str(tmp_path / "s_R.png"), "--out", str(tmp_path / "out.png")])
    assert "mean of 4 passes" in capsys.readouterr().out
    L, R = to_float(views["L"]), to_float(views["R"])

    def net(a, b):
        return np.clip(np.asarray(model(np.concatenate([a, b], -1)[None].copy()))[0], 0, 1)
    passes = [net(L, R), net(L[::-1], R[::-1])[::-1], net(R[:, ::-1], L[:, ::-1])[:, ::-1],
              net(R[::-1, ::-1], L[::-1, ::-1])[::-1, ::-1]]
    expected = np.mean(passes, axis=0)
    np.testing.assert_allclose(to_float(read_image(str(tmp_path / "out.png"))), expected, atol=2 / 65535)
    assert not np.allclose(passes[0], expected, atol=2 / 65535)   # the ensemble changed the output
