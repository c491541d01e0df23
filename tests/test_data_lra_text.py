"""lra-text loader: byte-level IMDB from the aclImdb folder layout."""
import os

import numpy as np
import pytest
from file_formats import data_error, write_imdb

from ssmcompress.data import load_dataset

REVIEWS = {
    "train": {"pos": [f"A fine film number {i}, très bien! <br /><br />Loved it." + "x" * i for i in range(20)],
              "neg": [f"Dull {i}." * (1 + i % 3) for i in range(20)]},
    "test": {"pos": ["Great.", "Superb — five stars " * 3, "ok"],
             "neg": ["Bad.", "Awful " * 50, "meh"]},
}


@pytest.fixture(scope="module")
def imdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "aclImdb"
    write_imdb(root, REVIEWS)
    os.makedirs(root / "train" / "unsup")                  # present in the real folder, ignored
    (root / "imdb.vocab").write_text("the\n")
    return root


def test_bytes_plus_one_with_pad_zero(imdb):
    ds = load_dataset(f"lra-text:{imdb}")
    assert ds.sizes() == {"train": 36, "val": 4, "test": 6}
    assert ds.vocab_size == 257 and ds.pad_id == 0 and ds.seq_len == 4096 and ds.n_classes == 2
    assert (np.bincount(ds.y_val) == 2).all()
    x, y, lengths = ds.split("test")
    x = np.asarray(x)
    texts = REVIEWS["test"]["neg"] + REVIEWS["test"]["pos"]   # neg = 0 first, files in name order
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    for k, text in enumerate(texts):
        b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        assert lengths[k] == len(b)
        np.testing.assert_array_equal(x[k, :len(b)], b + 1)
        assert (x[k, len(b):] == 0).all()
    # the parent of aclImdb works too, and max_length cuts
    short = load_dataset(f"lra-text:{imdb.parent}", max_length=5)
    xs, _, ls = short.split("test")
    assert xs.shape == (6, 5) and ls.max() == 5 and ls.min() == 2          # "ok", "meh" are short
    np.testing.assert_array_equal(np.asarray(xs)[1], np.frombuffer(b"Awful", np.uint8) + 1)
    assert short.info["truncated_sequences"] == sum(len(t.encode()) > 5 for s in REVIEWS.values()
                                                    for c in s.values() for t in c)


def test_train_and_val_are_the_training_reviews(imdb):
    ds = load_dataset(f"lra-text:{imdb}")
    texts = {t.encode("utf-8") for c in REVIEWS["train"].values() for t in c}
    seen = set()
    for split in ("train", "val"):
        x, _, lengths = ds.split(split)
        for row, n in zip(np.asarray(x), lengths):
            seen.add(bytes((row[:n] - 1).astype(np.uint8)))
    assert seen == texts



def test_bad_layout_is_data_error(imdb, tmp_path):
    write_imdb(tmp_path / "a", {"train": REVIEWS["train"], "test": {"pos": ["x"]}})
    msg = data_error(f"lra-text:{tmp_path / 'a'}")
    assert os.path.join("test", "neg") in msg and "missing" in msg
    write_imdb(tmp_path / "b", {"train": REVIEWS["train"], "test": {"pos": ["x"], "neg": [""]}})
    msg = data_error(f"lra-text:{tmp_path / 'b'}")
    assert "0_2.txt" in msg and "empty" in msg
    assert "max_length" in data_error(f"lra-text:{imdb}", max_length="long")
