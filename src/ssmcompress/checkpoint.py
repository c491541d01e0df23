"""Run folders: ``config.json`` + ``model.safetensors`` (+ resume state), written atomically.

A run folder holds

- ``config.json``: ``{"model": SequenceModel.config, "train": {...}, "data": {...}, ...}``
- ``model.safetensors``: the weights of the best model (by validation accuracy)
- ``metrics.jsonl``: one JSON object per finished epoch
- ``last.safetensors`` + ``trainer_state.json``: the state after the last finished
  epoch (weights, optimizer moments, RNG), so that ``--resume`` loses nothing.

Nothing here unpickles: tensors go through safetensors, everything else through JSON.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
LAST = "last.safetensors"
STATE = "trainer_state.json"


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunError(ValueError):
    """A run folder is missing, incomplete or corrupt (the message says which and how to fix it)."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)     # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    _atomic_write(Path(path), write)


def write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(Path(path), write)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist; the run folder has no weights (was training finished?).")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is corrupt, retrain or restore it.") from None


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); the run folder is corrupt.") from None


def read_run_config(run: Path) -> dict:
    run = Path(run)
    if not run.exists():
        raise RunError(f"run folder {run} does not exist; give the --out folder of an earlier 'ssmcompress train'.")
    if not run.is_dir():
        raise RunError(f"{run} is a file, not a run folder; give the folder that holds config.json and model.safetensors.")
    cfg = read_json(run / CONFIG)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise RunError(f"{run / CONFIG} has no 'model' section; it was not written by ssmcompress.")
    return cfg


def load_model(run: Path, weights: str = WEIGHTS):
    """Rebuild the ``SequenceModel`` of a run folder and load its weights.

    Returns ``(model, config)``; raises :class:`RunError` with one sentence when the
    folder is missing, incomplete or corrupt.
    """
    from .nn import SequenceModel

    run = Path(run)
    cfg = read_run_config(run)
    try:
        model = SequenceModel(**cfg["model"])
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run / CONFIG} describes a model that cannot be built ({exc}).") from None
    state = read_tensors(run / weights)
    load_state(model, state, source=run / weights)
    return model, cfg


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load a state dict, translating key or shape mismatches into one sentence."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise RunError(
            f"{source} does not match its config.json (missing {missing[:3]}, unexpected {extra[:3]}); the checkpoint is corrupt or from another model."
        )
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise RunError(
                f"{source}: tensor {k!r} has shape {tuple(v.shape)} but config.json implies {tuple(own[k].shape)}; the checkpoint does not belong to this config."
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
