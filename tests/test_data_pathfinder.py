"""lra-pathfinder loader on PNG images and text metadata in LRA's release layout."""
import shutil

import numpy as np
import pytest
from file_formats import data_error, missing_file_error, write_pathfinder

from ssmcompress.data import DataError, StoredSequences, load_dataset


@pytest.fixture(scope="module")
def pathfinder(tmp_path_factory):
    top = tmp_path_factory.mktemp("pathfinder32")
    root = top / "curv_contour_length_14"
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(41, 32, 32), dtype=np.uint8)
    labels = np.arange(41) % 2
    write_pathfinder(root, images, labels, per_meta=10, empty=(17,))
    return top, root, images, labels


def test_pixels_scaled_and_the_empty_image_left_out(pathfinder):
    top, root, images, labels = pathfinder
    ds = load_dataset(f"lra-pathfinder:{root}")
    assert ds.sizes() == {"train": 32, "val": 4, "test": 4}
    assert ds.seq_len == 1024 and ds.n_classes == 2 and ds.info["empty_images_skipped"] == 1
    assert isinstance(ds.x_test, StoredSequences)
    keep = np.array([i for i in range(41) if i != 17])        # files in metadata order, empty one dropped
    for split in ("train", "val", "test"):
        x, y, _ = ds.split(split)
        x = np.asarray(x)
        src = keep[getattr(ds, f"x_{split}").rows]
        np.testing.assert_allclose(x[:, :, 0], (images[src].reshape(len(src), -1) / 255.0 - 0.5) / 0.5, atol=1e-6)
        np.testing.assert_array_equal(y, labels[src])
    # the pathfinder32 folder with the default difficulty is the same data
    same = load_dataset(f"lra-pathfinder:{top}")
    np.testing.assert_array_equal(np.asarray(same.x_val), np.asarray(ds.x_val))



def test_bad_layout_is_data_error(pathfinder, tmp_path):
    top, root, images, labels = pathfinder
    msg = data_error(f"lra-pathfinder:{top}", difficulty="curv_baseline")
    assert "metadata" in msg and "missing" in msg
    assert "difficulty" in data_error(f"lra-pathfinder:{top}", difficulty="easy")
    d = tmp_path / "p"
    msg = missing_file_error(root, d, "lra-pathfinder", "imgs/2/sample_3.png")
    assert "sample_3.png" in msg and "2.npy line 4" in msg
    shutil.copy(root / "imgs" / "2" / "sample_3.png", d / "imgs" / "2" / "sample_3.png")
    with open(d / "metadata" / "4.npy", "a") as f:
        f.write("imgs/4 sample_1.png 41\n")
    msg = data_error(f"lra-pathfinder:{d}")
    assert "4.npy line 2" in msg and "LABEL" in msg


def test_a_damaged_image_is_reported_when_its_batch_is_read(pathfinder, tmp_path):
    _, root, _, _ = pathfinder
    d = tmp_path / "p"
    shutil.copytree(root, d)
    (d / "imgs" / "1" / "sample_0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = load_dataset(f"lra-pathfinder:{d}")
    with pytest.raises(DataError) as e:
        np.asarray(ds.x_train), np.asarray(ds.x_val), np.asarray(ds.x_test)
    assert "sample_0.png" in str(e.value) and "PNG" in str(e.value)
    from PIL import Image
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(d / "imgs" / "1" / "sample_0.png")
    ds = load_dataset(f"lra-pathfinder:{d}")
    with pytest.raises(DataError) as e:
        np.asarray(ds.x_train), np.asarray(ds.x_val), np.asarray(ds.x_test)
    assert "16x16" in str(e.value) and "32x32" in str(e.value)
