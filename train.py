"""Trains DPDNet (or DPDNet-Single) on the patch store with the paper's recipe (Adam, MSE, batch 5, lr halved
every 60 epochs, 200 epochs), resumably, under any Keras backend, on one device or several. Checkpoints:
checkpoints/<run_name>/last.keras (every checkpoint_every_steps and every epoch) and best.keras.

Usage: [KERAS_BACKEND=tensorflow|jax|torch] python train.py [--preset paper|single] [--set key=value ...]
                                                          [--resume | --fresh]
Run the same command again after an interruption (Ctrl-C, kill -9, a crash) and it continues where the last
checkpoint left off, with the batches and weights an uninterrupted run would have had.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import math
import os
import shutil
import sys
import threading
import time
import zipfile

import backends  # before keras: a KERAS_BACKEND that is not installed is a one-line exit

import keras
import numpy as np

from config import Config, UserError, add_config_args, config_from_args, exit_on_error
from data_prep import CHANNELS, STORE_MAX, open_store
from fileio import atomic_path, atomic_write_json, is_temporary
from model import build_model, dtype_policy, with_concrete_precision
import transforms

# Settings that may differ between a checkpoint and the run resuming it: the length of training, how often
# `last` is written, run-time switches that leave the arithmetic of a step unchanged, and where things live
# (the store itself is checked against its manifest).
RESUMABLE_KEYS = ("epochs", "checkpoint_every_steps", "xla", "data_workers", "loader_workers", "dataset_root",
                  "patch_dir", "checkpoint_dir", "results_dir", "tile", "tile_overlap", "self_ensemble",
                  "scales")
STATE_FORMAT = 1
NO_GAIN = 0.02                       # a best val loss within 2% of the blurry input's: the network learnt nothing
CHARBONNIER_EPS = 1e-3               # the Charbonnier loss is L1 for errors well above this, quadratic below
STATE_JSON = "training_state.json"   # extra entries inside a .keras checkpoint (Keras ignores them on load)
STATE_ARRAYS = "training_state.npz"


class TrainError(UserError):
    """Training cannot start or go on; the one-line message says why and what to do."""


class NonFiniteLoss(RuntimeError):
    """Raised inside fit when the loss stops being a finite number."""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue checkpoints/<run>/last.keras (an error if there is none); without --resume "
                           "or --fresh an existing checkpoint is continued too")
    mode.add_argument("--fresh", action="store_true", help="start over: delete this run's checkpoints and logs")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    with exit_on_error():  # on Ctrl-C fit_all_epochs has said which checkpoint is kept
        result = train(cfg, resume=True if args.resume else False if args.fresh else None)
    print(f"done: {result['epochs_done']} epochs, {result['global_step']} steps; last: {result['last']}")


def train(cfg: Config, resume: bool | None = None, callbacks=(), verbose: int = 1) -> dict:
    """Train cfg's model on the patch store and return the run's outcome.

    resume: None resumes checkpoints/<run>/last.keras when it exists, True requires it, False starts over
    (deleting the run's checkpoints and logs). Raises StoreError/TrainError/BackendError with a one-line
    message; extra Keras `callbacks` run after the checkpointing (tests use them to interrupt). Returns the
    paths (run_dir, last, best), epochs_done, global_step, train/val loss, lr, best_value/best_epoch, the
    replica count and global batch, the history and the measured steps/s.
    """
    cfg = with_concrete_precision(cfg)  # saved and compared as it ran
    store = open_store(cfg)
    devices = backends.replicas(cfg.strategy)
    jit = backends.jit_compile(cfg.xla)
    global_batch = cfg.batch_size * devices.count
    stream = PatchStream(store, cfg, global_batch, devices.count, devices.process)
    if stream.steps_per_pass < 1:
        raise TrainError(f"{store.patch_dir}: {stream.num_train} train patches, fewer than one global batch of "
                         f"{global_batch}; lower batch_size")
    if not stream.num_val and cfg.select_on == "val":
        raise TrainError(f"{store.patch_dir}: no val patches to select `best` on; build the val split "
                         f"(python data_prep.py --split val) or --set select_on=train")
    steps_per_epoch = cfg.steps_per_epoch or stream.steps_per_pass
    saved_state = start_state(cfg, resume, stream, steps_per_epoch, global_batch, devices.chief)
    folder = cfg.checkpoint_folder()
    os.makedirs(folder, exist_ok=True)

    nets = Networks(cfg, steps_per_epoch, devices, jit)
    run = TrainingRun(cfg, nets, stream, steps_per_epoch, devices.chief)
    if saved_state is not None:
        run.restore()
    elif cfg.init_weights:
        nets.init_from(cfg.resolve_path("init_weights"))
        print(f"starting from the weights of {cfg.init_weights}")
    if devices.chief:
        for name in os.listdir(folder):  # what a killed save left behind
            if is_temporary(name):
                os.remove(os.path.join(folder, name))
        cfg.save_json(os.path.join(folder, "config.json"))
    print(f"{'resuming ' + run.last + ' at' if saved_state else 'training'} {describe(cfg, run, devices)}; "
          f"checkpoints in {folder}")
    baseline = input_val_loss(stream, cfg)
    if baseline is not None:
        print(f"val loss of the blurry input itself (the loss to beat): {baseline:.6g}")
    with devices.scope():
        fit_all_epochs(run, callbacks, verbose)

    s = run.state
    if s["best_epoch"] is not None:
        print(f"best ({cfg.select_on} loss {s['best_value']:.6g}, epoch {s['best_epoch']}): {run.best}")
    if learnt_nothing(run.history, baseline):
        print(f"warning: the best val loss of this run ({best_val_loss(run.history):.6g}) is within {NO_GAIN:.0%} of "
              f"the blurry input's ({baseline:.6g}): the network has learnt (almost) nothing. One stuck at its input "
              f"often trains with {unsticking_advice(cfg)}", file=sys.stderr)
    return {"run_dir": folder, "last": run.last, "best": run.best if os.path.isfile(run.best) else None,
            "epochs_done": s["epoch"], "global_step": s["global_step"], "train_loss": s["train_loss"],
            "val_loss": s["val_loss"], "lr": s["lr"], "best_value": s["best_value"], "best_epoch": s["best_epoch"],
            "replicas": devices.count, "global_batch": global_batch, "steps_per_epoch": steps_per_epoch,
            "history": run.history, "steps_per_s": run.steps_per_s(), "input_val_loss": baseline, **backends.info()}


def time_steps(cfg: Config, steps: int) -> float:
    """Median seconds of one training step of cfg's network on its patch store, from a throwaway run of `steps`
    steps (after 2 of compilation) in a temporary folder; its output and checkpoints are discarded."""
    import contextlib
    import dataclasses
    import tempfile
    with tempfile.TemporaryDirectory(prefix="dpdnet_timing_") as folder:
        timing = dataclasses.replace(cfg, checkpoint_dir=folder, run_name="timing", epochs=1,
                                     steps_per_epoch=steps + 2, checkpoint_every_steps=10 ** 9, select_on="train")
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                result = train(timing, resume=False, verbose=0)
        except TrainError as e:
            raise TrainError(f"timing {cfg.input_mode} training steps: {e}") from None
    return 1 / result["steps_per_s"]


def best_val_loss(history: list[dict]) -> float | None:
    """The lowest val loss of a run's epochs, None if none has one."""
    return min((h["val_loss"] for h in history if "val_loss" in h), default=None)


def learnt_nothing(history: list[dict], input_loss: float | None) -> bool:
    """Whether a run's best val loss stayed within NO_GAIN of the blurry input's own (False without val losses)."""
    best = best_val_loss(history)
    return input_loss is not None and best is not None and best >= input_loss * (1 - NO_GAIN)


def unsticking_advice(cfg: Config) -> str:
    """What often moves a run stuck at its input, leaving out the demo's settings that cfg already has."""
    demo = [f"{key}={value}" for key, value in (("activation", "leaky_relu"), ("loss", "charbonnier"))
            if getattr(cfg, key) != value]
    return (" and ".join(demo) + " (the demo's), " if demo else "") + "a lower learning_rate, more steps or another seed"


def input_val_loss(stream: PatchStream, cfg: Config) -> float | None:
    """The loss of returning the blurry input (the mean of the two views, or the combined image) on the val
    patches, averaged as Keras averages val_loss: what a network that has learnt anything beats."""
    if not stream.num_val:
        return None
    loss, total, count = make_loss(cfg.loss), 0.0, 0
    for k in range(stream.val_batches):
        x, y = stream.val_batch(k)
        x = x.astype(np.float32) / STORE_MAX
        base = (x[..., :3] + x[..., 3:]) / 2 if cfg.input_mode == "dual" else x
        per_pixel = keras.ops.convert_to_numpy(loss(y, base))
        total, count = total + float(per_pixel.sum(dtype=np.float64)), count + per_pixel.size
    return total / count


def read_checkpoint_state(path: str) -> dict:
    """The training state stored inside a checkpoint written by train.py (epoch, steps, losses, config)."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read(STATE_JSON))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TrainError(f"{path}: not a train.py checkpoint or damaged ({e})") from None


# ----------------------------------------------------------------------------------------------- data


class PatchStream:
    """The uint16 (input, target) batches: training batches as a pure function of the global step (so a
    resumed run sees exactly the batches an uninterrupted one would), validation batches in store order.

    With several processes (JAX on several hosts) each feeds its own rows of every global batch; with several
    replicas the last validation batch is cut to a multiple of the replica count (at most count-1 patches left
    out), which every backend can split evenly.
    """

    def __init__(self, store, cfg: Config, global_batch: int, replicas: int = 1, process: tuple = (0, 1)):
        self.store, self.cfg, self.global_batch, self.process = store, cfg, global_batch, process
        self.inputs = slice(0, 6) if cfg.input_mode == "dual" else CHANNELS["source"]
        self.num_train = len(store.index["train"])
        self.train_data = store.train_fingerprint()   # kept in checkpoints: a run resumes only on the same scenes
        num_val = len(store.index.get("val", ()))
        self.num_val = num_val - num_val % replicas
        self.steps_per_pass = self.num_train // global_batch
        self.val_batches = math.ceil(self.num_val / global_batch)
        self._order = (-1, None)  # (pass number, permutation): the current pass's order, shared by loader threads

    def order(self, pass_number: int) -> np.ndarray:
        """The shuffled order of the train patches for one pass (one epoch when steps_per_epoch is 0)."""
        cached = self._order
        if cached[0] != pass_number:
            cached = (pass_number, np.random.default_rng([self.cfg.seed, pass_number]).permutation(self.num_train))
            self._order = cached
        return cached[1]

    def train_rows(self, step: int) -> np.ndarray:
        """Store rows of the global batch at a global step: passes follow each other, remainders dropped."""
        pass_number, k = divmod(step, self.steps_per_pass)
        return self.order(pass_number)[k * self.global_batch:(k + 1) * self.global_batch]

    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.train_rows(step)
        picked = None
        if self.cfg.augment:
            choices = transforms.TRANSFORMS[self.cfg.input_mode]
            picks = np.random.default_rng([self.cfg.seed, 1, step]).integers(0, len(choices), len(rows))
            picked = [choices[i] for i in picks]
        return self.gather("train", rows, picked)

    def val_batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gather("val", np.arange(k * self.global_batch, min((k + 1) * self.global_batch, self.num_val)))

    def gather(self, split: str, rows, names=None) -> tuple[np.ndarray, np.ndarray]:
        """This process's share of `rows`: input and target patches, each transform applied to both."""
        index, count = self.process
        share = slice(len(rows) * index // count, len(rows) * (index + 1) // count)
        rows = rows[share]
        x = self.store.gather(split, rows, self.inputs)
        y = self.store.gather(split, rows, CHANNELS["target"])
        if names:
            for k, name in enumerate(names[share]):
                x[k], y[k] = transforms.apply(x[k], name, swap_views=self.cfg.input_mode == "dual"), transforms.apply(y[k], name)
        return x, y


class Batches(keras.utils.PyDataset):
    """Keras' view of batches first..first+count-1 of a stream, loaded `ahead` batches in advance by a thread
    pool, on every backend.

    The read-ahead is ours rather than Keras' workers: a TensorFlow strategy peeks at a dataset's first batch
    with an iterator it then drops, and Keras' shared worker queue can hand that iterator batches the next one
    needs (the stream then arrives out of order). Here index i is batch first+i however often it is asked for.
    """

    def __init__(self, load, first: int, count: int, pool: concurrent.futures.Executor, ahead: int):
        super().__init__()  # Keras asks for the items in order, one at a time
        self.load, self.first, self.count, self.pool, self.ahead = load, first, count, pool, ahead
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        with self.lock:
            for j in range(i, min(i + 1 + self.ahead, self.count)):
                if j not in self.pending:
                    self.pending[j] = self.pool.submit(self.load, self.first + j)
            future = self.pending.pop(i)
        return future.result()


# ---------------------------------------------------------------------------------------------- model


class Networks:
    """The network being trained, its uint16-input training wrapper compiled with the optimizer, and the float32
    twin that checkpoints are written from (the network itself when it trains in float32 on one device)."""

    def __init__(self, cfg: Config, steps_per_epoch: int, devices: backends.Replicas, jit: bool):
        self.cfg = cfg
        plain = cfg.precision == "float32" and devices.count == 1 and cfg.strategy == "default"
        with dtype_policy("float32"):  # outside any distribution scope
            self.export = None if plain else build_model(cfg)
        with devices.scope(), dtype_policy(cfg.precision):
            self.net = build_model(cfg)
            inputs = keras.Input((None, None, cfg.in_channels), dtype="uint16", name="patches_uint16")
            scaled = keras.layers.Rescaling(1 / STORE_MAX, dtype="float32", name="to_unit_range")(inputs)
            self.trainer = keras.Model(inputs, self.net(scaled), name="trainer")
            schedule = keras.optimizers.schedules.ExponentialDecay(
                lr_at(cfg, 0, steps_per_epoch, devices.count), decay_steps=cfg.lr_decay_every * steps_per_epoch,
                decay_rate=cfg.lr_decay_factor, staircase=True)
            self.optimizer = keras.optimizers.Adam(schedule, beta_1=cfg.adam_beta1, beta_2=cfg.adam_beta2,
                                                   epsilon=cfg.adam_epsilon)
            if cfg.precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.trainer.compile(self.optimizer, loss=make_loss(cfg.loss), jit_compile=jit)
            self.optimizer.build(self.trainer.trainable_variables)  # so a resumed run can load Adam's moments
        if self.export is None:
            self.export = self.net
        weights = {id(v) for v in self.net.weights}
        self.seed_states = [v for v in self.net.variables if id(v) not in weights]  # dropout's random state

    def current_step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.optimizer.iterations))

    def sync_export(self) -> bool:
        """Bring the float32 twin up to date (during fit too); False if any weight is not finite."""
        backends.sync_state(self.trainer)
        if self.export is not self.net:
            for target, source in zip(self.export.weights, self.net.weights):
                target.assign(keras.ops.convert_to_numpy(source).astype(np.float32))
        return all(np.isfinite(w).all() for w in self.export.get_weights())

    def save(self, path: str, state: dict, with_optimizer: bool) -> None:
        """Write a .keras checkpoint atomically: the float32 network, plus the training state inside the zip."""
        arrays = {f"seed_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.seed_states)}
        if with_optimizer:
            arrays.update({f"opt_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.optimizer.variables)})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with atomic_path(path) as tmp:
            self.export.save(tmp)
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(STATE_JSON, json.dumps(state, indent=1))
                z.writestr(STATE_ARRAYS, buf.getvalue())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    def init_from(self, path: str) -> None:
        """Start a fresh run from trained weights (fine-tuning): any file weights.load_model reads, of this
        run's architecture; the optimizer starts afresh."""
        import weights
        loaded, loaded_cfg = weights.load_model(path, self.cfg)
        arch = [k for k in weights.ARCH_KEYS if k != "dropout"]
        diffs = self.cfg.differences(loaded_cfg.to_dict(), "in the weights", keys=arch)
        if diffs:
            raise TrainError(f"init_weights: {path} is another architecture ({'; '.join(diffs)}); fine-tune with "
                             f"the same {', '.join(arch)}")
        self.export.set_weights(loaded.get_weights())
        self._export_to_net()

    def _export_to_net(self) -> None:
        if self.export is not self.net:
            for target, source in zip(self.net.weights, self.export.weights):
                target.assign(keras.ops.convert_to_numpy(source))

    def load(self, path: str) -> dict:
        """Restore network, optimizer and dropout states from a `last` checkpoint; return its training state."""
        state = read_checkpoint_state(path)
        self.export.load_weights(path)
        self._export_to_net()
        with zipfile.ZipFile(path) as z:
            arrays = np.load(io.BytesIO(z.read(STATE_ARRAYS)))
        opt_keys = sorted((k for k in arrays.files if k.startswith("opt_")), key=lambda k: int(k[4:]))
        if len(opt_keys) != len(self.optimizer.variables):
            raise TrainError(f"{path}: holds {len(opt_keys)} optimizer variables, this run has "
                             f"{len(self.optimizer.variables)} (was precision changed?)")
        for key, variable in zip(opt_keys, self.optimizer.variables):
            variable.assign(arrays[key])
        for i, variable in enumerate(self.seed_states):
            variable.assign(arrays[f"seed_{i}"])
        # (equal to global_step except under mixed_float16, whose loss scaling skips steps with inf gradients)
        if self.current_step() != state["optimizer_iterations"]:
            raise TrainError(f"{path}: optimizer at step {self.current_step()}, the state says "
                             f"{state['optimizer_iterations']}; damaged checkpoint")
        return state


def make_loss(kind: str):
    """The per-pixel loss between the float output and the uint16 target scaled to [0, 1] on the device: mse
    (the paper), l1, or charbonnier: sqrt(diff**2 + eps**2) - eps, L1 without its kink at zero error."""
    ops = keras.ops
    per_pixel = {"mse": ops.square, "l1": ops.abs,
                 "charbonnier": lambda d: ops.sqrt(ops.square(d) + CHARBONNIER_EPS ** 2) - CHARBONNIER_EPS}[kind]

    def loss(y_true, y_pred):
        diff = ops.cast(y_true, "float32") / STORE_MAX - ops.cast(y_pred, "float32")
        return ops.mean(per_pixel(diff), axis=-1)

    loss.__name__ = f"{kind}_loss"
    return loss


def lr_at(cfg: Config, step: int, steps_per_epoch: int, replicas: int) -> float:
    """The learning rate at a global step: halved (lr_decay_factor) every lr_decay_every epochs."""
    base = cfg.learning_rate * (replicas if cfg.lr_scaling == "linear" else 1)
    return base * cfg.lr_decay_factor ** (step // (cfg.lr_decay_every * steps_per_epoch))


# ------------------------------------------------------------------------------------------- the run


def start_state(cfg: Config, resume, stream: PatchStream, steps_per_epoch: int, global_batch: int,
                chief: bool) -> dict | None:
    """The checkpoint state to resume from, or None for a fresh start (which clears the run's folder); a
    checkpoint made with other settings is refused."""
    last = cfg.checkpoint_path("last")
    if resume is False or (resume is None and not os.path.isfile(last)):
        if chief:
            clear_run(cfg.checkpoint_folder())  # --fresh, or leftovers of a run stopped before its first checkpoint
        return None
    if not os.path.isfile(last):
        raise TrainError(f"{last}: no checkpoint to resume; run without --resume to start this run")
    state = read_checkpoint_state(last)
    diffs = cfg.differences(state.get("config", {}), "in the checkpoint", ignore=RESUMABLE_KEYS + ("run_name",))
    if diffs:
        raise TrainError(f"{last}: the checkpoint was trained with other settings ({'; '.join(diffs)}); resume "
                         f"with the same settings (only {', '.join(RESUMABLE_KEYS)} may change), start over with "
                         f"--fresh, or use another --set run_name=...")
    for key, now in (("global_batch", global_batch), ("steps_per_epoch", steps_per_epoch),
                     ("num_train_patches", stream.num_train)):
        if state.get(key) != now:
            raise TrainError(f"{last}: the checkpoint has {key} {state.get(key)}, this run {now} (another number "
                             f"of replicas or another patch store); resume on the same setup or use --fresh")
    if state.get("train_data") not in (None, stream.train_data):   # None: written before it was kept
        raise TrainError(f"{last}: the checkpoint was trained on other train scenes than {stream.store.patch_dir} "
                         f"holds (the dataset changed since, or another store); resume on its data or use --fresh")
    return state


def clear_run(path: str) -> None:
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name in ("last.keras", "best.keras", "last.json", "best.json", "log.csv", "config.json") or \
                is_temporary(name):
            os.remove(full)
        elif name == "tensorboard":
            shutil.rmtree(full)


class TrainingRun:
    """One run's counters and checkpoints: `last` (with the optimizer, for resuming) and `best` (by val or
    train loss), each written atomically with a readable JSON copy of its state."""

    def __init__(self, cfg: Config, nets: Networks, stream: PatchStream, steps_per_epoch: int, chief: bool):
        self.cfg, self.nets, self.stream, self.steps_per_epoch, self.chief = cfg, nets, stream, steps_per_epoch, chief
        self.dir = cfg.checkpoint_folder()
        self.last, self.best = cfg.checkpoint_path("last"), cfg.checkpoint_path("best")
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "epoch_loss_sum": 0.0,
                      "epoch_loss_count": 0, "best_value": None, "best_epoch": None, "train_loss": None,
                      "val_loss": None, "lr": None}
        self.saved = None  # (epoch, step) of the newest `last`
        self.history: list[dict] = []
        self.step_times: list[float] = []

    def restore(self) -> None:
        loaded = self.nets.load(self.last)
        self.state.update({k: loaded[k] for k in self.state if k in loaded})
        self.saved = (loaded["epoch"], loaded["step_in_epoch"])
        if os.path.isfile(self.best):  # `best` may be newer than `last` if a kill fell between the two writes
            best = read_checkpoint_state(self.best)
            if best.get("best_value") is not None and (self.state["best_value"] is None or
                                                       best["best_value"] < self.state["best_value"]):
                self.state.update(best_value=best["best_value"], best_epoch=best["best_epoch"])

    def lr(self, global_step: int) -> float:
        return lr_at(self.cfg, global_step, self.steps_per_epoch, self.stream.global_batch // self.cfg.batch_size)

    def base_state(self) -> dict:
        return {"format": STATE_FORMAT, "steps_per_epoch": self.steps_per_epoch,
                "global_batch": self.stream.global_batch, "replicas": self.stream.global_batch // self.cfg.batch_size,
                "num_train_patches": self.stream.num_train, "train_data": self.stream.train_data,
                "select_on": self.cfg.select_on,
                "config": self.cfg.to_dict(), **backends.info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def save_last(self, epoch, step_in_epoch, global_step, loss_sum, loss_count) -> None:
        self.state.update(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                          epoch_loss_sum=loss_sum, epoch_loss_count=loss_count)
        if not self.chief:
            return
        if not self.nets.sync_export():
            raise NonFiniteLoss(f"epoch {epoch + 1}, step {step_in_epoch} (weights)")
        state = {**self.base_state(), "kind": "last", **self.state,
                 "optimizer_iterations": self.nets.current_step()}
        self.nets.save(self.last, state, with_optimizer=True)
        atomic_write_json(os.path.join(self.dir, "last.json"), state)  # a readable copy; last.keras is the truth
        self.saved = (epoch, step_in_epoch)

    def end_epoch(self, epoch, train_loss, val_loss, lr) -> None:
        value = val_loss if self.cfg.select_on == "val" else train_loss
        self.state.update(train_loss=train_loss, val_loss=val_loss, lr=lr)
        if value is not None and (self.state["best_value"] is None or value < self.state["best_value"]):
            self.state.update(best_value=value, best_epoch=epoch + 1)
            if self.chief:
                if not self.nets.sync_export():
                    raise NonFiniteLoss(f"end of epoch {epoch + 1} (weights)")
                state = {**self.base_state(), "kind": "best", **self.state, "epoch": epoch + 1,
                         "step_in_epoch": 0, "global_step": (epoch + 1) * self.steps_per_epoch}
                self.nets.save(self.best, state, with_optimizer=False)
                atomic_write_json(os.path.join(self.dir, "best.json"), state)
        self.save_last(epoch + 1, 0, (epoch + 1) * self.steps_per_epoch, 0.0, 0)

    def kept(self) -> str:
        if self.saved is None:
            return "no checkpoint was written"
        epoch, step = self.saved
        where = f"end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
        return f"the last good checkpoint ({where}) is kept in {self.last}"

    def steps_per_s(self) -> float | None:
        """Steps per second of this process's fit calls, leaving out each call's first two (compilation)."""
        return 1 / float(np.median(self.step_times)) if self.step_times else None


def describe(cfg: Config, run: TrainingRun, devices) -> str:
    s, stream = run.state, run.stream
    where = f"epoch {s['epoch'] + 1}, step {s['step_in_epoch']} of {run.steps_per_epoch} (global step " \
            f"{s['global_step']}, lr {run.lr(s['global_step']):.4g}): " if s["global_step"] else ""
    return (f"{where}{cfg.input_mode} DPDNet on {stream.num_train} train / {stream.num_val} val patches "
            f"({cfg.patch_size}x{cfg.patch_size}), global batch {stream.global_batch} over {devices.count} "
            f"replica(s) ({devices.name}), {run.steps_per_epoch} steps per epoch, {cfg.epochs} epochs, "
            f"precision {cfg.precision}, Keras on {backends.name()}{', XLA' if cfg.xla else ''}")


def fit_all_epochs(run: TrainingRun, callbacks, verbose: int) -> None:
    """Keras fit from the run's state to cfg.epochs (the rest of an interrupted epoch first); each failure becomes
    a one-line TrainError that says which checkpoint is kept."""
    cfg, stream, nets, per_epoch = run.cfg, run.stream, run.nets, run.steps_per_epoch
    cbs = [Monitor(run)]
    if run.chief:
        cbs.append(keras.callbacks.CSVLogger(os.path.join(run.dir, "log.csv"), append=True))
        if backends.name() == "tensorflow":  # Keras writes TensorBoard logs through tf.summary
            cbs.append(keras.callbacks.TensorBoard(os.path.join(run.dir, "tensorboard"), write_graph=False))
    cbs += list(callbacks)
    epoch, step = run.state["epoch"], run.state["step_in_epoch"]
    if epoch >= cfg.epochs:
        print(f"{run.dir}: already trained for {epoch} epochs; raise epochs (--set epochs=N) to go on")
        return
    pool = concurrent.futures.ThreadPoolExecutor(cfg.loader_workers, thread_name_prefix="loader")
    ahead = 2 * cfg.loader_workers
    val = Batches(stream.val_batch, 0, stream.val_batches, pool, ahead) if stream.num_val else None
    try:
        # One fit call per epoch (Monitor ends each): Keras restarts a PyDataset at its first batch every epoch,
        # and the stream's batches are numbered by global step, so each epoch gets its own slice of it.
        for epoch in range(epoch, cfg.epochs):
            batches = Batches(stream.train_batch, epoch * per_epoch + step, per_epoch - step, pool, ahead)
            h = nets.trainer.fit(batches, initial_epoch=epoch, epochs=cfg.epochs, validation_data=val,
                                 callbacks=cbs, verbose=verbose, shuffle=False)
            run.history.extend({k: v[i] for k, v in h.history.items()} for i in range(len(h.epoch)))
            step = 0
    except NonFiniteLoss as e:
        raise TrainError(f"loss is not a finite number at {e}: training stopped; {run.kept()}; lower "
                         f"learning_rate or check the patch store") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: {run.kept()}; run the same command again to resume", file=sys.stderr)
        raise
    except Exception as e:
        if not backends.is_out_of_memory(e):
            raise
        raise TrainError(f"out of device memory with batch_size={cfg.batch_size} ({stream.global_batch} per step) "
                         f"and {cfg.patch_size}x{cfg.patch_size} patches: lower batch_size (--set batch_size=N), "
                         f"or use a smaller patch_size (needs a new patch store from data_prep.py); "
                         f"{run.kept()}") from None
    finally:
        pool.shutdown(cancel_futures=True)


class Monitor(keras.callbacks.Callback):
    """Per batch: full-epoch mean loss, lr and patches/s for the progress bar, a finite-loss check, and `last`
    every checkpoint_every_steps; per epoch: `best` (if improved) then `last`."""

    def __init__(self, run: TrainingRun):
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
        self.lr = r.lr(epoch * r.steps_per_epoch + self.offset)
        self.t_begin, self.t_last, self.rate = time.perf_counter(), None, 0.0

    def on_train_batch_end(self, batch, logs=None):
        r = self.run
        logs = logs if logs is not None else {}
        done = batch + 1
        # Keras reports the mean over this fit call's batches; add what an interrupted run had done before.
        self.loss_sum = self.prev_sum + float(logs.get("loss", float("nan"))) * done
        self.loss_count = self.prev_count + done
        step_in_epoch = self.offset + done
        global_step = self.epoch * r.steps_per_epoch + step_in_epoch
        if not math.isfinite(self.loss_sum):
            raise NonFiniteLoss(f"epoch {self.epoch + 1}, step {step_in_epoch}")
        now = time.perf_counter()
        if self.t_last is not None and batch >= 2:
            r.step_times.append(now - self.t_last)
        self.t_last = now
        self.rate = r.stream.global_batch * done / max(now - self.t_begin, 1e-9)
        logs.update(loss=self.loss_sum / self.loss_count, lr=self.lr, patches_per_s=self.rate)
        if global_step % r.cfg.checkpoint_every_steps == 0 and step_in_epoch < r.steps_per_epoch:
            r.save_last(self.epoch, step_in_epoch, global_step, self.loss_sum, self.loss_count)
            self.t_last = time.perf_counter()  # the checkpoint's time is not a step's

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_loss = self.loss_sum / self.loss_count
        val_loss = logs.get("val_loss")
        val_loss = None if val_loss is None else float(val_loss)
        logs.update(loss=train_loss, lr=self.lr, patches_per_s=self.rate)
        if val_loss is not None and not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation after epoch {epoch + 1}")
        self.run.end_epoch(epoch, train_loss, val_loss, self.lr)
        self.model.stop_training = True  # fit_all_epochs calls fit once per epoch


if __name__ == "__main__":
    main()
