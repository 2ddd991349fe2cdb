"""The LPIPS worker process started by metrics.LpipsClient: computes LPIPS (AlexNet, v0.1) for image pairs
sent over a pipe. It imports only numpy, torch and lpips, never TensorFlow: torchvision imported after
TensorFlow in one process was seen to crash, and a separate process lets metrics overlap with inference.

Protocol (pickle, both ends are this repository): stdin carries (key, gt, pred) tuples of float32 RGB
(H, W, 3) arrays in [0, 1], then None (or end of file) to stop. stdout carries dicts:
{"type": "ready", ...info}, {"type": "fatal", "message"} (start-up failed; the worker then exits),
{"type": "result", "key", "value"} and {"type": "error", "key", "message"}.
Not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pickle
import re
import signal
import socket
import sys
import warnings

DOWNLOAD_SOCKET_TIMEOUT_S = 15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pnet-rand", action="store_true", help="randomly initialised AlexNet (tests; no download)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for --pnet-rand")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing weights")
    args = parser.parse_args()

    # The protocol owns the real stdout; anything printed by libraries goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    # Ctrl-C reaches the whole process group; the client decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings("ignore", category=UserWarning)

    def send(msg: dict) -> None:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        model, torch, info = setup(args)
    except Unavailable as e:
        send({"type": "fatal", "message": str(e)})
        return 1
    except Exception as e:  # anything else at start-up: still one clear line for the caller
        send({"type": "fatal", "message": f"LPIPS unavailable: could not set up the LPIPS network ({type(e).__name__}: {e})"})
        return 1
    send({"type": "ready", **info})

    while True:
        try:
            item = pickle.load(inp)
        except EOFError:
            return 0
        if item is None:
            return 0
        key, gt, pred = item
        try:
            with torch.inference_mode():
                t_gt = torch.from_numpy(gt).permute(2, 0, 1)[None]
                t_pred = torch.from_numpy(pred).permute(2, 0, 1)[None]
                value = float(model(t_gt, t_pred, normalize=True).item())  # [0,1] -> [-1,1] inside lpips
            send({"type": "result", "key": key, "value": value})
        except Exception as e:
            send({"type": "error", "key": key, "message": f"{type(e).__name__}: {e}"})


class Unavailable(RuntimeError):
    """Start-up failure with a message meant for the user."""


def setup(args):
    """Import torch/lpips, make sure the AlexNet weights are cached (or fail saying where to put them), build the net."""
    try:
        import numpy  # noqa: F401  (torch.from_numpy needs it)
        import torch
        import lpips
        from torchvision.models import AlexNet_Weights
    except ImportError as e:
        raise Unavailable(f"LPIPS unavailable: cannot import {e.name} ({e}); install requirements.txt") from e
    torch.set_num_threads(max(1, args.threads))

    if args.pnet_rand:
        torch.manual_seed(args.seed)
    else:
        ensure_alexnet_weights(torch, AlexNet_Weights.IMAGENET1K_V1.url, download=not args.no_download)
    model = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=args.pnet_rand, verbose=False).eval()
    info = {"torch": torch.__version__, "lpips": importlib.metadata.version("lpips"), "threads": torch.get_num_threads(),
            "pnet_rand": args.pnet_rand, "tensorflow_imported": "tensorflow" in sys.modules}
    return model, torch, info


def ensure_alexnet_weights(torch, url: str, download: bool) -> None:
    """Where torchvision caches the AlexNet weights; fetch them with a short network timeout if allowed."""
    name = os.path.basename(url)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return
    torch_home = os.path.dirname(torch.hub.get_dir())
    fix = (f"put {name} (from {url}) at {path} (torchvision's cache under TORCH_HOME={torch_home}; "
           f"set TORCH_HOME to use another folder)")
    if not download:
        raise Unavailable(f"LPIPS unavailable: the AlexNet backbone weights are not cached and downloading is off; {fix}")
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    print(f"LPIPS: downloading {url} to {path}", file=sys.stderr)
    try:
        os.makedirs(folder, exist_ok=True)
        match = re.search(r"-([a-f0-9]+)\.", name)
        torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None, progress=True)
    except Exception as e:
        reason = str(getattr(e, "reason", e)) or type(e).__name__
        raise Unavailable(f"LPIPS unavailable: the AlexNet backbone weights are not cached and could not be "
                          f"downloaded ({reason}); {fix}") from e


if __name__ == "__main__":
    sys.exit(main())
