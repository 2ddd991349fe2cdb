"""Atomic file writing: anything a user keeps (patches, checkpoints, results) is written to a temporary
name in the same folder and renamed into place, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to `path`; on success rename it onto `path`, on failure remove it.

    The temporary name keeps the file's extension so libraries that pick a format by suffix
    (OpenCV, NumPy, Keras) still work.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def json_safe(obj):
    """obj with every non-finite float (an infinite PSNR) as a string, for strict JSON readers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_csv(path: str, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def is_temporary(name: str) -> bool:
    """True for the leftovers of atomic_path (a killed process cannot clean up after itself)."""
    return os.path.basename(name).startswith(".") and ".tmp" in os.path.basename(name)


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yield a temporary folder path next to `path` (not yet created); on success move it onto `path` (replacing
    an older folder), on failure remove it. For outputs that are folders, such as a SavedModel."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.normpath(path))}.", suffix=".tmp", dir=parent)
    os.rmdir(tmp)  # writers such as Keras' export create the folder themselves
    try:
        yield tmp
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
