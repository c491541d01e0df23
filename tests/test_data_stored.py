"""StoredSequences (inputs converted per batch) and the training loop's batching over them."""
import dataclasses

import numpy as np
import pytest
import torch
from file_formats import digit_images, write_mnist

from ssmcompress.data import StoredSequences, load_dataset
from ssmcompress.nn import SequenceModel
from ssmcompress.train import TrainConfig, evaluate, train


def squares(rows):
    return (rows[:, None].astype(np.float32) ** 2) * np.ones((1, 3), np.float32)


def test_indexing_follows_numpy():
    s = StoredSequences(squares, 10, (3,), np.float32)
    ref = squares(np.arange(10))
    assert len(s) == 10 and s.shape == (10, 3) and s.ndim == 2
    np.testing.assert_array_equal(s[3], ref[3])
    np.testing.assert_array_equal(s[-1], ref[-1])
    np.testing.assert_array_equal(s[2:9:3], ref[2:9:3])
    np.testing.assert_array_equal(s[np.array([4, -2, 4])], ref[[4, -2, 4]])
    mask = np.arange(10) % 3 == 0
    np.testing.assert_array_equal(s[mask], ref[mask])
    assert s[np.array([], dtype=np.int64)].shape == (0, 3)
    sub = s.subset(np.array([9, 1, 5]))
    np.testing.assert_array_equal(np.asarray(sub), ref[[9, 1, 5]])
    np.testing.assert_array_equal(sub.subset([2, 0])[0:2], ref[[5, 9]])
    for bad in (np.array([10]), np.array([-11]), np.array([0.5]), np.ones(3, bool)):
        with pytest.raises(IndexError):
            s[bad]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(2)
    y_tr, y_te = np.arange(150) % 10, np.arange(40) % 10
    write_mnist(d, digit_images(y_tr, rng), y_tr, digit_images(y_te, rng), y_te)
    return d


def test_training_on_stored_data_equals_training_on_the_float_arrays(mnist_dir, tmp_path):
    stored = load_dataset(f"mnist:{mnist_dir}")
    dense = dataclasses.replace(stored, **{f"x_{s}": np.asarray(getattr(stored, f"x_{s}"))
                                           for s in ("train", "val", "test")})
    assert isinstance(stored.x_train, StoredSequences) and isinstance(dense.x_train, np.ndarray)
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, device="cpu")
    results = []
    for name, data in (("stored", stored), ("dense", dense)):
        torch.manual_seed(0)
        model = SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4)
        summary = train(model, data, cfg, tmp_path / name, progress=False)
        results.append((summary, model.state_dict()))
    (s1, w1), (s2, w2) = results
    assert s1["test_accuracy"] == s2["test_accuracy"] and s1["best_val_loss"] == s2["best_val_loss"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=0)
    model = SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4)
    a = evaluate(model, *stored.split("test"), batch_size=7)
    b = evaluate(model, torch.as_tensor(dense.x_test), torch.as_tensor(dense.y_test), batch_size=40)
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
