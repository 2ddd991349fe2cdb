"""train.py on a tiny DPDD-layout set made here, under the Keras backend of this process (run_tests.sh runs this
module under TensorFlow and again under JAX): loss goes down, the lr halving schedule, exact resume after an
interruption or SIGKILL, two replicas against one, checkpoints and batches across backends, each fail-fast
message."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from config import REPO_DIR, make_config
from images import write_image

pytestmark = pytest.mark.backends
BACKEND = os.environ["KERAS_BACKEND"]
OTHER_BACKEND = "jax" if BACKEND == "tensorflow" else "tensorflow"

H, W = 128, 192  # working size; 64x64 patches at stride 32 -> 15 candidates per train scene, 11 kept


def _write_dataset(root):
    """2 train + 1 val scenes whose target is a fixed function of the views: the views are the target
    shifted by +-2 px and blurred, the combined image their mean."""
    rng = np.random.default_rng(0)
    for split, names in (("train", ["s0", "s1"]), ("val", ["v0"])):
        for name in names:
            coarse = rng.random((H // 16, W // 16, 3)).astype(np.float32)
            target = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC).clip(0, 1)
            left = cv2.GaussianBlur(np.roll(target, 2, axis=1), (5, 5), 1.5)
            right = cv2.GaussianBlur(np.roll(target, -2, axis=1), (5, 5), 1.5)
            for sub, img in ((f"{split}_c/source", (left + right) / 2), (f"{split}_c/target", target)):
                write_image(os.path.join(root, sub, f"{name}.png"), img, bits=16)
            write_image(os.path.join(root, f"{split}_l/source/{name}_L.png"), left, bits=16)
            write_image(os.path.join(root, f"{split}_r/source/{name}_R.png"), right, bits=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The dataset root and a built patch store (via data_prep.build_store)."""
    from data_prep import build_store
    base = tmp_path_factory.mktemp("train")
    root, patches = str(base / "dpdd"), str(base / "patches")
    _write_dataset(root)
    build_store(_cfg(root, patches, str(base / "unused")), progress=False)
    return base, root, patches


def _cfg(root, patches, ckpt, **kw):
    values = dict(dataset_root=root, patch_dir=patches, checkpoint_dir=ckpt, working_width=W, working_height=H,
                  patch_size=64, overlap=0.5, base_filters=8, depth=2, batch_size=4, learning_rate=1e-3,
                  epochs=2, steps_per_epoch=0, data_workers=1, run_name="run")
    values.update(kw)
    return make_config("paper", values)


def _log(result):
    with open(os.path.join(result["run_dir"], "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    import keras
    return keras.models.load_model(path, compile=False).get_weights()


def _same_weights(a, b, atol=0.0):
    return len(a) == len(b) and all(np.allclose(x, y, rtol=0, atol=atol) for x, y in zip(a, b))


class _StopAt:
    """A callback that raises `error` after the `step`-th training step of a fresh run (the checkpoint of that
    step, if any, is written by then: train.py's own callback runs first)."""

    def __new__(cls, step, error):
        import keras

        class Stop(keras.callbacks.Callback):
            done = 0

            def on_train_batch_end(self, batch, logs=None):
                self.done += 1
                if self.done >= step:
                    raise error

        return Stop()


def test_loss_decreases_and_lr_halves_on_schedule(store, tmp_path):
    import keras
    from train import read_checkpoint_state, train
    _, root, patches = store
    cfg = _cfg(root, patches, str(tmp_path), epochs=6, steps_per_epoch=8, lr_decay_every=2, learning_rate=2e-3,
               dropout=0.0)
    result = train(cfg, verbose=0)
    rows = _log(result)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [float(r["lr"]) for r in rows] == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3, 5e-4, 5e-4], rel=1e-6)
    losses = [float(r["loss"]) for r in rows]
    val = [float(r["val_loss"]) for r in rows]
    # epoch 1's mean already includes most of the easy gain, so the later epochs' drop is the smaller one
    assert losses[-1] < 0.85 * losses[0] and val[-1] < 0.95 * val[0], (losses, val)
    assert result["epochs_done"] == 6 and result["global_step"] == 48
    assert result["lr"] == pytest.approx(5e-4, rel=1e-6)
    assert result["best_epoch"] == int(np.argmin(val)) + 1 and result["best_value"] == pytest.approx(min(val))

    run = result["run_dir"]
    assert json.load(open(os.path.join(run, "config.json")))["lr_decay_every"] == 2
    if BACKEND == "tensorflow":  # Keras writes TensorBoard logs through tf.summary
        assert any(f.startswith("events") for _, _, fs in os.walk(os.path.join(run, "tensorboard")) for f in fs)
    state = read_checkpoint_state(result["last"])
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (6, 0, 48)
    assert state["backend"] == result["backend"] == BACKEND and state["backend_version"]
    assert json.load(open(os.path.join(run, "last.json")))["global_step"] == 48
    # `best` is the plain float-input network that test.py loads
    net = keras.models.load_model(result["best"], compile=False)
    x = np.random.default_rng(1).random((1, 64, 64, 6), dtype=np.float32)
    y = np.asarray(net.predict(x, verbose=0))
    assert y.shape == (1, 64, 64, 3) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1


