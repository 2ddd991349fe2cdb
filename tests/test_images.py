"""Image IO and padding, and the DPDD layout reader, on files the tests write."""

import os

import numpy as np
import pytest

from config import make_config
import dpdd
from dpdd import DatasetError, compare_with_official, find_dataset_root, list_scenes, official_split
from images import ImageError, crop, pad_to_multiple, read_image, to_float, write_image


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


def test_bad_images_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png: file not found"):
        read_image(str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="bad.png: unreadable or truncated"):
        read_image(str(bad))
    import cv2
    cv2.imwrite(str(tmp_path / "gray.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(ImageError, match="gray.png: has 1 channel"):
        read_image(str(tmp_path / "gray.png"))


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
