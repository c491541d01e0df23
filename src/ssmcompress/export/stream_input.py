"""Inputs of ``ssmcompress stream``: a .npy array, CSV lines in a file, or CSV lines on stdin, one step at a time.

Shapes of a .npy file (``F`` = the model's d_input):

- ``(length,)``: one stream of a model with ``F == 1`` (or of tokens);
- ``(length, F)``: one stream (for ``F == 1`` a 2-D array whose second axis is not 1 is ``(batch, length)``);
- ``(batch, length)``: streams of a model with ``F == 1`` (or of tokens);
- ``(batch, length, F)``.

A CSV line (file or stdin) is one step of one stream: ``F`` numbers separated by commas
(or one token).  Empty lines and lines starting with ``#`` are skipped.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["StreamInput", "open_stream_input"]


class StreamInput:
    """``batch`` streams; iterating gives one step at a time: float32 (batch, F) or int64 tokens (batch,)."""

    def __init__(self, steps: Iterator[np.ndarray], batch: int, length=None):
        self._steps = steps
        self.batch = batch
        self.length = length  # None when it is only known at the end (stdin)

    def __iter__(self):
        return self._steps


def _check_values(x: np.ndarray, tokens, where: str) -> np.ndarray:
    if tokens is None:
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"{where} holds {x.dtype} values; stream expects real numbers.")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{where} holds non-finite values (nan or inf); stream expects finite numbers.")
        return x
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{where} holds {x.dtype} values; this model reads integer tokens.")
    if x.size and (not np.all(np.isfinite(x)) or not np.all(x == np.round(x)) or x.min() < 0 or x.max() >= tokens):
        raise ValueError(f"{where} holds values that are not integer tokens in [0, {tokens}); this model has vocab_size {tokens}.")
    return x.astype(np.int64)


def _from_array(x: np.ndarray, d_input: int, tokens, where: str) -> StreamInput:
    single = tokens is not None or d_input == 1
    if x.ndim == 1 and single:
        x = x[None, :, None] if tokens is None else x[None, :]
    elif x.ndim == 2 and single and (x.shape[1] != 1 or tokens is not None):
        x = x[:, :, None] if tokens is None else x  # (batch, length)
    elif x.ndim == 2 and tokens is None and x.shape[1] == d_input:
        x = x[None]  # (length, F)
    elif x.ndim == 3 and tokens is None and x.shape[2] == d_input:
        pass
    else:
        expected = ("(length,) or (batch, length) of tokens" if tokens is not None else
                    f"(length,), (length, {d_input}), (batch, length) or (batch, length, {d_input})" if d_input == 1 else
                    f"(length, {d_input}) or (batch, length, {d_input})")
        raise ValueError(f"{where} has shape {x.shape}, but this model reads {d_input} feature(s) per step: expected {expected}.")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{where} has shape {x.shape}: no steps to stream.")
    x = _check_values(x, tokens, where)
    return StreamInput(iter(np.swapaxes(x, 0, 1)), batch=x.shape[0], length=x.shape[1])


def _csv_steps(lines, d_input: int, tokens, where: str):
    width = 1 if tokens is not None else d_input
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            values = np.array([float(v) for v in line.split(",")])
        except ValueError:
            raise ValueError(f"{where} line {number} ({line[:40]!r}) is not comma-separated numbers.") from None
        if values.size != width:
            raise ValueError(f"{where} line {number} has {values.size} value(s), but this model reads {width} per step.")
        yield _check_values(values[None, :] if tokens is None else values, tokens, f"{where} line {number}")


def open_stream_input(spec: str, d_input: int, vocab_size=None, stdin=None) -> StreamInput:
    """Open ``spec`` (a .npy file, a .csv/.txt file, or ``-`` for CSV lines on stdin) for a model with ``d_input`` features.

    Raises ValueError with one sentence for a missing file, an unknown format, a wrong width or bad values.
    """
    if spec == "-":
        stream = stdin if stdin is not None else sys.stdin
        return StreamInput(_csv_steps(stream, d_input, vocab_size, "stdin"), batch=1)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"input file {spec} does not exist; give a .npy or .csv file, or - for CSV lines on stdin.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{spec} is not a readable .npy array ({exc}).") from None
        return _from_array(x, d_input, vocab_size, str(spec))
    if suffix in (".csv", ".txt"):
        steps = list(_csv_steps(io.StringIO(path.read_text()), d_input, vocab_size, str(spec)))
        if not steps:
            raise ValueError(f"{spec} holds no steps.")
        return StreamInput(iter(steps), batch=1, length=len(steps))
    raise ValueError(f"{spec} has the unknown input format {suffix or '(no suffix)'!r}; give a .npy, .csv or .txt file, or -.")