RESUME_SETTINGS = dict(epochs=3, checkpoint_every_steps=5, augment=True, seed=3)  # 8 steps per epoch, dropout 0.4


def test_a_network_that_learns_nothing_is_told_so(store, tmp_path, capsys):
    """train.py prints the val loss of returning the blurry input (here checked against the store's val patches
    in NumPy), a residual network that cannot move (lr 1e-12, zero correction) scores exactly that, and the run
    ends with a warning that it learnt nothing."""
    import re
    from data_prep import open_store
    from train import train
    _, root, patches = store
    cfg = _cfg(root, patches, str(tmp_path), head="residual", dropout=0.0, learning_rate=1e-12, epochs=1,
               steps_per_epoch=2)
    result = train(cfg, resume=False, verbose=0)
    val_store = open_store(cfg)
    x = val_store.gather("val", range(len(val_store.index["val"]))).astype(np.float64) / 65535
    expected = float(np.mean(((x[..., 0:3] + x[..., 3:6]) / 2 - x[..., 9:12]) ** 2))
    assert result["input_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["val_loss"] == pytest.approx(expected, rel=1e-4)
    out = capsys.readouterr()
    printed = float(re.search(r"the loss to beat\): ([0-9.e-]+)", out.out).group(1))
    assert printed == pytest.approx(expected, rel=1e-5)
    assert "the network has learnt (almost) nothing" in out.err
    assert "often trains with activation=leaky_relu and loss=charbonnier (the demo's), a lower" in out.err


def test_the_advice_for_a_stuck_run_leaves_out_what_it_already_does():
    from config import make_config
    from train import unsticking_advice
    assert unsticking_advice(make_config("paper")) == ("activation=leaky_relu and loss=charbonnier (the demo's), "
                                                       "a lower learning_rate, more steps or another seed")
    assert unsticking_advice(make_config("demo")) == "a lower learning_rate, more steps or another seed"
    assert unsticking_advice(make_config("paper", {"loss": "charbonnier"})).startswith("activation=leaky_relu (the")


def test_learnt_nothing_means_a_best_val_loss_within_two_percent_of_the_input():
    from train import learnt_nothing
    history = [{"val_loss": 1.05}, {"loss": 0.5}, {"val_loss": 0.985}]
    assert learnt_nothing(history, 1.0)                          # best 0.985: 1.5% below the input's loss
    assert not learnt_nothing(history + [{"val_loss": 0.975}], 1.0)
    assert not learnt_nothing([{"loss": 0.1}], 1.0)              # no val losses, no verdict
    assert not learnt_nothing(history, None)


def test_each_loss_against_hand_values_and_charbonnier_has_no_kink_at_zero_error():
    from train import make_loss
    target = np.array([[[0, 65535, 0]]], np.uint16)                 # one pixel: 0, 1, 0 after scaling
    output = np.array([[[0.003, 1.0, 0.0]]], np.float32)            # errors 0.003, 0, 0
    value = {kind: float(np.asarray(make_loss(kind)(target, output))[0, 0]) for kind in ("mse", "l1", "charbonnier")}
    assert value["mse"] == pytest.approx(9e-6 / 3, rel=1e-4)
    assert value["l1"] == pytest.approx(0.003 / 3, rel=1e-4)
    assert value["charbonnier"] == pytest.approx((np.sqrt(9e-6 + 1e-6) - 1e-3) / 3, rel=1e-4)

    def slope(kind, error, h=1e-6):                                 # d loss / d output, by central difference
        loss = make_loss(kind)
        at = [float(np.asarray(loss(np.zeros((1, 1, 1), np.uint16), np.full((1, 1, 1), error + s, np.float32)))[0, 0])
              for s in (h, -h)]
        return (at[0] - at[1]) / (2 * h)
    assert slope("l1", 2e-5) == pytest.approx(1.0, rel=1e-2)         # L1 pulls a tiny error back at full strength
    assert slope("charbonnier", 2e-5) == pytest.approx(2e-5 / np.hypot(2e-5, 1e-3), rel=1e-2)   # about 0.02
    assert slope("charbonnier", 0.1, h=1e-4) == pytest.approx(1.0, rel=1e-3)   # large errors: as L1


@pytest.fixture(scope="module")
def reference(store):
    """An uninterrupted run that the interrupted ones must reproduce."""
    from train import train
    base, root, patches = store
    result = train(_cfg(root, patches, str(base / "ckpt"), run_name="reference", **RESUME_SETTINGS), verbose=0)
    return result, _weights(result["last"]), _log(result)


def _assert_same_run(result, reference):
    ref, ref_weights, ref_log = reference
    assert (result["epochs_done"], result["global_step"]) == (ref["epochs_done"], ref["global_step"]) == (3, 24)
    assert result["lr"] == ref["lr"]
    # CPU training here is bit-for-bit repeatable (same batches, augmentations and dropout masks after a
    # resume); the tolerance only guards against a different oneDNN kernel choice.
    assert _same_weights(_weights(result["last"]), ref_weights, atol=1e-6)
    log = _log(result)
    assert [int(r["epoch"]) for r in log] == [0, 1, 2]
    for mine, theirs in zip(log, ref_log):
        assert float(mine["loss"]) == pytest.approx(float(theirs["loss"]), rel=1e-5)
        assert float(mine["val_loss"]) == pytest.approx(float(theirs["val_loss"]), rel=1e-5)
    assert result["best_epoch"] == ref["best_epoch"]


def test_interrupted_run_resumes_to_the_same_weights(store, reference):
    from train import read_checkpoint_state, train
    base, root, patches = store
    cfg = _cfg(root, patches, str(base / "ckpt"), run_name="interrupted", **RESUME_SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_StopAt(13, KeyboardInterrupt())], verbose=0)
    state = read_checkpoint_state(os.path.join(base, "ckpt", "interrupted", "last.keras"))
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 10)  # epoch 2, step 2
    result = train(cfg, resume=True, verbose=0)  # steps 11..24: the rest of epoch 2, then epoch 3
    _assert_same_run(result, reference)


