"""Import an S4D model trained with the state-spaces/s4 code (``example.py`` + ``models/s4/s4d.py``).

The source model (``S4Model`` in state-spaces/s4's ``example.py``)::

    x = encoder(x)                                   # Linear(d_input, H)
    for each layer i:                                # (B, H, L)
        z = norms[i](x) if prenorm else x            # LayerNorm(H)
        z = s4_layers[i](z)                          # S4D, below
        x = x + dropout(z)
        x = x if prenorm else norms[i](x)
    y = decoder(mean over L of x)                    # Linear(H, d_output); no final norm

    S4D (s4d.py):  y = K * u + D u,  y = Conv1d(H, 2H, 1)(GELU(y)) -> GLU over channels
    K[h, l] = 2 Re( sum_n C'[h,n] exp(dt A[h,n] l) ),  C' = C (exp(dt A) - 1) / A
    A = -exp(log_A_real) + i A_imag,  dt = exp(log_dt),  C = view_as_complex(kernel.C)

That is our s4d kernel (zero-order hold, ``B_d = (exp(dt A) - 1)/A * B``) with
B = 1 and our ``K = 2 Re(sum C B_d lam_d^l)``: the same factor 2, the same C. Our
block (SSM -> GELU -> Linear(H, 2H) -> GLU -> residual -> norm) is theirs with
the 1x1 convolution as a Linear, so every tensor maps one to one:

=====================================  ==========================  ====================
state-spaces/s4 key                    shape                       ours
=====================================  ==========================  ====================
encoder.weight / .bias                 (H, d_input) / (H,)         encoder.*
s4_layers.i.kernel.log_dt              (H,)                        blocks.i.ssm.log_dt
s4_layers.i.kernel.log_A_real          (H, N/2)                    blocks.i.ssm.log_A_real
s4_layers.i.kernel.A_imag              (H, N/2)                    blocks.i.ssm.A_imag
s4_layers.i.kernel.C                   (H, N/2, 2)                 blocks.i.ssm.C
s4_layers.i.D                          (H,)                        blocks.i.ssm.D
s4_layers.i.output_linear.0.weight     (2H, H, 1)                  blocks.i.output_linear.weight (2H, H)
s4_layers.i.output_linear.0.bias       (2H,)                       blocks.i.output_linear.bias
norms.i.weight / .bias                 (H,)                        blocks.i.norm.norm.*
decoder.weight / .bias                 (d_output, H) / (d_output,) decoder.*
=====================================  ==========================  ====================

and ``blocks.i.ssm.B`` is the fixed buffer B = 1 (``learn_B=False``). The
imported model has ``kernel="s4d"``, ``init="lin"`` (s4d.py's initialisation,
recorded only), mean pooling, LayerNorm, no dropout and, with prenorm, no
final norm (``final_norm=False``). Prenorm and postnorm models have the same
keys: the caller says which (``example.py``'s default is postnorm).

Files: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.ckpt`` read with
``torch.load(weights_only=True)`` (never a full unpickle); a dict holding the
state dict under ``"model"`` (example.py's checkpoint) or ``"state_dict"``
(PyTorch Lightning) is unwrapped, and a common ``module.`` (DataParallel) or
``model.`` (Lightning) prefix is removed.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from . import checkpoint as ckpt

WRAPPER_KEYS = ("state_dict", "model")
PREFIXES = ("module.", "model.")
_LAYER_KEY = re.compile(r"(s4_layers|norms)\.(\d+)\.(.+)")
_LAYER_TENSORS = ("D", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag", "kernel.C",
                  "output_linear.0.weight", "output_linear.0.bias")


class S4ImportError(ValueError):
    """The file is not a state-spaces/s4 S4D model we can map (one sentence naming the key)."""


def read_state_dict(path) -> dict:
    """Tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.ckpt`` file, unwrapped and unprefixed."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise S4ImportError(f"{path} does not exist; give the checkpoint file of a state-spaces/s4 model.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise S4ImportError(f"{path} is not a readable safetensors file ({e}).") from None
    elif path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            if found is None:
                raise S4ImportError(f"{path} is not a readable PyTorch checkpoint (torch.load(weights_only=True) "
                                    "cannot parse it); give the file that torch.save wrote.") from None
            raise S4ImportError(f"{path} holds a {found.group(1)} object, which torch.load(weights_only=True) does "
                                "not unpickle; save the model's state_dict() (tensors only) and import that.") from None
        except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
            raise S4ImportError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}).") from None
    else:
        raise S4ImportError(f"{path} has suffix {path.suffix!r}; give a .safetensors, .pt, .pth or .ckpt file.")
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise S4ImportError(f"{path} holds no state dict (a dict of tensors, possibly under 'model' or "
                           "'state_dict'); save model.state_dict() and import that.")
    for key, v in obj.items():
        if not isinstance(key, str) or not isinstance(v, torch.Tensor):
            raise S4ImportError(f"{path}: entry {key!r} is a {type(v).__name__}, not a tensor; expected the "
                               "state dict of an S4 model.")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _layer_count(state: dict) -> int:
    """Number of S4D layers, checking that every key belongs to example.py's S4Model."""
    indices = set()
    for key in state:
        if key in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"):
            continue
        m = _LAYER_KEY.fullmatch(key)
        ok = m is not None and ((m.group(1) == "s4_layers" and m.group(3) in _LAYER_TENSORS)
                                or (m.group(1) == "norms" and m.group(3) in ("weight", "bias")))
        if not ok:
            raise S4ImportError(
                f"key {key!r} is not part of an S4D model built like state-spaces/s4 example.py (encoder, "
                "s4_layers.i.{D, kernel.log_dt, kernel.log_A_real, kernel.A_imag, kernel.C, output_linear.0}, "
                "norms.i, decoder); other S4 variants cannot be imported.")
        indices.add(int(m.group(2)))
    if not indices:
        raise S4ImportError("the state dict has no s4_layers.i.* keys; expected an S4D model built like "
                           "state-spaces/s4 example.py.")
    n = max(indices) + 1
    return n


