"""`ssmcompress export` and `ssmcompress stream`: files, printed outputs, and one-sentence errors with exit code 2."""
import io
import json
import sys

import numpy as np
import pytest

from ssmcompress import checkpoint as ckpt
from ssmcompress.cli import main
from ssmcompress.export import stream_outputs
from ssmcompress.export.c_export import find_c_compiler

from export_cases import held_out_inputs, make_model


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def write_run(folder, model):
    ckpt.write_json(folder / ckpt.CONFIG, {"model": model.config, "data": {"spec": "none"}})
    ckpt.write_tensors(folder / ckpt.WEIGHTS, model.state_dict())
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = make_model("dss-softmax", seed=7, compressed=True)  # d_input 2, batch norm, mean pooling
    return write_run(tmp_path_factory.mktemp("export_cli") / "run", model), model


def parse_rows(out):
    lines = out.strip().splitlines()
    assert lines[0].startswith("step,sample,y0")
    return np.array([[float(v) for v in line.split(",")] for line in lines[1:]])


def test_stream_npy_every_k_matches_eager(run, tmp_path, capsys):
    folder, model = run
    x = held_out_inputs(model, batch=3, steps=25)
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, err = run_cli(capsys, "stream", folder, "--input", tmp_path / "x.npy", "--every", "10")
    assert code == 0, err
    rows = parse_rows(out)
    ref = stream_outputs(model, x).numpy()
    assert [int(r) for r in rows[:, 0]] == [9, 9, 9, 19, 19, 19, 24, 24, 24]  # every 10 steps and the last
    for r in rows:
        np.testing.assert_allclose(r[2:], ref[int(r[0]), int(r[1])], rtol=1e-6, atol=1e-6)
    assert "25 steps x 3 stream(s) on torch:" in err and "us per token" in err


def test_stream_stdin_csv_one_row_per_step(run, capsys, monkeypatch):
    folder, model = run
    x = held_out_inputs(model, batch=1, steps=6)[0].numpy()
    text = "# a comment\n" + "\n".join(",".join(f"{v:.9g}" for v in row) for row in x) + "\n\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, err = run_cli(capsys, "stream", folder, "--input", "-")
    assert code == 0, err
    rows = parse_rows(out)
    ref = stream_outputs(model, x[None].astype(np.float32)).numpy()[:, 0]
    np.testing.assert_allclose(rows[:, 2:], ref, rtol=1e-6, atol=1e-6)
    assert list(rows[:, 0]) == list(range(6))


@pytest.mark.parametrize("backend", ["onnx", "c"])
def test_stream_backends_agree_with_torch(run, tmp_path, capsys, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    elif find_c_compiler() is None:
        pytest.skip("no C compiler (cc, gcc or clang) on this machine")
    folder, model = run
    x = held_out_inputs(model, batch=2, steps=30)
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, err = run_cli(capsys, "stream", folder, "--input", tmp_path / "x.npy", "--backend", backend)
    assert code == 0, err
    rows = parse_rows(out)
    ref = stream_outputs(model, x).numpy().reshape(-1, model.d_output)
    np.testing.assert_allclose(rows[:, 2:], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert f"on {backend}:" in err


def test_export_onnx_and_c_files(run, tmp_path, capsys):
    pytest.importorskip("onnx")
    folder, model = run
    code, out, err = run_cli(capsys, "export", folder, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (tmp_path / "m.onnx").is_file() and info["state_dims"] == model.state_dims
    assert info["state_bytes_per_stream"] == 4 * (sum(model.state_dims) * model.d_model + model.d_model)
    code, out, err = run_cli(capsys, "export", folder, "--format", "c", "--out", tmp_path / "csrc", "--name", "kws")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "csrc").iterdir()) == ["kws.c", "kws.h", "kws_driver.c"]
    assert "cc -std=c99" in out
    code, out, err = run_cli(capsys, "export", folder, "--format", "c", "--out", tmp_path / "q8", "--int8", "--json")
    assert code == 0, err
    assert json.loads(out)["weight_bytes"] < info["weight_bytes"]
    assert "signed char" in (tmp_path / "q8" / "ssm_model.c").read_text()


def one_sentence_error(code, out, err):
    assert code == 2
    assert out == "" or out.startswith("step,")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_exit_2_with_one_sentence(run, tmp_path, capsys):
    folder, model = run
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_sentence_error(*run_cli(capsys, "export", empty, "--format", "c", "--out", tmp_path / "c"))
    assert "config.json" in err
    err = one_sentence_error(*run_cli(capsys, "export", folder, "--format", "tflite", "--out", tmp_path / "x"))
    assert "invalid choice" in err
    err = one_sentence_error(*run_cli(capsys, "export", folder, "--format", "onnx", "--out", tmp_path / "x", "--int8"))
    assert "--format c only" in err
    (tmp_path / "afile").write_text("x")
    err = one_sentence_error(*run_cli(capsys, "export", folder, "--format", "c", "--out", tmp_path / "afile"))
    assert "file" in err
    err = one_sentence_error(*run_cli(capsys, "export", folder, "--format", "c", "--out", tmp_path / "afile" / "sub"))
    assert "cannot write" in err
    np.save(tmp_path / "wide.npy", np.zeros((2, 10, 3), np.float32))  # the model reads 2 features
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "wide.npy"))
    assert "2 feature(s)" in err
    (tmp_path / "wide.csv").write_text("0.1,0.2\n0.1,0.2,0.3\n")
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "wide.csv"))
    assert "line 2 has 3 value(s)" in err
    (tmp_path / "x.parquet").write_text("x")
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "x.parquet"))
    assert "unknown input format" in err
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "missing.npy"))
    assert "does not exist" in err
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "wide.npy", "--every", "0"))


def test_missing_onnx_exit_2_names_the_install(run, tmp_path, capsys, monkeypatch):
    folder, _ = run
    monkeypatch.setitem(sys.modules, "onnx", None)
    err = one_sentence_error(*run_cli(capsys, "export", folder, "--format", "onnx", "--out", tmp_path / "m.onnx"))
    assert "pip install 'ssmcompress[export]'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_token_inputs(tmp_path, capsys):
    model = make_model("dss-exp", seed=8)  # vocab_size 11
    folder = write_run(tmp_path / "tok", model)
    x = held_out_inputs(model, batch=2, steps=12)
    np.save(tmp_path / "t.npy", x.numpy())
    code, out, err = run_cli(capsys, "stream", folder, "--input", tmp_path / "t.npy", "--every", "12")
    assert code == 0, err
    rows = parse_rows(out)
    np.testing.assert_allclose(rows[:, 2:], stream_outputs(model, x).numpy()[-1], rtol=1e-6, atol=1e-6)
    np.save(tmp_path / "bad.npy", np.array([[1, 2, 11]]))
    err = one_sentence_error(*run_cli(capsys, "stream", folder, "--input", tmp_path / "bad.npy"))
    assert "[0, 11)" in err
