"""A user's .npz: loading, validation messages (one sentence each), property-based shapes."""
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmcompress.data import DataError, load_dataset


def arrays(n_train=40, n_test=10, length=12, features=2, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.normal(3.0, 2.0, (n_train, length, features)),
        y_train=np.arange(n_train) % n_classes,
        x_test=rng.normal(0.0, 1.0, (n_test, length, features)),
        y_test=np.arange(n_test) % n_classes,
    )


def save(tmp_path, name="data.npz", **a):
    path = os.path.join(tmp_path, name)
    np.savez(path, **a)
    return path


def error(path, **options):
    with pytest.raises(DataError) as e:
        load_dataset(path, **options)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


# ---------------------------------------------------------------- good files

def test_real_valued_npz_carves_stratified_val_and_normalises_with_train(tmp_path):
    a = arrays(n_train=60, n_classes=3)
    ds = load_dataset(save(tmp_path, **a), val_fraction=0.2)
    assert ds.name == "data" and ds.task == "classification" and ds.n_classes == 3
    assert ds.sizes() == {"train": 48, "val": 12, "test": 10}
    assert (np.bincount(ds.y_val) == 4).all() and (np.bincount(ds.y_train) == 16).all()
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (48, 12, 2) and ds.d_input == 2
    assert ds.seq_len == 12 and ds.len_train is None and ds.vocab_size is None
    # statistics: per feature, from the 48 training samples only
    mean, std = ds.normalization["mean"], ds.normalization["std"]
    assert mean.shape == (2,) and std.shape == (2,)
    x_all = a["x_train"]
    raw_train = ds.x_train.astype(np.float64) * std + mean
    # the carved training rows are raw rows
    idx = [int(np.flatnonzero(np.all(np.isclose(x_all, r, atol=1e-4), axis=(1, 2)))[0]) for r in raw_train]
    assert len(set(idx)) == 48
    assert np.allclose(mean, x_all[idx].mean(axis=(0, 1))) and np.allclose(std, x_all[idx].std(axis=(0, 1)))
    assert not np.allclose(mean, x_all.mean(axis=(0, 1)), rtol=0, atol=1e-12)
    assert np.allclose(ds.x_test, (a["x_test"] - mean) / std, atol=1e-5)


def test_explicit_val_and_2d_x_and_integer_x(tmp_path):
    a = dict(x_train=np.arange(50).reshape(10, 5), y_train=np.array([0, 1] * 5),
             x_val=np.ones((3, 5), dtype=np.int32), y_val=np.array([1, 0, 1]),
             x_test=np.zeros((4, 5), dtype=np.uint8), y_test=np.array([0.0, 1.0, 1.0, 0.0]))
    ds = load_dataset(save(tmp_path, **a))
    assert ds.sizes() == {"train": 10, "val": 3, "test": 4}
    assert ds.x_train.shape == (10, 5, 1) and ds.x_train.dtype == np.float32
    assert ds.y_test.dtype == np.int64 and ds.y_test.tolist() == [0, 1, 1, 0]
    assert np.isclose(ds.normalization["mean"][0], 24.5)


def test_tokens_option(tmp_path):
    rng = np.random.default_rng(0)
    a = dict(x_train=rng.integers(0, 7, (20, 9)), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 9, (5, 9)).astype(np.float64), y_test=np.arange(5) % 2)
    path = save(tmp_path, **a)
    ds = load_dataset(path, tokens=True)
    assert ds.x_train.dtype == np.int64 and ds.x_train.shape == (18, 9)
    assert ds.vocab_size == int(max(a["x_train"].max(), a["x_test"].max())) + 1
    assert ds.pad_id == 0 and ds.d_input is None and ds.normalization is None
    assert load_dataset(path).x_train.dtype == np.float32  # without tokens=True: real-valued


def test_regression_only_when_asked(tmp_path):
    a = arrays()
    a["y_train"] = np.linspace(0, 1, 40)
    a["y_test"] = np.linspace(0, 1, 10)
    path = save(tmp_path, **a)
    assert "non-integer labels" in error(path)
    ds = load_dataset(path, task="regression")
    assert ds.task == "regression" and ds.n_classes is None and ds.y_train.dtype == np.float32
    assert ds.sizes() == {"train": 36, "val": 4, "test": 10}
    assert "regression" in ds.describe()


def test_val_carving_follows_data_seed_not_seed(tmp_path):
    path = save(tmp_path, **arrays())
    a, b = load_dataset(path, seed=1), load_dataset(path, seed=2)
    assert np.array_equal(a.x_val, b.x_val)
    c = load_dataset(path, data_seed=3)
    assert not np.array_equal(a.x_val, c.x_val)


