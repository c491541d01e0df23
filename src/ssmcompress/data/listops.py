"""ListOps (Long Range Arena): nested list operations on single digits.

An expression is a tree. Every inner node is an operator applied to 2 ..
``max_args`` arguments, each argument a digit 0-9 or another expression;
``]`` closes the list::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->  5

Operators, as in LRA:

* ``[MIN`` / ``[MAX``: smallest / largest argument;
* ``[MED``: median, ``int(np.median(args))``, i.e. the lower-rounded mean of
  the two middle values for an even count;
* ``[SM``: sum modulo 10.

The label (0-9) is the value of the whole expression: a 10-class task.

Generation (after LRA): the root is an operator; below it, an argument at
nesting depth ``d < max_depth`` is an operator with probability
``operator_prob`` (LRA uses 0.25), otherwise a uniform digit; arguments of an
operator at depth ``max_depth`` are digits, so no expression nests deeper than
``max_depth`` operators. The operator and the argument count (uniform in
``2 .. max_args``) are drawn uniformly. Expressions whose token count falls
outside ``[min_length, max_length]`` are rejected and drawn again. Each split
has its own random stream derived from ``data_seed``, so the data are fully
determined by ``data_seed`` and the options, and the test split does not change
when ``n_train`` does. Unlike LRA, no parentheses are emitted: the bracket
tokens already encode the tree.

Vocabulary (``VOCAB``, ids in order, ``vocab_size = 16``)::

    0 <pad> | 1..10 digits "0".."9" | 11 [MIN | 12 [MAX | 13 [MED | 14 [SM | 15 ]

Sequences are right-padded with 0 to ``max_length``; ``len_*`` holds each
sequence's token count.
"""
from __future__ import annotations

import numpy as np

from .dataset import DataError, Dataset
from .splits import DEFAULT_DATA_SEED

PAD_ID = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + (CLOSE,)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
DIGIT_ID0 = TOKEN_ID["0"]  # id of digit d is DIGIT_ID0 + d
OP_ID0 = TOKEN_ID[OPERATORS[0]]
CLOSE_ID = TOKEN_ID[CLOSE]

DEFAULTS = dict(n_train=2000, n_val=200, n_test=500, max_depth=4, max_args=5,
                min_length=20, max_length=200, operator_prob=0.25)


