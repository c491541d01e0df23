"""cifar10 / lra-image loaders on CIFAR-10 binary records written in the published format."""
import shutil

import numpy as np
import pytest
from file_formats import cli_error, data_error, missing_file_error, write_cifar

from ssmcompress.data import StoredSequences, load_dataset


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar-10-batches-bin")
    written = write_cifar(d, per_file=20, rng=np.random.default_rng(0), test=30)
    return d, written


def tf_gray(images):
    """tf.image.rgb_to_grayscale on uint8: float32 pixels / 255, weighted sum, * 255.5, truncated."""
    f = images.astype(np.float32) / np.float32(255)
    g = (f[..., 0] * np.float32(0.2989) + f[..., 1] * np.float32(0.5870) + f[..., 2] * np.float32(0.1140))
    return np.floor(g * np.float32(255.5)).astype(np.int64)


def test_grayscale_sequences_are_lra_gray_pixels_row_by_row(cifar):
    d, written = cifar
    ds = load_dataset(f"cifar10:{d}")
    assert ds.sizes() == {"train": 90, "val": 10, "test": 30}
    assert ds.seq_len == 1024 and ds.d_input == 1 and ds.n_classes == 10
    assert isinstance(ds.x_test, StoredSequences)
    labels, images = written["test_batch.bin"]
    gray = tf_gray(images)                                 # (30, 32, 32)
    luma = images.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    assert np.abs(gray - luma).max() <= 1.0                # the standard luma, truncated
    train_images = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    train_gray = tf_gray(train_images).reshape(100, 1024).astype(np.float64)[ds.x_train.rows]
    mean, std = train_gray.mean(), train_gray.std()
    np.testing.assert_allclose(ds.normalization["mean"], [mean], rtol=1e-12)
    x = np.asarray(ds.x_test)[:, :, 0]
    np.testing.assert_allclose(x, (gray.reshape(30, 1024) - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, labels)
    all_labels = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.y_val, all_labels[ds.x_val.rows])
    # rows of the five files, fetched across file boundaries in any order
    by_row = np.argsort(ds.x_train.rows)
    pick = by_row[[89, 0, 45, 20, 21, 0]]                  # positions whose rows lie in different files
    rows = ds.x_train.rows[pick]
    assert len(set(rows // 20)) >= 3
    expected = (tf_gray(train_images).reshape(100, 1024)[rows] - mean) / std
    np.testing.assert_allclose(ds.x_train[pick][:, :, 0], expected, rtol=1e-5, atol=1e-5)
    lra = load_dataset(f"lra-image:{d}")
    assert lra.name == "lra-image"
    np.testing.assert_array_equal(np.asarray(lra.x_test), np.asarray(ds.x_test))


def test_three_channels_are_the_rgb_planes(cifar):
    d, written = cifar
    ds = load_dataset(f"cifar10:{d}", channels=3)
    assert ds.d_input == 3 and ds.x_test.shape == (30, 1024, 3)
    _, images = written["test_batch.bin"]
    train_images = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    rgb = train_images.reshape(100, 1024, 3).astype(np.float64)[ds.x_train.rows]
    mean, std = rgb.mean(axis=(0, 1)), rgb.std(axis=(0, 1))
    x = np.asarray(ds.x_test)
    np.testing.assert_allclose(x, (images.reshape(30, 1024, 3) - mean) / std, rtol=1e-5, atol=1e-5)



def test_bad_files_are_one_sentence_naming_the_file(cifar, tmp_path, capsys):
    src, _ = cifar
    d = tmp_path / "c"
    msg = missing_file_error(src, d, "cifar10", "test_batch.bin")
    assert "test_batch.bin" in msg and "missing" in msg
    shutil.copy(src / "test_batch.bin", d / "test_batch.bin")
    data = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(data[:-5])
    msg = data_error(f"cifar10:{d}")
    assert "data_batch_3.bin" in msg and "3073" in msg
    rec = bytearray(data)
    rec[0] = 57                                            # a CIFAR-100 coarse label
    (d / "data_batch_3.bin").write_bytes(bytes(rec))
    msg = data_error(f"cifar10:{d}")
    assert "data_batch_3.bin" in msg and "label byte" in msg
    assert "channels" in data_error(f"cifar10:{src}", channels=2)
    assert "does not exist" in data_error(f"cifar10:{tmp_path / 'none'}")
    assert "data_batch_1.bin" in data_error(f"lra-image:{tmp_path}")
    assert "data_batch_3.bin" in cli_error(capsys, "train", "--data", f"cifar10:{d}", "--out", tmp_path / "run")
