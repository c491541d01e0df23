"""Variable-length sequences in a user's .npz (lengths_train / lengths_val / lengths_test).

Padding must never reach a prediction: not through the data (statistics, NaN checks),
the model (convolution, pooling, streaming), training, evaluation or the experiment.
"""
import json

import numpy as np
import pytest
import torch

from ssmcompress.cli import main
from ssmcompress.data import DataError, load_dataset
from ssmcompress.nn import SequenceModel
from ssmcompress.train import evaluate

L = 16


def padded(n, rng, features=2, pad_value=0.0, min_len=3):
    lengths = rng.integers(min_len, L + 1, size=n)
    x = rng.normal(2.0, 3.0, (n, L, features))
    y = np.arange(n) % 3
    x[:, :, 0] += y[:, None]                              # a learnable signal
    for i, n_i in enumerate(lengths):
        x[i, n_i:] = pad_value
    return x, y, lengths


def write(path, pad_value=0.0, seed=0, **extra):
    rng = np.random.default_rng(seed)
    x_tr, y_tr, l_tr = padded(60, rng, pad_value=pad_value)
    x_te, y_te, l_te = padded(20, rng, pad_value=pad_value)
    arrays = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, lengths_train=l_tr, lengths_test=l_te)
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_statistics_from_valid_steps_and_padding_zeroed(tmp_path):
    a = write(tmp_path / "d.npz", pad_value=np.nan)             # NaN padding is fine with lengths
    ds = load_dataset(str(tmp_path / "d.npz"), val_fraction=0.25)
    assert ds.sizes() == {"train": 45, "val": 15, "test": 20}
    for split in ("train", "val", "test"):
        x, _, lengths = ds.split(split)
        assert np.isfinite(x).all()
        for row, n in zip(x, lengths):
            assert (row[n:] == 0).all()
    x_tr, _, l_tr = ds.split("train")
    # the train split's statistics: the valid steps of its own rows only
    mean, std = ds.normalization["mean"], ds.normalization["std"]
    restored = np.concatenate([x_tr[i, :n] * std + mean for i, n in enumerate(l_tr)])
    assert np.isfinite(restored).all()
    np.testing.assert_allclose(restored.mean(0), mean, atol=1e-5)
    np.testing.assert_allclose(restored.std(0), std, rtol=1e-4)
    assert sorted(np.concatenate([ds.len_train, ds.len_val]).tolist()) == sorted(a["lengths_train"].tolist())
    np.testing.assert_array_equal(ds.len_test, a["lengths_test"])


def test_padding_values_in_the_file_do_not_change_data_or_predictions(tmp_path):
    write(tmp_path / "zero.npz", pad_value=0.0)
    write(tmp_path / "junk.npz", pad_value=1e6)
    d0, d1 = load_dataset(str(tmp_path / "zero.npz")), load_dataset(str(tmp_path / "junk.npz"))
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(d0.split(s)[0], d1.split(s)[0])
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_output=3, d_model=8, layers=2, state_dim=8)
    r0, r1 = (evaluate(model, *d.split("test")) for d in (d0, d1))
    assert r0 == r1


