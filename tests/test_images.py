"""Image IO and padding, and the DPDD layout reader, on files the tests write."""

import os

import numpy as np
import pytest

from config import make_config
import dpdd
from dpdd import DatasetError, compare_with_official, find_dataset_root, list_scenes, official_split
from images import (ImageError, crop, levels, pad_to_multiple, quantize, read_image, to_float, white_from_values,
                    write_image)


def test_16_and_8_bit_round_trip_keep_depth_and_rgb_order(tmp_path):
    rng = np.random.default_rng(0)
    for dtype, peak in ((np.uint16, 65535), (np.uint8, 255)):
        img = rng.integers(0, peak + 1, (7, 9, 3)).astype(dtype)
        img[0, 0] = (peak, 0, 0)  # pure red stays in channel 0
        path = str(tmp_path / f"x{peak}.png")
        write_image(path, img)
        back = read_image(path)
        assert back.dtype == dtype and np.array_equal(back, img)
        assert to_float(back)[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_float_written_as_rounded_16_bit(tmp_path):
    path = str(tmp_path / "f.png")
    write_image(path, np.full((2, 2, 3), 0.5, np.float32))
    assert read_image(path)[0, 0, 0] == 32768  # 0.5*65535 = 32767.5 rounds half to even -> 32768


def test_raw_levels_are_found_from_the_values_and_checked():
    """16-bit files whose values fit in 10 or 12 bits are taken as raw data stored unscaled: white 1023 or 4095.
    One value more and they are read as 16-bit; 8-bit images never are raw."""
    def img(top, dtype=np.uint16):
        a = np.zeros((4, 5, 3), dtype)
        a[1, 2, 0] = top
        return a
    assert [white_from_values(16, v) for v in (0, 1023, 1024, 4095, 4096, 65535)] == [1023, 1023, 4095, 4095,
                                                                                     65535, 65535]
    assert white_from_values(8, 200) == 255
    assert levels(img(1000), img(3000)) == (0, 4095)                # the views of a pair share their levels
    assert levels(img(1000)) == (0, 1023) and levels(img(5000)) == (0, 65535) and levels(img(9, np.uint8)) == (0, 255)
    assert levels(img(1000), black=64, white=65535) == (64, 65535)  # given levels win
    for kwargs, message in (({"black": 1023}, r"below the white level 1023 \(found from the values: 10-bit raw"),
                            ({"black": -1}, "at least 0"),
                            ({"black": 70000, "white": 65535}, "below the white level 65535$"),
                            ({"white": 70000}, "outside 1..65535"), ({"white": 0}, "outside 1..65535")):
        with pytest.raises(ImageError, match=message):
            levels(img(1000), name="x.png", **kwargs)
    with pytest.raises(ImageError, match="x.png: white level 1023 is outside 1..255, the range of 8-bit images"):
        levels(img(9, np.uint8), white=1023, name="x.png")


def test_levels_map_black_to_0_and_white_to_1_and_back():
    raw = np.array([[[0, 64, 543]], [[1023, 1100, 300]]], np.uint16)   # below black and above white are clipped
    x = to_float(raw, 64, 1023)
    np.testing.assert_allclose(x[..., 0].ravel(), [0.0, 1.0])
    np.testing.assert_allclose(x[0, 0, 1:], [0.0, (543 - 64) / 959], rtol=1e-6)
    assert x[1, 0, 1] == 1.0 and x.dtype == np.float32
    back = quantize(x, 16, 64, 1023)
    assert back.dtype == np.uint16 and back.tolist() == [[[64, 64, 543]], [[1023, 1023, 300]]]
    assert quantize(np.float32([[[0.5]]]), 8).item() == 128 and to_float(np.uint8([[[255]]])).item() == 1.0
    np.testing.assert_allclose(to_float(np.uint8([[[5, 130]]]), 5).ravel(), [0.0, 0.5])   # white: 255
    for bits, black, white in ((8, 0, 1023), (16, 100, 100), (16, -1, 1023)):
        with pytest.raises(ValueError, match="do not fit"):
            quantize(x, bits, black, white)


def test_bad_images_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png: file not found"):
        read_image(str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="bad.png: unreadable or truncated"):
        read_image(str(bad))
    import cv2
    cv2.imwrite(str(tmp_path / "gray.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(ImageError, match=r"gray.png: has 1 channel\(s\), expected 3 \(RGB\)$"):
        read_image(str(tmp_path / "gray.png"))
    assert read_image(str(tmp_path / "gray.png"), allow_grey=True).shape == (4, 4, 1)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ImageError, match=r"rgba.png: has 4 channel\(s\), expected 3 \(RGB\) or 1$"):
        read_image(str(tmp_path / "rgba.png"), allow_grey=True)


@pytest.mark.parametrize("h, w", [(1120, 1680), (37, 50), (16, 17), (5, 3)])
def test_pad_then_crop_is_exact(h, w):
    img = np.random.default_rng(1).random((h, w, 6)).astype(np.float32)
    padded, size = pad_to_multiple(img, 16)
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    assert padded.shape[0] - h < 16 and padded.shape[1] - w < 16
    assert np.array_equal(crop(padded, size), img)
    if (h, w) == (1120, 1680):
        assert padded is img
    if (h, w) == (37, 50):  # reflection: row 37 mirrors row 35
        assert np.array_equal(padded[37, :w], img[35])


def make_dpdd(root, split, names, size=(8, 12)):
    for i, name in enumerate(names):
        img = np.full(size + (3,), i * 100, np.uint16)
        write_image(os.path.join(root, f"{split}_c", "source", f"{name}.png"), img)
        write_image(os.path.join(root, f"{split}_c", "target", f"T{i:03d}.png"), img)
        write_image(os.path.join(root, f"{split}_l", "source", f"{name}_L.png"), img)
        write_image(os.path.join(root, f"{split}_r", "source", f"{name}_R.png"), img)


def test_scenes_pair_targets_by_position_and_views_by_name(tmp_path):
    make_dpdd(str(tmp_path), "test", ["B2", "A1", "C3"])
    scenes = list_scenes(str(tmp_path), "test")
    assert [s.source for s in scenes] == ["A1", "B2", "C3"]
    assert [os.path.basename(s.target_path) for s in scenes] == ["T000.png", "T001.png", "T002.png"]
    assert os.path.basename(scenes[1].left_path) == "B2_L.png"
    assert os.path.basename(scenes[2].right_path) == "C3_R.png"


def test_layout_errors(tmp_path):
    root = str(tmp_path)
    make_dpdd(root, "train", ["A1", "B2"])
    os.remove(os.path.join(root, "train_l", "source", "B2_L.png"))
    with pytest.raises(DatasetError, match="B2.png: left view B2_L missing"):
        list_scenes(root, "train")
    with pytest.raises(DatasetError, match="val_c/source: folder missing"):
        list_scenes(root, "val")
    with pytest.raises(DatasetError, match="looked in: .*nowhere.*synthesize.py"):
        find_dataset_root(make_config("paper", {"dataset_root": str(tmp_path / "nowhere")}))


def test_official_split_and_categories():
    split = official_split()
    assert {k: len(v) for k, v in split.items()} == {"train": 350, "val": 74, "test": 76}
    cats = dpdd.load_test_labels().categories
    assert len(cats) == 76 and sorted(cats.values()).count("indoor") == 37
    assert set(cats) == {s for s, _ in split["test"]}
    scenes = [dpdd.Scene("test", s, "", "", "", "") for s, _ in split["test"][1:]]
    assert compare_with_official("test", scenes) == [f"test: 1 official scenes missing (first: {split['test'][0][0]})"]
