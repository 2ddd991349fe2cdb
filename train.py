"""Trains DPDNet (or DPDNet-Single) on the patch store with the paper's recipe, resumably, on one device or
many: Adam, MSE, batch 5, lr halved every 60 epochs, 200 epochs; `last`/`best` checkpoints in
checkpoints/<run_name>/.

Usage: python train.py [--preset paper|single] [--set key=value ...] [--resume | --fresh] [--benchmark STEPS]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf

from config import Config, ConfigError, add_config_args, config_from_args
from data_prep import StoreError, open_store
from fileio import atomic_path, atomic_write_json, is_temporary
from model import build_model

# Settings that may differ between a checkpoint and the run resuming it: the length of training, how often
# `last` is written, run-time switches that leave the arithmetic of a step unchanged, and where things live
# (the store itself is checked against its manifest).
RESUMABLE_KEYS = ("epochs", "checkpoint_every_steps", "xla", "data_workers", "dataset_root", "patch_dir",
                  "checkpoint_dir", "results_dir", "tile", "tile_overlap")
STATE_FORMAT = 1
STATE_JSON = "training_state.json"   # extra entries inside a .keras checkpoint (Keras ignores them on load)
STATE_ARRAYS = "training_state.npz"
# Patch transforms per input mode (see augment_patch): a horizontal flip mirrors the aperture, so the left and
# right views trade places; 90-degree turns would make the dual-pixel disparity vertical, which a
# left/right-split sensor never records, so they are used for the single (combined) image only.
TRANSFORMS = {
    "dual": ("identity", "hflip_swap", "vflip", "rot180_swap"),
    "single": ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose"),
}


class TrainError(ValueError):
    """Training cannot start or go on; the one-line message says why and what to do."""


class NonFiniteLoss(RuntimeError):
    """Raised inside fit when the loss stops being a finite number."""


def run_dir(cfg: Config) -> str:
    return os.path.join(cfg.resolve_path("checkpoint_dir"), cfg.run_name)


def checkpoint_path(cfg: Config, which: str = "best") -> str:
    """checkpoints/<run_name>/{best,last}.keras: a float-input DPDNet for keras.models.load_model(path, compile=False)."""
    if which not in ("best", "last"):
        raise ValueError(f"which: 'best' or 'last', got {which!r}")
    return os.path.join(run_dir(cfg), f"{which}.keras")


def read_checkpoint_state(path: str) -> dict:
    """The training state stored inside a checkpoint written by train.py (epoch, steps, losses, config)."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read(STATE_JSON))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TrainError(f"{path}: not a train.py checkpoint or damaged ({e})") from None


# ----------------------------------------------------------------------------------------------- data


