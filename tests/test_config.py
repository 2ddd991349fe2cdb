"""Config: presets, --set overrides with validation, and the JSON round trip."""

import argparse
import os

import pytest

from config import (PRESETS, REPO_DIR, Config, ConfigError, add_config_args, changed_keys, config_from_args,
                    make_config)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return config_from_args(parser.parse_args(list(argv)), verbose=False)


def test_paper_preset_is_the_paper():
    cfg = make_config("paper")
    assert (cfg.input_mode, cfg.base_filters, cfg.depth, cfg.dropout) == ("dual", 64, 4, 0.4)
    assert (cfg.patch_size, cfg.overlap, cfg.val_overlap, cfg.discard_fraction) == (512, 0.6, 0.01, 0.3)
    assert cfg.sobel_ksizes == (3, 7, 11, 15)
    assert (cfg.working_width, cfg.working_height) == (1680, 1120)
    assert (cfg.batch_size, cfg.epochs, cfg.learning_rate, cfg.lr_decay_every, cfg.lr_decay_factor) == (5, 200, 2e-5, 60, 0.5)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon, cfg.loss) == (0.9, 0.999, 1e-7, "mse")
    assert (cfg.train_stride, cfg.val_stride) == (204, 506)
    assert cfg.head == "sigmoid" and not cfg.augment and cfg.in_channels == 6
    assert cfg.tile == 0 and cfg.scales == 0          # evaluation: whole images; sizes by the weights (1 on DPDD)
    assert cfg.run_name == "dpdnet"


def test_every_preset_loads_and_validates():
    for name in PRESETS:
        make_config(name).validate()
    single = make_config("single")
    assert single.input_mode == "single" and single.in_channels == 3 and single.run_name == "dpdnet_single"


def test_overrides_apply_with_types():
    cfg = parse("--preset", "single", "--set", "batch_size=2", "--set", "learning_rate=1e-4",
                "--set", "augment=true", "--set", "sobel_ksizes=3,5", "--set", "run_name=abl1")
    assert (cfg.batch_size, cfg.learning_rate, cfg.augment, cfg.sobel_ksizes, cfg.run_name) == (2, 1e-4, True, (3, 5), "abl1")
    assert cfg.input_mode == "single"


def test_user_paths_are_relative_to_the_current_folder_defaults_to_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse("--set", "dataset_root=mydata")
    assert cfg.resolve_path("dataset_root") == os.path.join(str(tmp_path), "mydata")
    assert cfg.resolve_path("checkpoint_dir") == os.path.join(REPO_DIR, "checkpoints")


@pytest.mark.parametrize("arg, message", [
    ("batchsize=3", "unknown config key 'batchsize'"),
    ("batch_size=three", "batch_size: cannot read 'three' as int"),
    ("batch_size=0", "batch_size: must be at least 1"),
    ("scales=-1", "scales: must be >= 0"),
    ("black_level=-1", "black_level: must be >= 0"),
    ("white_level=65536", "white_level: must be above black_level (0) and at most 65535, got 65536"),
    ("input_mode=triple", "input_mode: must be one of dual, single"),
    ("dropout=1.5", "dropout: must be in [0, 1)"),
    ("noise_floor=0", "noise_floor: must be positive"),
    ("patch_size=500", "patch_size: must be a multiple of 2**depth = 16"),
    ("tile=256", "tile: must be larger than 2*tile_overlap (256), got 256"),
    ("augment=maybe", "augment: cannot read 'maybe' as bool"),
    ("sobel_ksizes=3,4", "sobel_ksizes: OpenCV Sobel kernel sizes are odd"),
    ("noequals", "--set expects KEY=VALUE"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(arg, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--set", arg)
    text = str(exit_info.value.code)
    assert text.startswith("error: config: ") and message in text and "\n" not in text


def test_unknown_preset():
    with pytest.raises(SystemExit, match="unknown preset 'papr'"):
        parse("--preset", "papr")


def test_saved_json_reloads_to_the_same_config(tmp_path):
    cfg = make_config("single", {"batch_size": 3, "sobel_ksizes": (3, 5), "learning_rate": 1e-3})
    path = tmp_path / "config.json"
    cfg.save_json(str(path))
    again = Config.load_json(str(path))
    assert again == cfg and again.differences(cfg.to_dict(), "saved") == []
    assert set(changed_keys(make_config("paper").to_dict(), again.to_dict())) == {
        "run_name", "input_mode", "batch_size", "learning_rate", "sobel_ksizes"}
    assert again.differences({"batch_size": 5, "patch_dir": os.path.join(REPO_DIR, "patches")}, "saved",
                             keys=("batch_size", "patch_dir")) == ["batch_size: 5 saved, 3 now"]
    assert not [f for f in os.listdir(tmp_path) if f != "config.json"]  # no temporary left behind


def test_json_with_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        Config.from_dict({"bogus": 1})
