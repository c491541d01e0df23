"""mnist / pmnist loaders on IDX files written in the published format (plain and gzipped)."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
from file_formats import cli_error, data_error, missing_file_error, digit_images, idx_bytes, write_mnist

from ssmcompress.cli import main
from ssmcompress.data import StoredSequences, load_dataset

TINY = ["--d-model", "4", "--layers", "1", "--state-dim", "4", "--batch-size", "64", "--quiet", "--epochs", "1"]


def make_raw(n_train=200, n_test=50, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    y_tr = np.arange(n_train) % classes
    y_te = np.arange(n_test) % classes
    return digit_images(y_tr, rng), y_tr.astype(np.uint8), digit_images(y_te, rng), y_te.astype(np.uint8)


@pytest.fixture(scope="module")
def raw():
    return make_raw()


@pytest.fixture(scope="module")
def plain_dir(raw, tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist") / "raw"
    write_mnist(d, *raw)
    return d


def test_mnist_sequences_are_standardised_pixels_from_a_memory_map(raw, plain_dir):
    x_tr_raw, y_tr_raw, x_te_raw, y_te_raw = raw
    ds = load_dataset(f"mnist:{plain_dir}")
    assert ds.sizes() == {"train": 180, "val": 20, "test": 50}
    assert ds.seq_len == 784 and ds.d_input == 1 and ds.n_classes == 10 and ds.info["memory_mapped"]
    assert isinstance(ds.x_train, StoredSequences) and ds.x_train.shape == (180, 784, 1)
    assert (np.bincount(ds.y_val) == 2).all()          # stratified 10 %
    # train and val together are exactly the training file; statistics from the train rows only
    flat = x_tr_raw.reshape(200, 784).astype(np.float64)
    rows = ds.x_train.rows
    mean, std = flat[rows].mean(), flat[rows].std()
    assert ds.normalization["mean"][0] == pytest.approx(mean, rel=1e-12)
    assert ds.normalization["std"][0] == pytest.approx(std, rel=1e-12)
    assert sorted(np.concatenate([ds.x_train.rows, ds.x_val.rows]).tolist()) == list(range(200))
    np.testing.assert_array_equal(ds.y_train, y_tr_raw[rows])
    x = np.asarray(ds.x_test)
    assert x.dtype == np.float32 and x.shape == (50, 784, 1)
    np.testing.assert_allclose(x[:, :, 0], (x_te_raw.reshape(50, 784) - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, y_te_raw)
    # a batch of rows in any order converts only those rows
    pick = np.array([7, 3, 3, 0])
    np.testing.assert_array_equal(ds.x_test[pick], x[pick])


def test_gzipped_files_give_the_same_data(raw, plain_dir, tmp_path):
    write_mnist(tmp_path, *raw, gz=True)
    assert sorted(os.listdir(tmp_path))[0].endswith(".gz")
    a, b = load_dataset(f"mnist:{plain_dir}"), load_dataset(f"mnist:{tmp_path}")
    assert not b.info["memory_mapped"]
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(a.split(s)[0]), np.asarray(b.split(s)[0]))
        np.testing.assert_array_equal(a.split(s)[1], b.split(s)[1])


def test_pmnist_is_mnist_in_the_documented_fixed_order(plain_dir):
    a = load_dataset(f"mnist:{plain_dir}")
    p = load_dataset(f"pmnist:{plain_dir}")
    perm = np.random.default_rng(0).permutation(784)
    np.testing.assert_array_equal(np.asarray(p.x_test), np.asarray(a.x_test)[:, perm])
    assert p.info["permutation"] == "numpy.random.default_rng(0).permutation(784)"
    q = load_dataset(f"pmnist:{plain_dir}", permutation_seed=5)
    perm5 = np.random.default_rng(5).permutation(784)
    np.testing.assert_array_equal(np.asarray(q.x_val), np.asarray(a.x_val)[:, perm5])


def test_unit_scale_is_pixels_over_255(raw, plain_dir):
    ds = load_dataset(f"mnist:{plain_dir}", scale="unit")
    np.testing.assert_allclose(np.asarray(ds.x_test)[:, :, 0], raw[2].reshape(50, 784) / 255.0, rtol=1e-6)
    assert "scale" in data_error(f"mnist:{plain_dir}", scale="minmax")



def test_missing_truncated_and_foreign_files_name_the_file(raw, plain_dir, tmp_path):
    d = tmp_path / "m"
    msg = missing_file_error(plain_dir, d, "mnist", "t10k-labels-idx1-ubyte")
    assert "t10k-labels-idx1-ubyte" in msg and "missing" in msg

    shutil.rmtree(d)
    shutil.copytree(plain_dir, d)
    data = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(data[:-100])
    msg = data_error(f"mnist:{d}")
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg

    (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(raw[1]))  # a label file where images belong
    msg = data_error(f"mnist:{d}")
    assert "train-images-idx3-ubyte" in msg and "0x00000801" in msg and "0x00000803" in msg

    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    assert "too short" in data_error(f"mnist:{d}")

    shutil.rmtree(d)
    write_mnist(d, *raw, gz=True)
    data = (d / "t10k-images-idx3-ubyte.gz").read_bytes()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    msg = data_error(f"mnist:{d}")
    assert "t10k-images-idx3-ubyte.gz" in msg and "decompressed" in msg

    shutil.rmtree(d)
    write_mnist(d, raw[0], raw[1][:-1], raw[2], raw[3])
    msg = data_error(f"mnist:{d}")
    assert "200 images" in msg and "199 labels" in msg


def test_wrong_folder_spec_and_options(plain_dir, tmp_path):
    assert "does not exist" in data_error(f"mnist:{tmp_path / 'nope'}")
    assert "train-images-idx3-ubyte" in data_error(f"mnist:{tmp_path}")   # an empty folder
    assert "mnist:DIR" in data_error("mnist")
    assert "names no folder" in data_error("mnist:")
    assert "Unknown data source 'mnsit'" in data_error(f"mnsit:{plain_dir}")
    assert "permutation_seed" in data_error(f"mnist:{plain_dir}", permutation_seed=1)
    assert "permutation_seed" in data_error(f"pmnist:{plain_dir}", permutation_seed=-1)


def test_cli_trains_and_evaluates_through_the_loader(plain_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", f"mnist:{plain_dir}", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert res["n"] == 50 and res["accuracy"] == pytest.approx(summary["test_accuracy"])
    # a missing file is one sentence and exit code 2 on the command line
    broken = tmp_path / "broken"
    shutil.copytree(plain_dir, broken)
    os.remove(broken / "train-labels-idx1-ubyte")
    assert "train-labels-idx1-ubyte" in cli_error(capsys, "train", "--data", f"mnist:{broken}", "--out",
                                                  tmp_path / "r2", *TINY)


def test_more_classes_than_the_model_is_data_error(tmp_path, capsys):
    two = make_raw(n_train=60, n_test=20, classes=2)
    write_mnist(tmp_path / "two", *two)
    out = tmp_path / "run2"
    assert main(["train", "--data", f"mnist:{tmp_path / 'two'}", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    ten = make_raw(n_train=60, n_test=20, classes=10)
    write_mnist(tmp_path / "ten", *ten)
    err = cli_error(capsys, "evaluate", out, "--data", f"mnist:{tmp_path / 'ten'}")
    assert "predicts 2 classes" in err and "has 10" in err
    err = cli_error(capsys, "train", "--data", f"mnist:{tmp_path / 'ten'}", "--init-from", out, "--force",
                    "--out", tmp_path / "r3", *TINY)
    assert "predicts 2 classes" in err and not (tmp_path / "r3").exists()
    # a model with more classes than the data is fine
    assert main(["evaluate", str(out), "--data", f"mnist:{tmp_path / 'two'}"]) == 0


def test_gz_header_of_a_non_gzip_file(raw, tmp_path):
    write_mnist(tmp_path, *raw)
    os.rename(tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-images-idx3-ubyte.gz")
    msg = data_error(f"mnist:{tmp_path}")
    assert "t10k-images-idx3-ubyte.gz" in msg
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(raw[2]))
    assert load_dataset(f"mnist:{tmp_path}").sizes()["test"] == 50