# ---------------------------------------------------------------- every error path

def test_missing_key(tmp_path):
    a = arrays()
    del a["y_test"]
    msg = error(save(tmp_path, **a))
    assert "'y_test'" in msg and "x_train, y_train, x_test, y_test" in msg


def test_val_half_given(tmp_path):
    a = arrays()
    a["x_val"] = a["x_test"]
    assert "'x_val' but no 'y_val'" in error(save(tmp_path, **a))


def test_object_array(tmp_path):
    a = arrays()
    a["y_train"] = np.array([[1], [2, 3]] + [[0]] * 38, dtype=object)
    msg = error(save(tmp_path, **a))
    assert "'y_train'" in msg and "Python objects" in msg


def test_text_file_is_not_npz(tmp_path):
    path = os.path.join(tmp_path, "data.npz")
    with open(path, "w") as f:
        f.write("x,y\n1,2\n")
    assert "not a valid .npz file" in error(path)


def test_damaged_zip(tmp_path):
    path = save(tmp_path, **arrays(n_train=400))
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    assert "read" in error(path)


def test_corrupt_member(tmp_path):
    path = os.path.join(tmp_path, "data.npz")
    with zipfile.ZipFile(path, "w") as z:
        for k in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(k + ".npy", b"garbage")
    assert "cannot be read" in error(path)


def test_single_npy(tmp_path):
    path = os.path.join(tmp_path, "x.npy")
    np.save(path, np.zeros(3))
    assert "single array" in error(path)


@pytest.mark.parametrize("shape", [(40,), (40, 12, 2, 1)])
def test_x_wrong_ndim(tmp_path, shape):
    a = arrays()
    a["x_train"] = np.zeros(shape)
    msg = error(save(tmp_path, **a))
    assert "x_train" in msg and "expected (samples, length) or (samples, length, features)" in msg


def test_tokens_need_2d(tmp_path):
    a = arrays()
    a["x_train"] = np.zeros((40, 12, 2), dtype=int)
    assert "(samples, length)" in error(save(tmp_path, **a), tokens=True)


def test_sample_count_mismatch(tmp_path):
    a = arrays()
    a["y_test"] = a["y_test"][:7]
    msg = error(save(tmp_path, **a))
    assert "x_test has 10 samples but y_test has 7" in msg


def test_different_length_between_splits(tmp_path):
    a = arrays()
    a["x_test"] = np.zeros((10, 11, 2))
    assert "x_test has sequences of length 11 but x_train has length 12" in error(save(tmp_path, **a))


def test_different_feature_count_between_splits(tmp_path):
    a = arrays()
    a["x_val"], a["y_val"] = np.zeros((5, 12, 3)), np.zeros(5, dtype=int)
    assert "x_val has 3 features per step but x_train has 2" in error(save(tmp_path, **a))


def test_nan_and_inf(tmp_path):
    a = arrays()
    a["x_test"][0, 0, 0] = np.nan
    a["x_test"][1, 2, 1] = np.inf
    a["x_test"][2, 2, 1] = -np.inf
    assert "x_test contains 3 NaN or infinite values" in error(save(tmp_path, **a))
    b = arrays()
    b["y_train"] = b["y_train"].astype(float)
    b["y_train"][4] = np.nan
    assert "y_train contains 1 NaN or infinite value;" in error(save(tmp_path, "b.npz", **b))


def test_regression_target_count_mismatch(tmp_path):
    a = arrays()
    a["y_train"] = np.zeros((40, 2)) + 0.5
    a["y_test"] = np.zeros(10) + 0.5
    msg = error(save(tmp_path, **a), task="regression")
    assert "y_test has shape (10,) but y_train has shape (40, 2)" in msg


def test_non_integer_labels(tmp_path):
    a = arrays()
    a["y_train"] = a["y_train"] + 0.5
    msg = error(save(tmp_path, **a))
    assert "y_train holds non-integer labels" in msg and "task='regression'" in msg


def test_negative_labels(tmp_path):
    a = arrays()
    a["y_test"] = a["y_test"] - 1
    assert "y_test holds negative labels (smallest -1)" in error(save(tmp_path, **a))


def test_empty_split(tmp_path):
    a = arrays()
    a["x_test"], a["y_test"] = np.zeros((0, 12, 2)), np.zeros(0, dtype=int)
    assert "x_test is empty (0 samples)" in error(save(tmp_path, **a))


