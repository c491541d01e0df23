"""Training loop, run folders and the command line, at tiny sizes on built-in data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssmcompress import checkpoint as ckpt
from ssmcompress.cli import main
from ssmcompress.data import load_dataset
from ssmcompress.nn import SequenceModel
from ssmcompress.train import TrainConfig, lr_factor, train

TINY = ["--d-model", "8", "--layers", "1", "--state-dim", "4", "--batch-size", "128", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--out", str(out), "--epochs", "2", *TINY]) == 0
    return out


def test_train_writes_run_folder(trained_run):
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "summary.json", "last.safetensors",
                 "trainer_state.json"):
        assert (trained_run / name).is_file(), name
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "val_accuracy", "val_loss"} <= set(r)
        assert np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["model"]["state_dim"] == 4 and cfg["data"]["spec"] == "digits"
    # the best checkpoint is the epoch with the best validation accuracy
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)


def test_evaluate_json_matches_summary(trained_run, capsys):
    code, out, _ = run_cli(capsys, "evaluate", trained_run, "--json")
    assert code == 0
    res = json.loads(out)
    assert {"accuracy", "loss"} <= set(res)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert res["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert res["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    code, out, _ = run_cli(capsys, "evaluate", trained_run, "--split", "val", "--json")
    assert json.loads(out)["accuracy"] == pytest.approx(summary["best_val_accuracy"])


def test_info_counts_parameters(trained_run, capsys):
    code, out, _ = run_cli(capsys, "info", trained_run, "--json")
    assert code == 0
    info = json.loads(out)
    model, _ = ckpt.load_model(trained_run)
    assert info["state_dims"] == [4]
    assert info["params"] == sum(p.numel() for p in model.parameters())
    ssm = sum(p.numel() for layer in model.ssm_layers() for p in layer.parameters())
    assert info["ssm_params"] == ssm and 0 < ssm < info["params"]


@pytest.mark.parametrize("argv, phrase", [
    (["train", "--out", "X", "--state-dim", "3"], "odd"),
    (["train", "--out", "X", "--epochs", "0"], "positive"),
    (["train", "--out", "X", "--kernel", "s5"], "invalid choice"),
])
def test_bad_flag_values_exit_2(argv, phrase, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([a.replace("X", str(tmp_path / "r")) for a in argv])
    assert exc.value.code == 2
    assert phrase in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_run_and_corrupt_checkpoint(trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nope")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((trained_run / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    for cmd in ("evaluate", "info"):
        code, _, err = run_cli(capsys, cmd, bad)
        assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1
    (bad / "config.json").write_text("{not json")
    code, _, err = run_cli(capsys, "info", bad)
    assert code == 2 and "not valid JSON" in err


def test_bad_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "--data", "no-such-data", "--out", out, *TINY)
    assert code == 2 and "no-such-data" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_run_needs_resume(trained_run, capsys):
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--out", trained_run, *TINY)
    assert code == 2 and "--resume" in err


def test_lr_schedule_warmup_then_cosine():
    total = 100
    f = [lr_factor(s, total, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))
    assert f[-1] < 1e-3


def test_param_groups_follow_the_s4_convention():
    """SSM parameters (dt, A, B) get their own lr and no weight decay; every parameter is in one group."""
    from ssmcompress.train import param_groups
    model = SequenceModel(d_input=1, d_output=3, d_model=8, layers=2, state_dim=4)
    groups = param_groups(model, TrainConfig(lr=0.01, ssm_lr=1e-3, weight_decay=0.05))
    ssm = next(g for g in groups if g["name"] == "ssm")
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0.0
    assert {id(p) for p in ssm["params"]} == {id(p) for p in model.ssm_parameters()}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups)
    model(torch.randn(2, 10, 1)).pow(2).mean().backward()
    opt.step()
    # the grouping reads the layers' _optim marks: it survives dtype moves and compression's write-back
    from ssmcompress.compress import compress_model
    for m in (model.double(), compress_model(model, rank=2)[0]):
        ssm = next(g for g in param_groups(m, TrainConfig()) if g["name"] == "ssm")
        assert {id(p) for p in ssm["params"]} == {id(p) for p in m.ssm_parameters()} and ssm["params"]


def _tiny_model(data, seed=0):
    torch.manual_seed(seed)
    return SequenceModel(d_input=1, d_output=10, d_model=8, layers=2, state_dim=4, l_max=data.seq_len, dropout=0.1)


def test_resume_after_kill_loses_nothing(tmp_path, monkeypatch):
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=3, batch_size=256, seed=3)
    full = _tiny_model(data)
    train(full, data, cfg, tmp_path / "full", progress=False)

    killed = _tiny_model(data)
    real_write = ckpt.write_text

    def write_then_die(path, text):
        real_write(path, text)
        if text.count("\n") == 1:       # metrics.jsonl after the first epoch
            raise KeyboardInterrupt
    monkeypatch.setattr(ckpt, "write_text", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(killed, data, cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(ckpt, "write_text", real_write)
    resumed = _tiny_model(data, seed=99)          # different init: everything must come from the checkpoint
    train(resumed, data, cfg, tmp_path / "killed", resume=True, progress=False)

    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "killed" / "last.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(la) == len(lb) == 3
    for x, y in zip(la, lb):
        x, y = json.loads(x), json.loads(y)
        assert x["train_loss"] == y["train_loss"] and x["val_accuracy"] == y["val_accuracy"]


def test_cli_resume(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "digits", "--out", str(out), "--epochs", "1", *TINY]) == 0
    # a finished run resumes to the same place without training more
    code, _, _ = run_cli(capsys, "train", "--out", out, "--resume", "--quiet")
    assert code == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "none", "--resume")
    assert code == 2 and "resume" in err


def test_ddp_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) makes the same updates as 1 process on the same global batch."""
    common = ["--data", "digits", "--epochs", "1", "--d-model", "8", "--layers", "1", "--state-dim", "4",
              "--batch-size", "64", "--quiet", "--seed", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "ssmcompress.cli", "train", "--out", str(tmp_path / "one"), *common],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ssmcompress.cli", "train", "--out", str(tmp_path / "two"),
                          *common], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "last.safetensors"))
    b = load_file(str(tmp_path / "two" / "last.safetensors"))
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ma = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    mb = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-4)