def test_killed_process_resumes_to_the_same_weights(store, reference):
    from train import read_checkpoint_state, train
    base, root, patches = store
    settings = {**RESUME_SETTINGS, "checkpoint_every_steps": 1}
    cfg = _cfg(root, patches, str(base / "ckpt"), run_name="killed", **settings)
    args = [sys.executable, os.path.join(REPO_DIR, "train.py")]
    for key, value in cfg.to_dict().items():
        if key in ("dataset_root", "patch_dir", "checkpoint_dir", "run_name", "epochs", "checkpoint_every_steps",
                   "augment", "seed", "working_width", "working_height", "patch_size", "overlap", "base_filters",
                   "depth", "batch_size", "learning_rate", "data_workers"):
            args += ["--set", f"{key}={value}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(base, "ckpt", "killed", "last.keras")
    readable = os.path.join(base, "ckpt", "killed", "last.json")
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:  # kill once step 3 is saved: likely inside a save
        if os.path.exists(readable) and json.load(open(readable))["global_step"] >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    state = read_checkpoint_state(last)
    assert 3 <= state["global_step"] < 24
    _weights(last)  # loads
    result = train(cfg, resume=True, verbose=0)
    _assert_same_run(result, reference)


_STRATEGY_SCRIPT = """
import json, os, sys
if os.environ["KERAS_BACKEND"] == "tensorflow":  # JAX gets its two CPU devices from XLA_FLAGS
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {repo!r})
from config import make_config
from train import train
out = []
for values in json.loads(sys.argv[1]):
    r = train(make_config("paper", values), verbose=0)
    out.append({{k: r[k] for k in ("replicas", "global_batch", "epochs_done", "global_step", "train_loss",
                                   "val_loss", "last", "lr")}})
print("RESULT " + json.dumps(out))
"""


def _strategy_settings(root, patches, ckpt):
    return dict(dataset_root=root, patch_dir=patches, checkpoint_dir=ckpt, working_width=W, working_height=H,
                patch_size=64, overlap=0.5, base_filters=8, depth=2, learning_rate=1e-3, epochs=2, data_workers=1,
                checkpoint_every_steps=3)


@pytest.fixture(scope="module")
def one_replica(store):
    """One replica of batch 4 without dropout: what two replicas of batch 2 must reproduce."""
    from train import train
    base, root, patches = store
    common = _strategy_settings(root, patches, str(base / "ckpt"))
    result = train(make_config("paper", dict(common, batch_size=4, dropout=0.0, run_name="one_replica")), verbose=0)
    assert result["global_step"] == 16
    return result, _weights(result["last"])


def _assert_matches_one_replica(result, one_replica):
    single, single_weights = one_replica
    assert (result["replicas"], result["global_batch"], result["epochs_done"], result["global_step"]) == (2, 4, 2, 16)
    assert result["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert result["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
    # Adam turns summation-order noise in near-zero gradients into differences of up to one step (lr); data
    # split wrongly between the replicas moves the weights by many steps.
    diffs = [np.abs(x - y) for x, y in zip(_weights(result["last"]), single_weights)]
    assert max(d.max() for d in diffs) < 1e-3 and np.mean([d.mean() for d in diffs]) < 1e-5


def test_two_replica_mirrored_strategy_matches_one_replica(store, one_replica, tmp_path):
    """Two CPU devices (TensorFlow logical CPUs, or XLA's forced host device count under JAX) as two replicas of
    batch 2: the same global batch of 4 as one replica of batch 4, so (without dropout) the same weights up to
    float summation order; with dropout and lr_scaling=linear it trains too."""
    _, root, patches = store
    common = _strategy_settings(root, patches, str(tmp_path))
    runs = [dict(common, strategy="mirrored", batch_size=2, dropout=0.0, run_name="mirrored"),
            dict(common, strategy="mirrored", batch_size=2, run_name="mirrored_dropout", select_on="train",
                 lr_scaling="linear")]
    script = _STRATEGY_SCRIPT.format(repo=REPO_DIR)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    mirrored, with_dropout = json.loads(lines[-1][7:])
    _assert_matches_one_replica(mirrored, one_replica)
    assert (with_dropout["replicas"], with_dropout["global_step"]) == (2, 16)
    assert with_dropout["lr"] == pytest.approx(2e-3, rel=1e-6)  # linear scaling: lr * 2 replicas
    assert np.isfinite(with_dropout["train_loss"]) and os.path.isfile(with_dropout["last"])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs each backend in a subprocess; once is enough")
def test_strategies_a_backend_cannot_do_are_one_line_errors(store, tmp_path):
    """Several hosts under TensorFlow (Keras 3's fit cannot), several devices or XLA under PyTorch (which never
    imports TensorFlow on the way)."""
    _, root, patches = store
    cases = [("tensorflow", "strategy=multiworker", ["KERAS_BACKEND=jax", "keras-team/keras#20585", "mirrored"]),
             ("torch", "strategy=mirrored", ["KERAS_BACKEND=jax or tensorflow", "strategy=default"]),
             ("torch", "xla=true", ["KERAS_BACKEND=tensorflow or jax", "xla=false"])]
    for backend, setting, words in cases:
        args = [sys.executable, os.path.join(REPO_DIR, "train.py")]
        for kv in _sets(root, patches, str(tmp_path)) + [setting]:
            args += ["--set", kv]
        done = subprocess.run(args, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True,
                              timeout=300)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 1 and last.startswith(f"error: {setting}"), (backend, done.stderr[-2000:])
        assert all(w in last for w in words) and "Traceback" not in done.stderr, last
    assert not os.path.exists(tmp_path / "failing" / "last.keras")


def _main_error(capsys, *sets, extra=()):
    from train import main
    args = [a for kv in sets for a in ("--set", kv)] + list(extra)
    with pytest.raises(SystemExit) as exc:
        main(args)
    capsys.readouterr()
    return str(exc.value.code)


def _sets(root, patches, ckpt, **kw):
    values = dict(dataset_root=root, patch_dir=patches, checkpoint_dir=ckpt, working_width=W, working_height=H,
                  patch_size=64, overlap=0.5, base_filters=8, depth=2, batch_size=4, epochs=1, data_workers=1,
                  run_name="failing")
    values.update(kw)
    return [f"{k}={v}" for k, v in values.items()]


def test_missing_or_mismatched_patch_store_is_refused(store, tmp_path, capsys):
    _, root, patches = store
    message = _main_error(capsys, *_sets(root, str(tmp_path / "nothing"), str(tmp_path)))
    assert message.startswith("error: ") and "no complete patch store" in message and "data_prep.py" in message
    message = _main_error(capsys, *_sets(root, patches, str(tmp_path), overlap=0.6))
    assert "overlap: 0.5 in the store, 0.6 now" in message
    assert not os.path.exists(tmp_path / "failing" / "last.keras")


def test_resume_with_other_settings_is_refused(store, reference, capsys):
    from train import train
    base, root, patches = store
    ckpt = str(base / "ckpt")
    sets = [f"{k}={v}" for k, v in RESUME_SETTINGS.items()] + ["run_name=reference", "loss=l1", "dropout=0.2"]
    message = _main_error(capsys, *_sets(root, patches, ckpt), *sets)
    assert "other settings" in message and "dropout: 0.4 in the checkpoint, 0.2 now" in message
    assert "loss: 'mse' in the checkpoint, 'l1' now" in message and "--fresh" in message
    message = _main_error(capsys, *_sets(root, patches, ckpt, run_name="never_ran"), extra=["--resume"])
    assert "no checkpoint to resume" in message
    # epochs may change: the finished 3-epoch reference run is simply complete
    result = train(_cfg(root, patches, ckpt, run_name="reference", **RESUME_SETTINGS), verbose=0)
    assert result["epochs_done"] == 3


def test_resume_on_other_train_scenes_is_refused(store, reference, tmp_path):
    """A checkpoint resumes only on the train scenes it was trained on: a store cut from a copy of the dataset
    (same names, sizes and times) takes it up; once a train scene is rewritten and the store rebuilt, with the
    same number of patches, it is a one-line error."""
    from data_prep import build_store, open_store
    from train import TrainError, train
    base, root, patches = store
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(os.path.join(base, "ckpt", "reference"), os.path.join(ckpt, "reference"))
    data, other = str(tmp_path / "dpdd"), str(tmp_path / "patches")
    shutil.copytree(root, data)
    build_store(_cfg(data, other, ckpt), progress=False)
    assert train(_cfg(data, other, ckpt, run_name="reference", **RESUME_SETTINGS), verbose=0)["epochs_done"] == 3
    stat = os.stat(os.path.join(data, "train_c", "target", "s1.png"))
    os.utime(os.path.join(data, "train_c", "target", "s1.png"), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    build_store(_cfg(data, other, ckpt), progress=False)
    patch_count = [len(open_store(_cfg(r, p, ckpt)).index["train"]) for r, p in ((data, other), (root, patches))]
    assert patch_count[0] == patch_count[1]
    with pytest.raises(TrainError, match="trained on other train scenes .* or use --fresh"):
        train(_cfg(data, other, ckpt, run_name="reference", **RESUME_SETTINGS), verbose=0)


def test_a_fresh_run_starts_from_init_weights_and_refuses_another_architecture(store, reference, tmp_path, capsys):
    """init_weights (fine-tuning): at a learning rate too small to move them, a run ends with exactly the weights it
    started from, the reference run's (from scratch it would end near its random initialisation); weights of
    another width are a one-line error naming it."""
    from train import train
    _, root, patches = store
    ref, ref_weights, _ = reference
    cfg = _cfg(root, patches, str(tmp_path), run_name="tuned", **{**RESUME_SETTINGS, "epochs": 1},
               learning_rate=1e-12, init_weights=ref["last"])
    result = train(cfg, verbose=0)
    assert result["global_step"] == 8
    assert _same_weights(_weights(result["last"]), ref_weights, atol=1e-9)
    assert json.load(open(os.path.join(result["run_dir"], "config.json")))["init_weights"] == ref["last"]
    message = _main_error(capsys, *_sets(root, patches, str(tmp_path), base_filters=4, init_weights=ref["last"]))
    assert message.startswith("error: ") and "another architecture" in message
    assert "base_filters: 8 in the weights, 4 now" in message
    message = _main_error(capsys, *_sets(root, patches, str(tmp_path), init_weights=str(tmp_path / "none.keras")))
    assert message.startswith("error: ") and "none.keras: weights file not found" in message


def test_a_network_told_the_noise_level_trains_and_is_loaded_as_one(store, reference, tmp_path, capsys):
    """noise_input with the demo's head and activation: train.py trains it in mixed bfloat16 (the level estimated
    per patch from the float32 input), its val loss falls, its best checkpoint loads as such, and weights
    without the channel cannot start it."""
    import weights
    from train import train
    _, root, patches = store
    cfg = _cfg(root, patches, str(tmp_path), epochs=3, steps_per_epoch=8, learning_rate=2e-3, dropout=0.0,
               noise_input=True, head="residual", activation="leaky_relu", precision="mixed_bfloat16")
    result = train(cfg, verbose=0)
    val = [float(r["val_loss"]) for r in _log(result)]
    assert val[-1] < val[0] and result["best_value"] < 0.97 * result["input_val_loss"], (val, result["input_val_loss"])
    model, model_cfg = weights.load_model(result["best"], make_config("paper"))
    assert model_cfg.noise_input is True and model.get_layer("enc1_conv1").kernel.shape == (3, 3, 7, 8)
    message = _main_error(capsys, *_sets(root, patches, str(tmp_path), noise_input=True,
                                         init_weights=reference[0]["last"]))
    assert "another architecture" in message and "noise_input: False in the weights, True now" in message


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path):
    from train import TrainError, read_checkpoint_state, train
    _, root, patches = store
    cfg = _cfg(root, patches, str(tmp_path), learning_rate=1e30, checkpoint_every_steps=1, dropout=0.0)
    # Adam's first step moves every weight by ~lr (1e30, still finite); the second step's loss overflows
    with pytest.raises(TrainError, match="loss is not a finite number at epoch 1, step 2") as exc:
        train(cfg, verbose=0)
    assert "the last good checkpoint (epoch 1, step 1) is kept" in str(exc.value)
    last = os.path.join(tmp_path, "run", "last.keras")
    assert read_checkpoint_state(last)["global_step"] == 1
    assert all(np.isfinite(w).all() for w in _weights(last))


def _out_of_memory_error():
    """The error each backend raises when the device runs out of memory."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    if BACKEND == "jax":
        import jax
        return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")
    import torch
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.20 GiB")


def test_out_of_memory_names_batch_and_patch_size(store, tmp_path):
    from train import TrainError, train
    _, root, patches = store
    oom = _out_of_memory_error()
    with pytest.raises(TrainError) as exc:
        train(_cfg(root, patches, str(tmp_path)), callbacks=[_StopAt(1, oom)], verbose=0)
    message = str(exc.value)
    assert "out of device memory" in message and "batch_size=4" in message and "patch_size" in message


def test_auto_precision_trains_in_bfloat16_on_such_a_cpu_resumes_and_saves_a_float32_network(store, tmp_path,
                                                                                              monkeypatch):
    """precision=auto on a CPU with bfloat16 matrix units trains in mixed bfloat16 (in float32 under JAX),
    records that in the run's config, resumes under `auto`, and writes float32 checkpoints."""
    import keras
    import backends
    from train import read_checkpoint_state, train
    monkeypatch.setattr(backends, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")    # what auto reads (the suite runs without oneDNN)
    _, root, patches = store
    cfg = _cfg(root, patches, str(tmp_path), precision="auto", checkpoint_every_steps=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_StopAt(5, KeyboardInterrupt())], verbose=0)
    state = read_checkpoint_state(os.path.join(tmp_path, "run", "last.keras"))
    assert state["global_step"] == 3
    assert state["config"]["precision"] == ("float32" if BACKEND == "jax" else "mixed_bfloat16")
    result = train(cfg, verbose=0)
    assert (result["epochs_done"], result["global_step"]) == (2, 16) and np.isfinite(result["val_loss"])
    net = keras.models.load_model(result["best"], compile=False)
    assert {layer.dtype_policy.name for layer in net.layers} == {"float32"}


def test_augmented_batches_are_stored_patches_flipped_with_their_targets(store):
    """Each augmented training patch is its stored patch under one of the four dual-pixel flips, the views
    swapped under the horizontal ones, and its target under the same flip; all four occur."""
    from data_prep import open_store
    from train import PatchStream
    base, root, patches = store
    cfg = _cfg(root, patches, str(base / "unused"), augment=True, seed=4)
    stream = PatchStream(open_store(cfg), cfg, cfg.batch_size)
    swap = lambda a: np.concatenate([a[..., 3:], a[..., :3]], axis=-1)  # noqa: E731
    by_hand = {"identity": (lambda x: x, lambda y: y), "vflip": (lambda x: x[::-1], lambda y: y[::-1]),
               "hflip_swap": (lambda x: swap(x[:, ::-1]), lambda y: y[:, ::-1]),
               "rot180_swap": (lambda x: swap(x[::-1, ::-1]), lambda y: y[::-1, ::-1])}
    seen = set()
    for step in range(6):
        x, y = stream.train_batch(step)
        x0, y0 = stream.gather("train", stream.train_rows(step))
        for k in range(len(x)):
            found = [n for n, (fx, fy) in by_hand.items()
                     if np.array_equal(x[k], fx(x0[k])) and np.array_equal(y[k], fy(y0[k]))]
            assert found, f"step {step}, patch {k}: not a flip of its stored patch"
            seen.update(found)
    assert seen == set(by_hand)


_OTHER_BACKEND_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import numpy as np
import keras
from config import Config
from data_prep import open_store
from train import PatchStream
values, checkpoint, x_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = Config.from_dict(values)
stream = PatchStream(open_store(cfg), cfg, cfg.batch_size)
np.savez(x_path + ".batches.npz", *[a for step in range(12) for a in stream.train_batch(step)])
np.save(x_path + ".out.npy", keras.models.load_model(checkpoint, compile=False).predict(np.load(x_path), verbose=0))
print("RESULT " + keras.backend.backend())
"""


def test_checkpoint_and_batches_agree_across_backends(store, reference, tmp_path):
    """The reference run's checkpoint, written under this backend, gives the same outputs under the other one;
    the loader's batches (augmentation included) are the same bytes under both."""
    import keras
    from config import Config
    from data_prep import open_store
    from train import PatchStream
    base, root, patches = store
    result = reference[0]
    values = _cfg(root, patches, str(base / "ckpt"), run_name="reference", **RESUME_SETTINGS).to_dict()
    x = np.random.default_rng(5).random((2, 64, 96, 6), dtype=np.float32)
    x_path = str(tmp_path / "x.npy")
    np.save(x_path, x)
    env = {**os.environ, "KERAS_BACKEND": OTHER_BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _OTHER_BACKEND_SCRIPT.format(repo=REPO_DIR), json.dumps(values),
                           result["last"], x_path], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"RESULT {OTHER_BACKEND}" in done.stdout, done.stderr[-3000:]

    mine = keras.models.load_model(result["last"], compile=False).predict(x, verbose=0)
    theirs = np.load(x_path + ".out.npy")
    assert mine.shape == theirs.shape == (2, 64, 96, 3)
    assert np.abs(mine - theirs).max() < 1e-5 and mine.std() > 1e-3

    cfg = Config.from_dict(values)
    stream = PatchStream(open_store(cfg), cfg, cfg.batch_size)
    ours = [a for step in range(12) for a in stream.train_batch(step)]
    other = np.load(x_path + ".batches.npz")
    assert len(other.files) == len(ours) == 24
    assert all(a.dtype == np.uint16 and np.array_equal(a, other[f"arr_{i}"]) for i, a in enumerate(ours))