def test_zero_length(tmp_path):
    a = arrays()
    a["x_train"] = np.zeros((40, 0, 2))
    assert "length and a feature count of at least 1" in error(save(tmp_path, **a))


def test_labels_must_be_1d(tmp_path):
    a = arrays()
    a["y_train"] = np.zeros((40, 2), dtype=int)
    assert "class labels must have shape (samples,)" in error(save(tmp_path, **a))


def test_single_class(tmp_path):
    a = arrays()
    a["y_train"] = np.zeros(40, dtype=int)
    assert "single class" in error(save(tmp_path, **a))


def test_string_and_complex_arrays(tmp_path):
    a = arrays()
    a["y_train"] = np.array(["cat"] * 40)
    assert "not numbers" in error(save(tmp_path, **a))
    b = arrays()
    b["x_train"] = b["x_train"] * 1j
    assert "complex" in error(save(tmp_path, "b.npz", **b))


def test_bad_tokens(tmp_path):
    a = arrays()
    a["x_train"] = np.full((40, 12), 1.5)
    a["x_test"] = np.zeros((10, 12))
    assert "non-integer values" in error(save(tmp_path, **a), tokens=True)
    a["x_train"] = np.full((40, 12), -2)
    assert "negative token ids" in error(save(tmp_path, "b.npz", **a), tokens=True)


def test_too_few_training_samples_to_carve_val(tmp_path):
    a = arrays(n_train=1)
    a["y_train"] = np.array([0.5])
    assert "Cannot split 1 sample" in error(save(tmp_path, **a), task="regression")


@pytest.mark.parametrize("options, words", [({"task": "ranking"}, "task must be"),
                                            ({"tokens": "yes"}, "tokens must be"),
                                            ({"max_depth": 3}, "Unknown option 'max_depth' for an .npz")])
def test_bad_npz_options(tmp_path, options, words):
    assert words in error(save(tmp_path, **arrays()), **options)


def test_missing_file_names_value_and_builtins(tmp_path):
    missing = os.path.join(tmp_path, "nope.npz")
    msg = error(missing)
    assert repr(missing) in msg and "smnist" in msg and "listops" in msg


# ---------------------------------------------------------------- property-based shapes

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_train=st.integers(2, 30), n_test=st.integers(1, 8), n_val=st.one_of(st.none(), st.integers(1, 5)),
       length=st.integers(1, 16), features=st.one_of(st.none(), st.integers(1, 4)),
       n_classes=st.integers(2, 5), seed=st.integers(0, 2**16), val_fraction=st.floats(0.05, 0.95))
def test_npz_shapes_roundtrip(tmp_path, n_train, n_test, n_val, length, features, n_classes, seed,
                              val_fraction):
    rng = np.random.default_rng(seed)
    tail = () if features is None else (features,)

    def x(n):
        return rng.normal(size=(n, length) + tail) * rng.uniform(0.1, 10)

    def y(n):
        lab = rng.integers(0, n_classes, n)
        lab[: min(2, n)] = [0, 1][: min(2, n)]
        return lab

    a = dict(x_train=x(n_train), y_train=y(n_train), x_test=x(n_test), y_test=y(n_test))
    if n_val is not None:
        a["x_val"], a["y_val"] = x(n_val), y(n_val)
    path = save(tmp_path, f"h{seed}.npz", **a)
    ds = load_dataset(path, val_fraction=val_fraction)
    f = features or 1
    sizes = ds.sizes()
    if n_val is None:
        assert sizes["train"] + sizes["val"] == n_train and 1 <= sizes["val"] <= n_train - 1
        assert sorted(np.concatenate([ds.y_train, ds.y_val]).tolist()) == sorted(a["y_train"].tolist())
    else:
        assert (sizes["train"], sizes["val"]) == (n_train, n_val)
    assert sizes["test"] == n_test
    for s in ("train", "val", "test"):
        xs, ys, lens = ds.split(s)
        assert xs.shape == (sizes[s], length, f) and xs.dtype == np.float32
        assert ys.shape == (sizes[s],) and ys.dtype == np.int64 and lens is None
        assert np.isfinite(xs).all()
    assert ds.d_input == f and ds.seq_len == length
    assert ds.n_classes == int(max(a["y_train"].max(), a["y_test"].max(),
                                   a["y_val"].max() if n_val else 0)) + 1
    # train statistics: standardised train has mean 0 per feature (std 1 unless constant)
    assert np.allclose(ds.x_train.astype(np.float64).mean(axis=(0, 1)), 0, atol=1e-4)