def test_every_command_has_help(capsys):
    for cmd in ("train", "evaluate", "info", "data", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_anneal_on_stop_flag(tmp_path, capsys):
    from ssmcompress.cli import main

    tiny = ["--d-model", "4", "--layers", "1", "--state-dim", "4", "--batch-size", "512"]
    out = tmp_path / "a"
    assert main(["train", "--data", "digits", "--out", str(out), "--epochs", "30", "--patience", "1",
                 "--lr", "1e-7", "--ssm-lr", "0", "--anneal-on-stop", "2", *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == summary["annealed_from_epoch"] + 2
    assert json.loads((out / "config.json").read_text())["train"]["anneal"] == 2
    capsys.readouterr()
    for cmd in (["train", "--data", "digits", "--out", str(tmp_path / "b")],
                ["experiment", "--data", "digits", "--patience", "0", "--out", str(tmp_path / "c")]):
        assert main([*cmd, "--anneal-on-stop", "3", *tiny]) == 2
        err = capsys.readouterr().err
        assert "--anneal-on-stop 3 needs --patience N > 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_min_epochs_flag(tmp_path, capsys):
    from ssmcompress.cli import main

    tiny = ["--d-model", "4", "--layers", "1", "--state-dim", "4", "--batch-size", "512"]
    out = tmp_path / "a"
    assert main(["train", "--data", "digits", "--out", str(out), "--epochs", "8", "--patience", "1",
                 "--lr", "1e-9", "--ssm-lr", "0", "--min-epochs", "5", "--quiet", *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 5 and summary["stopped_early"]
    assert json.loads((out / "config.json").read_text())["train"]["min_epochs"] == 5
    capsys.readouterr()
    for extra, want in ((["--min-epochs", "3"], "--min-epochs 3 needs --patience N > 0"),
                        (["--min-epochs", "9", "--patience", "2", "--epochs", "8"], "--min-epochs 9 is above --epochs 8")):
        assert main(["train", "--data", "digits", "--out", str(tmp_path / "b"), *extra, *tiny]) == 2
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
