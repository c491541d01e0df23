"""Built-in image datasets (smnist, digits, mnist1d) and the load_dataset entry point."""
import numpy as np
import pytest

from ssmcompress.data import DataError, Dataset, builtin_names, load_dataset


def test_builtin_names_have_descriptions():
    names = builtin_names()
    assert set(names) == {"smnist", "digits", "mnist1d", "listops"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


@pytest.mark.parametrize("name, length, sizes", [
    ("digits", 64, (1294, 144, 359)),
    ("smnist", 784, (3600, 400, 1000)),
    ("mnist1d", 40, (3600, 400, 1000)),
])
def test_image_shapes_dtypes_and_sizes(name, length, sizes):
    ds = load_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name
    assert (ds.task, ds.n_classes, ds.d_input, ds.seq_len) == ("classification", 10, 1, length)
    assert ds.vocab_size is None and ds.pad_id is None and not ds.is_tokens
    assert tuple(ds.sizes().values()) == sizes
    for split, n in zip(("train", "val", "test"), sizes):
        x, y, lengths = ds.split(split)
        assert x.shape == (n, length, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert lengths is None
        assert np.isfinite(x).all() and y.min() >= 0 and y.max() <= 9
    line = ds.describe()
    assert "\n" not in line and name in line and str(sizes[0]) in line


def _class_counts(y):
    return np.bincount(y, minlength=10)


def test_smnist_split_is_stratified():
    ds = load_dataset("smnist")  # 500 per class
    assert (_class_counts(ds.y_test) == 100).all()
    assert (_class_counts(ds.y_val) == 40).all()
    assert (_class_counts(ds.y_train) == 360).all()


def test_digits_split_is_stratified_and_a_partition():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits")
    total = np.bincount(raw.target)
    for split, frac in (("test", 359 / 1797), ("val", 144 / 1797)):
        counts = _class_counts(ds.split(split)[1])
        assert np.all(np.abs(counts - frac * total) <= 1.0)
    # Undo the standardisation: the three splits together are exactly the raw data.
    mean, std = ds.normalization["mean"], ds.normalization["std"]
    rows = [np.rint(ds.split(s)[0][:, :, 0] * std + mean) for s in ("train", "val", "test")]
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    got = np.column_stack([np.concatenate(rows), labels])
    want = np.column_stack([raw.data, raw.target])
    assert np.array_equal(np.unique(got, axis=0, return_counts=True)[1],
                          np.unique(want, axis=0, return_counts=True)[1])
    assert np.array_equal(np.unique(got, axis=0), np.unique(want, axis=0))


def test_normalisation_uses_train_statistics_only():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    mean, std = ds.normalization["mean"], ds.normalization["std"]
    assert mean.shape == (1,) and std.shape == (1,)
    # recover the raw training pixels and recompute their statistics independently
    raw_train = ds.x_train.astype(np.float64) * std + mean
    assert np.allclose(raw_train, np.rint(raw_train), atol=1e-3)
    assert np.isclose(raw_train.mean(), mean[0]) and np.isclose(raw_train.std(), std[0])
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-5
    # the test split is scaled with the train statistics, not its own
    raw_test = ds.x_test.astype(np.float64) * std + mean
    assert np.allclose(raw_test, np.rint(raw_test), atol=1e-3)
    assert raw_test.min() >= -1e-3 and raw_test.max() <= 16 + 1e-3
    assert abs(ds.x_test.mean()) > 1e-4  # its own statistics differ from the train ones
    all_pixels = load_digits().data
    assert not np.isclose(mean[0], all_pixels.mean(), rtol=0, atol=1e-9)


def test_splits_do_not_depend_on_training_seed():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=123)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s)[0], b.split(s)[0])
        assert np.array_equal(a.split(s)[1], b.split(s)[1])
    c = load_dataset("digits", data_seed=5)
    assert not np.array_equal(a.y_test, c.y_test)


def test_test_split_does_not_depend_on_val_fraction():
    a = load_dataset("digits", val_fraction=0.1)
    b = load_dataset("digits", val_fraction=0.25)
    assert np.array_equal(a.y_test, b.y_test)
    assert b.sizes() == {"train": 1078, "val": 360, "test": 359}


def test_mnist1d_generates_offline_and_keeps_global_rng():
    np.random.seed(7)
    state = np.random.get_state()
    ds = load_dataset("mnist1d", n_samples=600)  # fresh size: generated, not cached
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    assert ds.sizes() == {"train": 432, "val": 48, "test": 120}
    assert ds.x_train.shape == (432, 40, 1)


def test_mnist1d_rejects_bad_n_samples():
    with pytest.raises(DataError, match="n_samples"):
        load_dataset("mnist1d", n_samples=3)


def test_split_method_rejects_unknown_split():
    ds = load_dataset("digits")
    with pytest.raises(DataError, match="Unknown split 'dev'"):
        ds.split("dev")


def test_unknown_name_names_value_and_valid_names():
    with pytest.raises(DataError) as e:
        load_dataset("cifar")
    msg = str(e.value)
    assert "'cifar'" in msg and all(n in msg for n in ("smnist", "digits", "mnist1d", "listops"))
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("name, option", [("digits", "n_samples"), ("smnist", "max_depth"),
                                          ("mnist1d", "foo"), ("listops", "n_samples")])
def test_unknown_option_is_an_error(name, option):
    with pytest.raises(DataError, match=f"Unknown .*option '{option}'"):
        load_dataset(name, **{option: 1})


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "x"])
def test_bad_val_fraction(value):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=value)


@pytest.mark.parametrize("kwargs, word", [({"seed": "a"}, "seed"), ({"data_seed": -1}, "data_seed"),
                                          ({"data_seed": 1.5}, "data_seed")])
def test_bad_seeds(kwargs, word):
    with pytest.raises(DataError, match=word):
        load_dataset("digits", **kwargs)


def test_not_a_name_or_path():
    with pytest.raises(DataError, match="built-in name or a path"):
        load_dataset(42)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)


def test_model_shape_is_what_the_data_fixes():
    digits = load_dataset("digits")
    assert digits.model_shape() == dict(d_input=1, d_output=10, task="classification", l_max=64, vocab_size=None)
    ops = load_dataset("listops")
    shape = ops.model_shape()
    assert shape["vocab_size"] == ops.vocab_size and shape["d_input"] == 1 and shape["l_max"] == ops.seq_len
