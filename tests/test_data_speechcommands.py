"""speechcommands loader on wav files written with the wave module, in the dataset's folder layout."""
import shutil

import numpy as np
import pytest
from file_formats import cli_error, data_error, missing_file_error, write_speech, write_wav

from ssmcompress.cli import main
from ssmcompress.data import StoredSequences, load_dataset
from ssmcompress.data.speech import SC10_WORDS

WORDS = SC10_WORDS + ("bed", "cat")
SHORT = ("yes/00000000_nohash_0.wav", "go/00000001_nohash_0.wav", "cat/00000002_nohash_0.wav")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_commands_v0.02")
    clips = write_speech(root, WORDS, per_word=6, rng=np.random.default_rng(0), short=SHORT)
    return root, clips


def test_sc10_raw_waveforms_with_the_dataset_split(speech):
    root, clips = speech
    ds = load_dataset(f"speechcommands:{root}")
    # per word: clip 1 and 5 validation (j % 4 == 1), clip 2 test (j % 5 == 2), 0, 3, 4 training
    assert ds.sizes() == {"train": 30, "val": 20, "test": 10}
    assert ds.n_classes == 10 and ds.seq_len == 16000 and ds.d_input == 1
    assert isinstance(ds.x_train, StoredSequences) and ds.info["words"] == list(SC10_WORDS)
    listed = {s: set(open(root / f).read().split()) for s, f in
              (("val", "validation_list.txt"), ("test", "testing_list.txt"))}
    for split in ("train", "val", "test"):
        x, y, lengths = ds.split(split)
        x = np.asarray(x)
        assert x.dtype == np.float32 and x.shape[1:] == (16000, 1)
        for k in range(len(y)):
            word = SC10_WORDS[y[k]]
            n = int(lengths[k])
            candidates = [r for r, s in clips.items() if r.startswith(word + "/") and len(s) == n
                          and np.array_equal(x[k, :n, 0], s.astype(np.float32) / 32768)]
            assert len(candidates) == 1
            rel = candidates[0]
            assert (rel in listed.get(split, set())) if split != "train" else \
                all(rel not in names for names in listed.values())
            assert (x[k, n:] == 0).all()
    _, _, l_tr = ds.split("train")
    assert sorted(set(l_tr.tolist())) == [8000, 16000]     # yes/0 is a short training clip


def test_all_words_and_a_word_list(speech):
    root, _ = speech
    ds = load_dataset(f"speechcommands:{root}", words="all")
    assert ds.n_classes == 12 and ds.info["words"] == sorted(WORDS)
    two = load_dataset(f"speechcommands:{root}", words="cat,bed", max_length=100)
    assert two.info["words"] == ["cat", "bed"] and two.seq_len == 100 and two.sizes()["train"] == 6
    assert two.split("train")[2].max() == 100 and two.info["truncated_sequences"] == 12



def test_bad_files_are_one_sentence_naming_the_file(speech, tmp_path, capsys):
    src, _ = speech
    d = tmp_path / "sc"
    msg = missing_file_error(src, d, "speechcommands", "testing_list.txt")
    assert "testing_list.txt" in msg and "missing" in msg
    shutil.copy(src / "testing_list.txt", d / "testing_list.txt")
    bad = d / "no" / "00000003_nohash_0.wav"
    write_wav(str(bad), np.zeros(16000), rate=8000)
    msg = data_error(f"speechcommands:{d}")
    assert "00000003_nohash_0.wav" in msg and "8000 Hz" in msg
    data = (src / "no" / "00000003_nohash_0.wav").read_bytes()
    bad.write_bytes(data[:1000])
    msg = data_error(f"speechcommands:{d}")
    assert "00000003_nohash_0.wav" in msg and "truncated" in msg
    bad.write_bytes(b"RIFF0000WAVEjunk")
    assert "00000003_nohash_0.wav" in data_error(f"speechcommands:{d}")
    shutil.copy(src / "no" / "00000003_nohash_0.wav", bad)
    shutil.rmtree(d / "stop")
    msg = data_error(f"speechcommands:{d}")
    assert "stop" in msg and "missing" in msg
    assert "words" in data_error(f"speechcommands:{src}", words="yes")
    assert "words" in data_error(f"speechcommands:{src}", words=[1])
    assert "stop" in cli_error(capsys, "train", "--data", f"speechcommands:{d}", "--out", tmp_path / "r")


def test_cli_trains_on_variable_length_audio(speech, tmp_path):
    root, _ = speech
    out = tmp_path / "run"
    assert main(["train", "--data", f"speechcommands:{root}", "--data-option", "words=cat,bed",
                 "--data-option", "max_length=400", "--out", str(out), "--d-model", "4", "--layers", "1",
                 "--state-dim", "4", "--epochs", "1", "--quiet"]) == 0
    assert main(["evaluate", str(out)]) == 0