def augment_patch(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply one named transform to an input patch (P, P, C) and its target (P, P, 3).

    Dual-pixel input (left, right): a horizontal mirror of the scene is what the opposite half of the aperture
    would see, so a horizontal flip also swaps the views (each view keeps its own vignetting side and half-disc
    blur shape); a vertical flip keeps them. Rotations by 90 degrees are only offered for the combined image.
    """
    if name == "identity":
        return x, y
    if name in ("hflip", "hflip_swap", "rot180", "rot180_swap"):
        x, y = x[:, ::-1], y[:, ::-1]
    if name in ("vflip", "rot180", "rot180_swap"):
        x, y = x[::-1], y[::-1]
    if name.endswith("_swap"):
        x = np.concatenate([x[..., 3:6], x[..., 0:3]], axis=-1)
    if name == "rot90":
        x, y = np.rot90(x, 1), np.rot90(y, 1)
    elif name == "rot270":
        x, y = np.rot90(x, 3), np.rot90(y, 3)
    elif name == "transpose":
        x, y = x.transpose(1, 0, 2), y.transpose(1, 0, 2)
    elif name == "antitranspose":
        x, y = np.rot90(x, 2).transpose(1, 0, 2), np.rot90(y, 2).transpose(1, 0, 2)
    return x, y


class PatchBatches:
    """Batches of uint16 (input, target) patches from the store: the training stream is a pure function of the
    global step (so a resumed run sees exactly the batches it would have seen), validation is in store order."""

    def __init__(self, store, cfg: Config, global_batch: int):
        self.store, self.cfg, self.global_batch = store, cfg, global_batch
        self.p = store.patch_size
        self.in_ch = slice(0, 6) if cfg.input_mode == "dual" else slice(6, 9)
        self.num_train = len(store.index["train"])
        self.num_val = len(store.index.get("val", ()))
        self.steps_per_pass = self.num_train // global_batch
        self._perm = (-1, None)

    def order(self, pass_number: int) -> np.ndarray:
        """The shuffled order of the train patches for one pass (one epoch when steps_per_epoch is 0)."""
        if self._perm[0] != pass_number:
            rng = np.random.default_rng([self.cfg.seed, pass_number])
            self._perm = (pass_number, rng.permutation(self.num_train))
        return self._perm[1]

    def train_rows(self, step: int) -> np.ndarray:
        """Store rows of the training batch at a global step: passes follow each other, remainders dropped."""
        pass_number, k = divmod(step, self.steps_per_pass)
        return self.order(pass_number)[k * self.global_batch:(k + 1) * self.global_batch]

    def gather(self, split: str, rows, step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        p, images, index = self.p, self.store.images[split], self.store.index[split]
        x = np.empty((len(rows), p, p, self.in_ch.stop - self.in_ch.start), np.uint16)
        y = np.empty((len(rows), p, p, 3), np.uint16)
        names = None
        if step is not None and self.cfg.augment:
            choices = TRANSFORMS[self.cfg.input_mode]
            picks = np.random.default_rng([self.cfg.seed, 1, step]).integers(0, len(choices), len(rows))
            names = [choices[i] for i in picks]
        for k, i in enumerate(rows):
            n, r, c = index[int(i)]
            patch = images[n][r:r + p, c:c + p]
            if names:
                x[k], y[k] = augment_patch(patch[..., self.in_ch], patch[..., 9:12], names[k])
            else:
                x[k], y[k] = patch[..., self.in_ch], patch[..., 9:12]
        return x, y

    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gather("train", self.train_rows(step), step)

    def val_batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gather("val", np.arange(k * self.global_batch, min((k + 1) * self.global_batch, self.num_val)))

    def dataset(self, split: str, start: int = 0, stop: int | None = None):
        """tf.data pipeline of uint16 batches (train: global steps start..stop-1; val: all, last batch partial)."""
        if split == "train":
            load, n_batch = self.train_batch, self.global_batch
        else:
            start, stop = 0, math.ceil(self.num_val / self.global_batch)
            load, n_batch = self.val_batch, None
        cin = self.in_ch.stop - self.in_ch.start

        def fetch(k):
            x, y = tf.numpy_function(lambda v: load(int(v)), [k], (tf.uint16, tf.uint16), stateful=False)
            x.set_shape((n_batch, self.p, self.p, cin))
            y.set_shape((n_batch, self.p, self.p, 3))
            return x, y

        ds = tf.data.Dataset.range(start, stop).map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        # Each element is one global batch; under MultiWorkerMirroredStrategy every worker keeps its share of it.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


# ---------------------------------------------------------------------------------------------- model


def make_loss(kind: str):
    """MSE (the paper) or L1 between the float output and the uint16 target scaled to [0, 1] on the device."""
    ops = keras.ops

    def loss(y_true, y_pred):
        diff = ops.cast(y_true, "float32") / 65535.0 - ops.cast(y_pred, "float32")
        return ops.mean(ops.square(diff) if kind == "mse" else ops.abs(diff), axis=-1)

    loss.__name__ = f"{kind}_loss"
    return loss


def make_strategy(cfg: Config):
    """The tf.distribute strategy for cfg.strategy; `mirrored` without GPUs mirrors over the logical CPUs."""
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def lr_at(cfg: Config, step: int, steps_per_epoch: int, replicas: int) -> float:
    """The learning rate at a global step: halved (lr_decay_factor) every lr_decay_every epochs."""
    base = cfg.learning_rate * (replicas if cfg.lr_scaling == "linear" else 1)
    return base * cfg.lr_decay_factor ** (step // (cfg.lr_decay_every * steps_per_epoch))


class _Model:
    """The network, its float32 export twin (what checkpoints hold), and the compiled uint16 training wrapper."""

    def __init__(self, cfg: Config, strategy, steps_per_epoch: int, patch_size: int):
        keras.utils.set_random_seed(cfg.seed)
        self.cfg, self.strategy = cfg, strategy
        replicas = strategy.num_replicas_in_sync
        plain = cfg.precision == "float32" and replicas == 1 and cfg.strategy == "default"
        previous = keras.mixed_precision.dtype_policy()
        keras.mixed_precision.set_dtype_policy("float32")
        self.export = None if plain else build_model(cfg)
        keras.mixed_precision.set_dtype_policy(cfg.precision)
        try:
            with strategy.scope():
                keras.utils.set_random_seed(cfg.seed)  # the same He init with or without a twin
                self.net = build_model(cfg)
                inputs = keras.Input((None, None, cfg.in_channels), dtype="uint16", name="patches_uint16")
                scaled = keras.layers.Rescaling(1 / 65535, dtype="float32", name="to_unit_range")(inputs)
                self.trainer = keras.Model(inputs, self.net(scaled), name="trainer")
                schedule = keras.optimizers.schedules.ExponentialDecay(
                    lr_at(cfg, 0, steps_per_epoch, replicas), decay_steps=cfg.lr_decay_every * steps_per_epoch,
                    decay_rate=cfg.lr_decay_factor, staircase=True)
                optimizer = keras.optimizers.Adam(schedule, beta_1=cfg.adam_beta1, beta_2=cfg.adam_beta2,
                                                  epsilon=cfg.adam_epsilon)
                # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer here.
                self.trainer.compile(optimizer, loss=make_loss(cfg.loss), jit_compile=cfg.xla)
                self.optimizer = self.trainer.optimizer
                self.optimizer.build(self.trainer.trainable_variables)
                self.trainer._symbolic_build(data_batch=(np.zeros((1, patch_size, patch_size, cfg.in_channels),
                                                                  np.uint16),
                                                         np.zeros((1, patch_size, patch_size, 3), np.uint16)))
            # Everything is built now. Keras' fit would otherwise all-reduce a first input batch to build the
            # model, which MultiWorkerMirroredStrategy cannot do with uint16 batches (Keras 3.15).
            self.trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
            if cfg.strategy == "multiworker":
                self._fix_multiworker_logs()
        finally:
            keras.mixed_precision.set_dtype_policy(previous)
        if self.export is None:
            self.export = self.net
        weights = {id(v) for v in self.net.weights}
        self.extra = [v for v in self.net.variables if id(v) not in weights]  # dropout seed states

    def _fix_multiworker_logs(self) -> None:
        """Keras 3 averages each replica's logs across workers along axis 0, which fails for scalar losses
        (tensorflow/tensorflow#72388); hand them over as shape (1,) inside the replicas."""
        original = self.trainer.get_metrics_result

        def get_metrics_result():
            result = original()
            context = tf.distribute.get_replica_context()  # the default one outside strategy.run
            if context is None or context.strategy is not self.strategy:
                return result
            return {k: tf.reshape(v, (1,)) for k, v in result.items()}

        self.trainer.get_metrics_result = get_metrics_result

    def sync_export(self) -> None:
        if self.export is not self.net:
            for target, source in zip(self.export.weights, self.net.weights):
                target.assign(np.asarray(source.numpy()))

    def weights_finite(self) -> bool:
        return all(np.isfinite(w).all() for w in self.export.get_weights())

    def save(self, path: str, state: dict, with_optimizer: bool) -> None:
        """Write a .keras checkpoint atomically: the float32 network, plus the training state inside the zip."""
        with atomic_path(path) as tmp:
            self.export.save(tmp)
            arrays = {f"extra_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.extra)}
            if with_optimizer:
                arrays.update({f"opt_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)})
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(STATE_JSON, json.dumps(state, indent=1))
                z.writestr(STATE_ARRAYS, buf.getvalue())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    def load(self, path: str) -> dict:
        """Restore network, optimizer and dropout seed states from a `last` checkpoint; return its state."""
        state = read_checkpoint_state(path)
        self.export.load_weights(path)
        if self.export is not self.net:
            for target, source in zip(self.net.weights, self.export.weights):
                target.assign(source.numpy())
        with zipfile.ZipFile(path) as z:
            arrays = np.load(io.BytesIO(z.read(STATE_ARRAYS)))
            opt_keys = sorted((k for k in arrays.files if k.startswith("opt_")), key=lambda k: int(k[4:]))
            if len(opt_keys) != len(self.optimizer.variables):
                raise TrainError(f"{path}: holds {len(opt_keys)} optimizer variables, this run has "
                                 f"{len(self.optimizer.variables)} (was precision changed?)")
            for key, variable in zip(opt_keys, self.optimizer.variables):
                variable.assign(arrays[key])
            for i, variable in enumerate(self.extra):
                variable.assign(arrays[f"extra_{i}"])
        # (equal to global_step except under mixed_float16, whose loss scaling skips steps with inf gradients)
        if int(self.optimizer.iterations.numpy()) != state["optimizer_iterations"]:
            raise TrainError(f"{path}: optimizer at step {int(self.optimizer.iterations.numpy())}, the state says "
                             f"{state['optimizer_iterations']}; damaged checkpoint")
        return state


# ------------------------------------------------------------------------------------------ callbacks


class _Monitor(keras.callbacks.Callback):
    """Per batch: full-epoch mean loss, lr and patches/s for the progress bar, a finite-loss check, and `last`
    every checkpoint_every_steps; per epoch: `best` (if improved) then `last`."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        r = self.run
        self.epoch = epoch
        if epoch == r.state["epoch"] and r.state["step_in_epoch"]:  # the rest of an interrupted epoch
            self.offset = r.state["step_in_epoch"]
            self.prev_sum, self.prev_count = r.state["epoch_loss_sum"], r.state["epoch_loss_count"]
        else:
            self.offset, self.prev_sum, self.prev_count = 0, 0.0, 0
        self.lr = float(keras.ops.convert_to_numpy(r.model.optimizer.learning_rate))
        self.t_begin, self.t_first, self.rate = time.perf_counter(), None, 0.0

    def on_train_batch_end(self, batch, logs=None):
        r = self.run
        logs = logs if logs is not None else {}
        done = batch + 1
        # Keras reports the mean over this fit call's batches; add what an interrupted run had done before.
        self.loss_sum = self.prev_sum + float(logs.get("loss", float("nan"))) * done
        self.loss_count = self.prev_count + done
        step_in_epoch = self.offset + done
        global_step = self.epoch * r.spe + step_in_epoch
        if not math.isfinite(self.loss_sum):
            raise NonFiniteLoss(f"epoch {self.epoch + 1}, step {step_in_epoch}")
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
            self.rate = r.global_batch / max(now - self.t_begin, 1e-9)
        else:
            self.rate = r.global_batch * batch / max(now - self.t_first, 1e-9)
        logs.update(loss=self.loss_sum / self.loss_count, lr=self.lr, patches_per_s=self.rate)
        if global_step % r.cfg.checkpoint_every_steps == 0 and step_in_epoch < r.spe:
            r.save_last(self.epoch, step_in_epoch, global_step, self.loss_sum, self.loss_count)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_loss = self.loss_sum / self.loss_count
        val_loss = logs.get("val_loss")
        logs.update(loss=train_loss, lr=self.lr, patches_per_s=self.rate)
        if val_loss is not None and not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation after epoch {epoch + 1}")
        self.run.end_epoch(epoch, train_loss, val_loss, self.lr)


# ------------------------------------------------------------------------------------------- training


class _Run:
    """State of one training run: paths, counters, and the checkpoint writing."""

    def __init__(self, cfg, model, strategy, batches, spe, chief):
        self.cfg, self.model, self.strategy, self.batches, self.spe, self.chief = cfg, model, strategy, batches, spe, chief
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = batches.global_batch
        self.dir = run_dir(cfg)
        self.last, self.best = checkpoint_path(cfg, "last"), checkpoint_path(cfg, "best")
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "epoch_loss_sum": 0.0,
                      "epoch_loss_count": 0, "best_value": None, "best_epoch": None, "train_loss": None,
                      "val_loss": None, "lr": None}
        self.saved = None  # (epoch, step) of the newest `last`

    def base_state(self) -> dict:
        return {"format": STATE_FORMAT, "steps_per_epoch": self.spe, "global_batch": self.global_batch,
                "replicas": self.replicas, "num_train_patches": self.batches.num_train,
                "select_on": self.cfg.select_on, "config": self.cfg.to_dict(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def save_last(self, epoch, step_in_epoch, global_step, loss_sum, loss_count) -> None:
        self.state.update(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                          epoch_loss_sum=loss_sum, epoch_loss_count=loss_count)
        if not self.chief:
            return
        self.model.sync_export()
        if not self.model.weights_finite():
            raise NonFiniteLoss(f"epoch {epoch + 1}, step {step_in_epoch} (weights)")
        state = {**self.base_state(), "kind": "last", **self.state,
                 "optimizer_iterations": int(self.model.optimizer.iterations.numpy())}
        self.model.save(self.last, state, with_optimizer=True)
        atomic_write_json(os.path.join(self.dir, "last.json"), state)  # a readable copy; last.keras is the truth
        self.saved = (epoch, step_in_epoch)

    def end_epoch(self, epoch, train_loss, val_loss, lr) -> None:
        value = val_loss if self.cfg.select_on == "val" else train_loss
        self.state.update(train_loss=train_loss, val_loss=val_loss, lr=lr)
        if value is not None and (self.state["best_value"] is None or value < self.state["best_value"]):
            self.state.update(best_value=value, best_epoch=epoch + 1)
            if self.chief:
                self.model.sync_export()
                if not self.model.weights_finite():
                    raise NonFiniteLoss(f"end of epoch {epoch + 1} (weights)")
                state = {**self.base_state(), "kind": "best", **self.state, "epoch": epoch + 1,
                         "step_in_epoch": 0, "global_step": (epoch + 1) * self.spe}
                self.model.save(self.best, state, with_optimizer=False)
                atomic_write_json(os.path.join(self.dir, "best.json"), state)
        self.save_last(epoch + 1, 0, (epoch + 1) * self.spe, 0.0, 0)


def _config_differences(saved: dict, cfg: Config) -> list[str]:
    now = cfg.to_dict()
    defaults = Config().to_dict()
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_KEYS or key == "run_name":
            continue
        old = saved.get(key, defaults.get(key))
        if old != now.get(key):
            out.append(f"{key}: {old!r} in the checkpoint, {now.get(key)!r} now")
    return out


def _clear_run(path: str) -> None:
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name in ("last.keras", "best.keras", "last.json", "best.json", "log.csv", "config.json") or \
                is_temporary(name):
            os.remove(full)
        elif name == "tensorboard":
            shutil.rmtree(full)


def _start_state(cfg: Config, resume, batches, spe, global_batch, chief) -> tuple[dict | None, str]:
    """Decide between a fresh start and resuming; refuse a checkpoint made with other settings."""
    last = checkpoint_path(cfg, "last")
    if resume is False:
        if chief:
            _clear_run(run_dir(cfg))
        return None, "fresh"
    if not os.path.isfile(last):
        if resume is True:
            raise TrainError(f"{last}: no checkpoint to resume; run without --resume to start this run")
        if chief:
            _clear_run(run_dir(cfg))  # leftovers of a run stopped before its first checkpoint
        return None, "fresh"
    state = read_checkpoint_state(last)
    diffs = _config_differences(state.get("config", {}), cfg)
    if diffs:
        raise TrainError(f"{last}: the checkpoint was trained with other settings ({'; '.join(diffs)}); resume "
                         f"with the same settings (only {', '.join(RESUMABLE_KEYS)} may change), start over with "
                         f"--fresh, or use another --set run_name=...")
    for key, now in (("global_batch", global_batch), ("steps_per_epoch", spe),
                     ("num_train_patches", batches.num_train)):
        if state.get(key) != now:
            raise TrainError(f"{last}: the checkpoint has {key} {state.get(key)}, this run {now} (another number "
                             f"of replicas or another patch store); resume on the same setup or use --fresh")
    return state, "resume"


def train(cfg: Config, resume: bool | None = None, callbacks=(), verbose: int = 1) -> dict:
    """Train cfg's model on the patch store and return the run's outcome.

    resume: None resumes checkpoints/<run>/last.keras when it exists, True requires it, False starts over
    (deleting the run's checkpoints and logs). Raises StoreError/TrainError with a one-line message; extra
    Keras `callbacks` run after the checkpointing (tests use them to interrupt). Returns a dict with the paths
    (run_dir, last, best), epochs_done, global_step, train_loss, val_loss, lr, best_value, best_epoch.
    """
    store = open_store(cfg)
    strategy = make_strategy(cfg)
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    batches = PatchBatches(store, cfg, global_batch)
    if batches.steps_per_pass < 1:
        raise TrainError(f"{store.patch_dir}: {batches.num_train} train patches, fewer than one global batch of "
                         f"{global_batch}; lower batch_size")
    if not batches.num_val and cfg.select_on == "val":
        raise TrainError(f"{store.patch_dir}: no val patches to select `best` on; build the val split "
                         f"(python data_prep.py --split val) or --set select_on=train")
    spe = cfg.steps_per_epoch or batches.steps_per_pass
    chief = is_chief(strategy)
    saved_state, mode = _start_state(cfg, resume, batches, spe, global_batch, chief)
    folder = run_dir(cfg)
    os.makedirs(folder, exist_ok=True)

    model = _Model(cfg, strategy, spe, batches.p)
    run = _Run(cfg, model, strategy, batches, spe, chief)
    if saved_state is not None:
        loaded = model.load(run.last)
        run.state.update({k: loaded[k] for k in run.state if k in loaded})
        run.saved = (loaded["epoch"], loaded["step_in_epoch"])
        if os.path.isfile(run.best):  # `best` may be newer than `last` if a kill fell between the two writes
            best_state = read_checkpoint_state(run.best)
            if best_state.get("best_value") is not None and (run.state["best_value"] is None or
                                                              best_state["best_value"] < run.state["best_value"]):
                run.state.update(best_value=best_state["best_value"], best_epoch=best_state["best_epoch"])
    if chief:
        for name in os.listdir(folder):  # what a killed save left behind
            if is_temporary(name):
                os.remove(os.path.join(folder, name))
        cfg.save_json(os.path.join(folder, "config.json"))

    epoch, step = run.state["epoch"], run.state["step_in_epoch"]
    describe = (f"{cfg.input_mode} DPDNet on {batches.num_train} train / {batches.num_val} val patches "
                f"({batches.p}x{batches.p}), global batch {global_batch} ({replicas} replica(s)), {spe} steps per "
                f"epoch, {cfg.epochs} epochs, precision {cfg.precision}{', XLA' if cfg.xla else ''}")
    if mode == "resume":
        print(f"resuming {run.last} at epoch {epoch + 1}, step {step} of {spe} (global step {run.state['global_step']}"
              f", lr {lr_at(cfg, run.state['global_step'], spe, replicas):.4g}): {describe}")
    else:
        print(f"training {describe}; checkpoints in {folder}")

    cbs = [_Monitor(run)]
    if chief:
        cbs += [keras.callbacks.CSVLogger(os.path.join(folder, "log.csv"), append=True),
                keras.callbacks.TensorBoard(os.path.join(folder, "tensorboard"), write_graph=False)]
    cbs += list(callbacks)
    val = batches.dataset("val") if batches.num_val else None
    history: list[dict] = []

    def fit(first_epoch, last_epoch, steps, start_step):
        stop = first_epoch * spe + start_step + steps * (last_epoch - first_epoch)
        h = model.trainer.fit(batches.dataset("train", first_epoch * spe + start_step, stop),
                              initial_epoch=first_epoch, epochs=last_epoch, steps_per_epoch=steps,
                              validation_data=val, callbacks=cbs, verbose=verbose, shuffle=False)
        history.extend({k: v[i] for k, v in h.history.items()} for i in range(len(h.epoch)))

    try:
        if epoch >= cfg.epochs:
            print(f"{folder}: already trained for {epoch} epochs; raise epochs (--set epochs=N) to go on")
        else:
            if step:
                fit(epoch, epoch + 1, spe - step, step)
                epoch += 1
            if epoch < cfg.epochs:
                fit(epoch, cfg.epochs, spe, 0)
    except NonFiniteLoss as e:
        raise TrainError(f"loss is not a finite number at {e}: training stopped; {_kept(run)}; lower "
                         f"learning_rate or check the patch store") from None
    except (tf.errors.ResourceExhaustedError, tf.errors.InternalError) as e:
        if isinstance(e, tf.errors.InternalError) and "RESOURCE_EXHAUSTED" not in str(e) and "OOM" not in str(e):
            raise
        raise TrainError(f"out of device memory with batch_size={cfg.batch_size} ({global_batch} per step) and "
                         f"{batches.p}x{batches.p} patches: lower batch_size (--set batch_size=N), or use a "
                         f"smaller patch_size (needs a new patch store from data_prep.py); {_kept(run)}") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_kept(run)}; run the same command again to resume", file=sys.stderr)
        raise

    s = run.state
    if s["best_epoch"] is not None:
        print(f"best ({cfg.select_on} loss {s['best_value']:.6g}, epoch {s['best_epoch']}): {run.best}")
    return {"run_dir": folder, "last": run.last, "best": run.best if os.path.isfile(run.best) else None,
            "epochs_done": s["epoch"], "global_step": s["global_step"], "train_loss": s["train_loss"],
            "val_loss": s["val_loss"], "lr": s["lr"],
            "best_value": s["best_value"], "best_epoch": s["best_epoch"], "replicas": replicas,
            "global_batch": global_batch, "steps_per_epoch": spe, "history": history}


def _kept(run: _Run) -> str:
    if run.saved is None:
        return "no checkpoint was written"
    epoch, step = run.saved
    where = f"end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
    return f"the last good checkpoint ({where}) is kept in {run.last}"


# ------------------------------------------------------------------------------------------ benchmark


def benchmark(cfg: Config, steps: int = 5, warmup: int = 2) -> dict:
    """Time the data loader alone and full training steps (after warm-up) on the patch store; writes nothing."""
    store = open_store(cfg)
    strategy = make_strategy(cfg)
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    batches = PatchBatches(store, cfg, global_batch)
    n = warmup + steps

    ds = batches.dataset("train", 0, n)
    it = iter(ds)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        next(it)
    loader_s = (time.perf_counter() - t0) / (n - 1)
    t0 = time.perf_counter()
    for g in range(n):
        batches.train_batch(g)
    gather_s = (time.perf_counter() - t0) / n

    model = _Model(cfg, strategy, batches.steps_per_pass, batches.p)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.trainer.fit(batches.dataset("train", 0, n), epochs=1, steps_per_epoch=n, callbacks=[Timer()], verbose=0,
                      shuffle=False)
    step_s = float(np.mean(times[warmup:]))
    return {"patch_size": batches.p, "global_batch": global_batch, "precision": cfg.precision, "xla": cfg.xla,
            "step_s": step_s, "steps_per_s": 1 / step_s, "patches_per_s": global_batch / step_s,
            "loader_batch_s": loader_s, "loader_patches_per_s": global_batch / loader_s,
            "gather_batch_s": gather_s, "loader_share": gather_s / step_s}


# ----------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue checkpoints/<run>/last.keras (an error if there is none); without --resume "
                           "or --fresh an existing checkpoint is continued too")
    mode.add_argument("--fresh", action="store_true", help="start over: delete this run's checkpoints and logs")
    mode.add_argument("--benchmark", type=int, metavar="STEPS",
                      help="time STEPS training steps and the data loader on the patch store; writes nothing")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        if args.benchmark:
            result = benchmark(cfg, steps=args.benchmark)
            for key, value in result.items():
                print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
            return
        result = train(cfg, resume=True if args.resume else False if args.fresh else None)
    except (TrainError, StoreError, ConfigError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done: {result['epochs_done']} epochs, {result['global_step']} steps; last: {result['last']}")


if __name__ == "__main__":
    main()