def _expect(state: dict, key: str, shape: tuple) -> torch.Tensor:
    if key not in state:
        raise S4ImportError(f"key {key!r} is missing; an S4D model built like state-spaces/s4 example.py has it.")
    v = state[key]
    if tuple(v.shape) != tuple(shape):
        raise S4ImportError(f"key {key!r} has shape {tuple(v.shape)} but the other tensors imply {tuple(shape)}.")
    if not v.is_floating_point():
        raise S4ImportError(f"key {key!r} has dtype {v.dtype}; expected floating-point weights.")
    if not torch.isfinite(v).all():
        raise S4ImportError(f"key {key!r} contains NaN or infinite values.")
    return v.detach().to(torch.float32)


def s4d_model(state: dict, prenorm: bool = False):
    """Our :class:`~ssmcompress.nn.SequenceModel` with the weights of an example.py S4D state dict."""
    from .nn import SequenceModel

    n_layers = _layer_count(state)
    if "encoder.weight" not in state:
        raise S4ImportError("key 'encoder.weight' is missing; an S4D model built like state-spaces/s4 "
                           "example.py has a Linear encoder.")
    if state["encoder.weight"].ndim != 2:
        raise S4ImportError(f"key 'encoder.weight' has shape {tuple(state['encoder.weight'].shape)}; expected "
                           "(d_model, d_input) of a Linear encoder.")
    H, d_input = state["encoder.weight"].shape
    if "decoder.weight" not in state or state["decoder.weight"].ndim != 2:
        raise S4ImportError("key 'decoder.weight' is missing or not a matrix; expected the (d_output, d_model) "
                           "weight of example.py's Linear decoder.")
    d_output = state["decoder.weight"].shape[0]
    modes = []
    for i in range(n_layers):
        key = f"s4_layers.{i}.kernel.A_imag"
        if key not in state:
            raise S4ImportError(f"key {key!r} is missing; an S4D model built like state-spaces/s4 example.py has it.")
        if state[key].ndim != 2 or state[key].shape[0] != H or state[key].shape[1] < 1:
            raise S4ImportError(f"key {key!r} has shape {tuple(state[key].shape)}; expected ({H}, N/2).")
        modes.append(int(state[key].shape[1]))

    ours = {"encoder.weight": _expect(state, "encoder.weight", (H, d_input)),
            "encoder.bias": _expect(state, "encoder.bias", (H,)),
            "decoder.weight": _expect(state, "decoder.weight", (d_output, H)),
            "decoder.bias": _expect(state, "decoder.bias", (d_output,))}
    for i, n in enumerate(modes):
        src, dst = f"s4_layers.{i}.", f"blocks.{i}."
        ours[dst + "ssm.log_dt"] = _expect(state, src + "kernel.log_dt", (H,))
        ours[dst + "ssm.log_A_real"] = _expect(state, src + "kernel.log_A_real", (H, n))
        ours[dst + "ssm.A_imag"] = _expect(state, src + "kernel.A_imag", (H, n))
        ours[dst + "ssm.C"] = _expect(state, src + "kernel.C", (H, n, 2))
        ours[dst + "ssm.D"] = _expect(state, src + "D", (H,))
        ours[dst + "ssm.B"] = torch.stack([torch.ones(H, n), torch.zeros(H, n)], dim=-1)  # B = 1
        ours[dst + "output_linear.weight"] = _expect(state, src + "output_linear.0.weight", (2 * H, H, 1))[..., 0]
        ours[dst + "output_linear.bias"] = _expect(state, src + "output_linear.0.bias", (2 * H,))
        ours[dst + "norm.norm.weight"] = _expect(state, f"norms.{i}.weight", (H,))
        ours[dst + "norm.norm.bias"] = _expect(state, f"norms.{i}.bias", (H,))
    model = SequenceModel(d_input=int(d_input), d_output=int(d_output), d_model=int(H), layers=n_layers,
                          state_dim=[2 * n for n in modes], kernel="s4d", init="lin", dropout=0.0,
                          prenorm=bool(prenorm), norm="layer", pool="mean", task="classification",
                          learn_B=False, final_norm=False if prenorm else None)
    ckpt.load_state(model, ours, source="the converted state dict")
    return model.eval()


