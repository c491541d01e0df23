"""lra-listops loader on TSV files written as LRA's generator writes them."""

import numpy as np
import pytest
from file_formats import (cli_error, data_error, listops_lra_string, listops_plain_tokens, listops_value,
                          missing_file_error, write_listops, write_listops_tsv)

from ssmcompress.cli import main
from ssmcompress.data import LISTOPS_VOCAB, StoredSequences, load_dataset
from ssmcompress.data.listops import decode


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("listops-1000")
    trees = write_listops(d, np.random.default_rng(1), counts=(40, 10, 12))
    return d, trees


def test_lra_string_format_is_lra_s():
    # LRA's to_string of ((('[MAX', 2), 9), ']')
    assert listops_lra_string(["[MAX", 2, 9]) == "( ( ( [MAX 2 ) 9 ) ] )"


def test_tokens_drop_parentheses_and_keep_brackets(listops_dir):
    d, trees = listops_dir
    ds = load_dataset(f"lra-listops:{d}")
    assert ds.sizes() == {"train": 40, "val": 10, "test": 12}
    assert ds.vocab_size == 16 and ds.vocab == LISTOPS_VOCAB and ds.pad_id == 0 and ds.seq_len == 2000
    assert isinstance(ds.x_train, StoredSequences) and ds.x_train.shape == (40, 2000)
    for split in ("train", "val", "test"):
        x, y, lengths = ds.split(split)
        x = np.asarray(x)
        assert x.dtype == np.int64
        for k, tree in enumerate(trees[split]):
            tokens = listops_plain_tokens(tree)
            assert lengths[k] == len(tokens)
            assert decode(x[k], lengths[k]) == " ".join(tokens)
            assert (x[k, lengths[k]:] == 0).all()
            assert y[k] == listops_value(tree)


def test_max_length_cuts_as_lra_does(listops_dir):
    d, trees = listops_dir
    ds = load_dataset(f"lra-listops:{d}", max_length=6)
    x, _, lengths = ds.split("test")
    assert x.shape == (12, 6)
    for k, tree in enumerate(trees["test"]):
        tokens = listops_plain_tokens(tree)
        assert lengths[k] == min(6, len(tokens))
        assert decode(x[k]) == " ".join(tokens[:6])
    assert ds.info["truncated_sequences"] == sum(len(listops_plain_tokens(t)) > 6 for s in trees.values()
                                                 for t in s)



def test_bad_files_are_one_sentence_naming_file_and_line(listops_dir, tmp_path, capsys):
    src, _ = listops_dir
    d = tmp_path / "l"
    msg = missing_file_error(src, d, "lra-listops", "basic_val.tsv")
    assert "basic_val.tsv" in msg and "missing" in msg
    write_listops_tsv(d / "basic_val.tsv", [("( [MAX 2 ) 9 ) ]", 9)], header=None)
    msg = data_error(f"lra-listops:{d}")
    assert "basic_val.tsv" in msg and "Source<TAB>Target" in msg
    write_listops_tsv(d / "basic_val.tsv", [("( ( [MAX 2 ) 9 ) ] )", 9), ("( ( [MAX 2 ) 12 ) ] )", 9)])
    msg = data_error(f"lra-listops:{d}")
    assert "basic_val.tsv line 3" in msg and "vocabulary" in msg
    write_listops_tsv(d / "basic_val.tsv", [("( ( [MAXI 2 ) 9 ) ] )", 9)])
    assert "line 2" in data_error(f"lra-listops:{d}")
    write_listops_tsv(d / "basic_val.tsv", [("( ( [MAX 2 ) 9 ) ] )", 19)])
    msg = data_error(f"lra-listops:{d}")
    assert "line 2" in msg and "target" in msg
    write_listops_tsv(d / "basic_val.tsv", [])
    assert "no rows" in data_error(f"lra-listops:{d}")
    assert "max_length" in data_error(f"lra-listops:{src}", max_length=0)
    assert "basic_train.tsv" in data_error(f"lra-listops:{tmp_path}")
    assert "norun" in cli_error(capsys, "evaluate", tmp_path / "norun", "--data", f"lra-listops:{d}")
    assert "basic_val.tsv" in cli_error(capsys, "train", "--data", f"lra-listops:{d}", "--out", tmp_path / "run")


def test_cli_trains_on_tokens_with_lengths(listops_dir, tmp_path):
    d, _ = listops_dir
    out = tmp_path / "run"
    assert main(["train", "--data", f"lra-listops:{d}", "--data-option", "max_length=64", "--out", str(out),
                 "--d-model", "4", "--layers", "1", "--state-dim", "4", "--epochs", "1", "--quiet"]) == 0
    assert (out / "model.safetensors").is_file()