@pytest.mark.parametrize("pool", ["mean", "last"])
@pytest.mark.parametrize("kernel", ["s4d", "dss-softmax"])
def test_model_forward_and_stream_ignore_padding(pool, kernel):
    torch.manual_seed(1)
    model = SequenceModel(d_input=2, d_output=3, d_model=6, layers=2, state_dim=6, kernel=kernel, pool=pool,
                          l_max=L, prenorm=True).double().eval()
    x = torch.randn(5, L, 2, dtype=torch.float64)
    lengths = torch.tensor([1, 4, 9, L, 12])
    garbage = x.clone()
    for i, n in enumerate(lengths):
        garbage[i, n:] = 1e3 * torch.randn(L - n, 2, dtype=torch.float64)
    with torch.no_grad():
        out, out_g = model(x, lengths=lengths), model(garbage, lengths=lengths)
        # exact per-sequence reference: each sequence alone, cut to its length
        alone = torch.cat([model(x[i:i + 1, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(out, alone, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_g, alone, rtol=1e-9, atol=1e-9)   # FFT rounding only
    torch.testing.assert_close(model.stream(garbage, lengths=lengths), alone, rtol=1e-9, atol=1e-9)


def one_sentence(path, **options):
    with pytest.raises(DataError) as e:
        load_dataset(str(path), **options)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_length_keys_are_validated(tmp_path):
    a = write(tmp_path / "ok.npz")
    bad = dict(a)
    del bad["lengths_test"]
    np.savez(tmp_path / "b.npz", **bad)
    assert "lengths_test" in one_sentence(tmp_path / "b.npz")
    for value, words in ((np.full(60, L + 1), "1..16"), (np.zeros(60), "1..16"), (np.full(60, 2.5), "non-integer"),
                         (np.ones(59), "(60,)"), (np.ones((60, 1)), "(60,)")):
        np.savez(tmp_path / "b.npz", **{**a, "lengths_train": value})
        msg = one_sentence(tmp_path / "b.npz")
        assert "lengths_train" in msg and words in msg
    np.savez(tmp_path / "b.npz", **{**a, "lengths_val": np.ones(3)})
    assert "x_val" in one_sentence(tmp_path / "b.npz")
    np.savez(tmp_path / "b.npz", **{**a, "x_val": a["x_test"], "y_val": a["y_test"]})
    assert "lengths_val" in one_sentence(tmp_path / "b.npz")
    x = a["x_train"].copy()
    x[0, 0, 0] = np.nan                                        # NaN inside a valid step is still an error
    np.savez(tmp_path / "b.npz", **{**a, "x_train": x})
    assert "NaN" in one_sentence(tmp_path / "b.npz")


def test_tokens_with_lengths(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(1, 9, size=(30, L))
    lengths = rng.integers(2, L + 1, size=30)
    x_junk = x.copy()
    for i, n in enumerate(lengths):
        x_junk[i, n:] = 99                                    # out-of-vocabulary junk in the padding
    y = np.arange(30) % 2
    np.savez(tmp_path / "t.npz", x_train=x_junk, y_train=y, x_test=x_junk[:10], y_test=y[:10],
             lengths_train=lengths, lengths_test=lengths[:10])
    ds = load_dataset(str(tmp_path / "t.npz"), tokens=True)
    assert ds.vocab_size == 9                                 # the junk is gone
    np.testing.assert_array_equal(ds.x_test[1, :lengths[1]], x[1, :lengths[1]])
    assert (ds.x_test[1, lengths[1]:] == 0).all()


@pytest.mark.slow
def test_train_evaluate_and_experiment_ignore_padding(tmp_path, capsys):
    write(tmp_path / "zero.npz", pad_value=0.0)
    write(tmp_path / "junk.npz", pad_value=-7.0)
    tiny = ["--d-model", "4", "--layers", "1", "--state-dim", "4", "--epochs", "1", "--quiet", "--batch-size", "16"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "zero.npz"), "--out", str(run), *tiny]) == 0
    exp = tmp_path / "exp"
    assert main(["experiment", "--data", str(tmp_path / "junk.npz"), "--ranks", "2", "--seeds", "1",
                 "--out", str(exp), *tiny]) == 0
    pre = json.loads((exp / "s4d" / "seed0" / "original" / "summary.json").read_text())
    own = json.loads((run / "summary.json").read_text())
    for key in ("best_val_accuracy", "best_val_loss", "test_accuracy", "test_loss"):
        assert pre[key] == own[key], key                    # the same training, padding aside
    comp = json.loads((exp / "s4d" / "seed0" / "r2" / "bt-compressed" / "summary.json").read_text())
    assert comp["test_accuracy_before"] == own["test_accuracy"]
    capsys.readouterr()
    assert main(["evaluate", str(exp / "s4d" / "seed0" / "original"), "--data", str(tmp_path / "zero.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(own["test_loss"], rel=1e-12)