def apply_operator(op: str, args) -> int:
    """Value of ``op`` (one of OPERATORS) on a list of digits."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(np.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def max_tokens(max_depth: int, max_args: int) -> int:
    """Longest expression (token count) that the depth and argument limits allow."""
    n = 1  # a digit
    for _ in range(max_depth):
        n = 2 + max_args * n
    return n


class _TooLong(Exception):
    pass


def _expression(rng, depth, opts, budget, out):
    """Append one operator expression at nesting ``depth`` to ``out``; return its value.

    Raises _TooLong as soon as ``out`` would exceed ``budget`` tokens.
    """
    op = int(rng.integers(len(OPERATORS)))
    out.append(OP_ID0 + op)
    values = []
    for _ in range(int(rng.integers(2, opts["max_args"] + 1))):
        if depth < opts["max_depth"] and rng.random() < opts["operator_prob"]:
            values.append(_expression(rng, depth + 1, opts, budget, out))
        else:
            d = int(rng.integers(10))
            out.append(DIGIT_ID0 + d)
            values.append(d)
        if len(out) >= budget:  # still needs at least the closing bracket
            raise _TooLong
    out.append(CLOSE_ID)
    return apply_operator(OPERATORS[op], values)


def generate(n: int, rng: np.random.Generator, max_depth: int, max_args: int,
             min_length: int, max_length: int, operator_prob: float = 0.25):
    """Draw ``n`` ListOps expressions.

    Returns
    -------
    tokens : int64 (n, max_length), right-padded with PAD_ID
    labels : int64 (n,), values 0..9
    lengths : int64 (n,), token counts in [min_length, max_length]
    """
    opts = dict(max_depth=max_depth, max_args=max_args, operator_prob=operator_prob)
    tokens = np.full((n, max_length), PAD_ID, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    attempts = i = 0
    while i < n:
        # give up once acceptance has stayed below 1 in 500 over 20000+ draws
        if attempts >= 20_000 and i * 500 < attempts:
            raise DataError(
                f"ListOps generation rarely hits lengths {min_length}..{max_length} with "
                f"max_depth={max_depth}, max_args={max_args}, operator_prob={operator_prob}; "
                "widen the length range or change those options.")
        attempts += 1
        out = []
        try:
            value = _expression(rng, 1, opts, max_length, out)
        except _TooLong:
            continue
        if len(out) < min_length:
            continue
        tokens[i, : len(out)] = out
        labels[i] = value
        lengths[i] = len(out)
        i += 1
    return tokens, labels, lengths


def decode(tokens, length=None) -> str:
    """Token ids -> the expression as text (padding dropped)."""
    ids = list(np.asarray(tokens)[: length if length is not None else None])
    return " ".join(VOCAB[int(t)] for t in ids if int(t) != PAD_ID)


def _check_options(opts: dict) -> dict:
    for key in ("n_train", "n_val", "n_test", "max_depth", "max_args", "min_length", "max_length"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"listops option {key} must be an integer, got {v!r}.")
        opts[key] = int(v)
    for key in ("n_train", "n_val", "n_test"):
        if opts[key] < 1:
            raise DataError(f"listops option {key} must be at least 1, got {opts[key]}.")
    if opts["max_depth"] < 1:
        raise DataError(f"listops option max_depth must be at least 1, got {opts['max_depth']}.")
    if opts["max_args"] < 2:
        raise DataError(f"listops option max_args must be at least 2, got {opts['max_args']}.")
    if opts["min_length"] < 4 or opts["min_length"] > opts["max_length"]:
        raise DataError(
            f"listops needs 4 <= min_length <= max_length (the shortest expression has 4 tokens), "
            f"got min_length={opts['min_length']}, max_length={opts['max_length']}.")
    longest = max_tokens(opts["max_depth"], opts["max_args"])
    if opts["min_length"] > longest:
        raise DataError(
            f"listops min_length={opts['min_length']} is unreachable: with max_depth={opts['max_depth']} "
            f"and max_args={opts['max_args']} an expression has at most {longest} tokens.")
    p = opts["operator_prob"]
    try:
        p = float(p)
    except (TypeError, ValueError):
        p = -1.0
    if not 0.0 < p < 1.0:
        raise DataError(f"listops option operator_prob must be between 0 and 1 (exclusive), "
                        f"got {opts['operator_prob']!r}.")
    opts["operator_prob"] = p
    return opts


def load_listops(data_seed: int = DEFAULT_DATA_SEED, **options) -> Dataset:
    """Generate the ListOps train / val / test splits (see the module docstring)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(f"Unknown listops option {unknown[0]!r}; valid options are "
                        f"{', '.join(sorted(DEFAULTS))} and data_seed.")
    opts = _check_options({**DEFAULTS, **options})
    gen = {k: opts[k] for k in ("max_depth", "max_args", "min_length", "max_length", "operator_prob")}
    splits = {}
    for stream, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([int(data_seed), 100 + stream])
        splits[split] = generate(opts[f"n_{split}"], rng, **gen)
    (x_tr, y_tr, l_tr), (x_va, y_va, l_va), (x_te, y_te, l_te) = (
        splits["train"], splits["val"], splits["test"])
    return Dataset(name="listops", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va,
                   x_test=x_te, y_test=y_te, len_train=l_tr, len_val=l_va, len_test=l_te,
                   task="classification", n_classes=10, d_input=None, vocab_size=len(VOCAB),
                   seq_len=opts["max_length"], pad_id=PAD_ID, normalization=None, vocab=VOCAB,
                   info={"source": "ListOps generator (LRA specification)",
                         "data_seed": int(data_seed), **opts})