def import_s4(checkpoint, out, prenorm: bool = False, data: dict | None = None):
    """Read ``checkpoint`` and write the run folder ``out`` (config.json + model.safetensors).

    ``data`` (``{"spec": ..., "options": {...}}``) is recorded as the run's data set so that
    ``evaluate`` and ``compress`` find it. Returns ``(model, config)``.
    """
    check_new_folder(out)
    model = s4d_model(read_state_dict(checkpoint), prenorm=prenorm)
    return model, write_imported_run(model, checkpoint, out, prenorm, data)


def check_new_folder(out) -> None:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise S4ImportError(f"{out} already exists and is not an empty folder; choose another --out.")


def write_imported_run(model, checkpoint, out, prenorm: bool, data: dict | None = None) -> dict:
    """Write ``model`` (from :func:`s4d_model`) as the run folder ``out``; return its config."""
    out = Path(out)
    check_new_folder(out)
    cfg = {"model": model.config,
           "imported_from": {"checkpoint": str(checkpoint), "format": "state-spaces/s4 example.py, S4D layers",
                             "prenorm": bool(prenorm)}}
    if data is not None:
        cfg["data"] = data
    tmp = out.with_name("." + out.name + ".partial")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ckpt.write_json(tmp / ckpt.CONFIG, cfg)
    ckpt.write_tensors(tmp / ckpt.WEIGHTS, model.state_dict())
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return cfg
