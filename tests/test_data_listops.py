"""ListOps generator: vocabulary, labels checked by an independent evaluator, options, determinism."""
import numpy as np
import pytest

from ssmcompress.data import LISTOPS_VOCAB, DataError, load_dataset

SMALL = dict(n_train=300, n_val=50, n_test=100)


def evaluate(text):
    """Independent reference: parse the bracket text; return (value, nesting depth, arities)."""
    stack, depth, arities = [], 0, []
    result = None
    for tok in text.split():
        if tok.startswith("["):
            stack.append((tok, []))
            depth = max(depth, len(stack))
        elif tok == "]":
            op, args = stack.pop()
            arities.append(len(args))
            s = sorted(args)
            if op == "[MIN":
                v = s[0]
            elif op == "[MAX":
                v = s[-1]
            elif op == "[SM":
                v = sum(s) % 10
            elif op == "[MED":
                m = len(s) // 2
                v = s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
            else:
                raise AssertionError(f"unexpected operator {op}")
            if stack:
                stack[-1][1].append(v)
            else:
                assert result is None, "two top-level expressions"
                result = v
        else:
            assert tok.isdigit() and len(tok) == 1, tok
            assert stack, "digit outside any list"
            stack[-1][1].append(int(tok))
    assert not stack and result is not None
    return result, depth, arities


def texts(x, lengths):
    return [" ".join(LISTOPS_VOCAB[t] for t in row[:n]) for row, n in zip(x, lengths)]


def test_vocabulary():
    assert LISTOPS_VOCAB[0] == "<pad>"
    assert LISTOPS_VOCAB[1:11] == tuple("0123456789")
    assert LISTOPS_VOCAB[11:] == ("[MIN", "[MAX", "[MED", "[SM", "]")


def test_defaults_shapes_and_sizes():
    ds = load_dataset("listops")
    assert ds.sizes() == {"train": 2000, "val": 200, "test": 500}
    assert (ds.vocab_size, ds.pad_id, ds.seq_len, ds.n_classes) == (16, 0, 200, 10)
    assert ds.d_input is None and ds.normalization is None and ds.is_tokens
    for s in ("train", "val", "test"):
        x, y, n = ds.split(s)
        assert x.dtype == np.int64 and x.shape == (len(y), 200)
        assert y.dtype == np.int64 and n.dtype == np.int64
        assert n.min() >= 20 and n.max() <= 200
        assert x.min() >= 0 and x.max() < 16
    assert "\n" not in ds.describe()


def test_labels_match_independent_evaluator_and_options_hold():
    ds = load_dataset("listops", max_depth=3, max_args=4, min_length=10, max_length=60, **SMALL)
    depths = []
    for s in ("train", "val", "test"):
        x, y, n = ds.split(s)
        assert n.min() >= 10 and n.max() <= 60 and x.shape[1] == 60
        # padding exactly after the valid length
        mask = np.arange(x.shape[1])[None, :] < n[:, None]
        assert (x[mask] != 0).all() and (x[~mask] == 0).all()
        for text, label in zip(texts(x, n), y):
            value, depth, arities = evaluate(text)
            assert value == label, text
            assert 1 <= depth <= 3 and min(arities) >= 2 and max(arities) <= 4
            depths.append(depth)
    assert set(depths) >= {2, 3}  # nesting actually happens
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert set(labels.tolist()) == set(range(10))


def test_depth_one_gives_flat_lists():
    ds = load_dataset("listops", max_depth=1, max_args=6, min_length=4, max_length=8, **SMALL)
    for text, label in zip(texts(ds.x_train, ds.len_train), ds.y_train):
        value, depth, arities = evaluate(text)
        assert (value, depth) == (label, 1) and 2 <= arities[0] <= 6


def test_all_operators_appear():
    ds = load_dataset("listops", **SMALL)
    ids = set(np.unique(ds.x_train).tolist())
    assert {11, 12, 13, 14, 15} <= ids


def test_deterministic_and_seed_independent():
    a = load_dataset("listops", seed=0, **SMALL)
    b = load_dataset("listops", seed=99, **SMALL)
    for s in ("train", "val", "test"):
        for u, v in zip(a.split(s), b.split(s)):
            assert np.array_equal(u, v)
    c = load_dataset("listops", data_seed=1, **SMALL)
    assert not np.array_equal(a.x_train, c.x_train)
    # the test split does not move when the training set grows
    d = load_dataset("listops", n_train=400, n_val=50, n_test=100)
    assert np.array_equal(a.x_test, d.x_test) and np.array_equal(a.y_test, d.y_test)
    assert np.array_equal(a.x_train, d.x_train[:300])


@pytest.mark.parametrize("options, words", [
    ({"max_depth": 0}, "max_depth"),
    ({"max_args": 1}, "max_args"),
    ({"n_train": 0}, "n_train"),
    ({"n_test": 2.5}, "n_test must be an integer"),
    ({"min_length": 3}, "min_length"),
    ({"min_length": 50, "max_length": 40}, "min_length <= max_length"),
    ({"max_depth": 1, "max_args": 3, "min_length": 6}, "unreachable"),
    ({"operator_prob": 1.0}, "operator_prob"),
])
def test_bad_options(options, words):
    with pytest.raises(DataError, match=words):
        load_dataset("listops", **options)


def test_rarely_reachable_lengths_fail_with_a_sentence():
    # depth 2, 2 args: at most 2 + 2*4 = 10 tokens, and 10 needs both arguments to be lists
    with pytest.raises(DataError, match="rarely hits lengths"):
        load_dataset("listops", n_train=100, n_val=1, n_test=1, max_depth=2, max_args=2,
                     min_length=10, max_length=10, operator_prob=0.001)
