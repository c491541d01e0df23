"""benchmarks/hankel_finetune.py: original-continued's run plus the Hankel penalty, then compression without
retraining, compared paired over seeds."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress.compress import compress_model
from ssmcompress.data import load_dataset
from ssmcompress.experiment import paired_comparison
from ssmcompress.train import evaluate

_spec = importlib.util.spec_from_file_location(
    "hankel_finetune", Path(__file__).resolve().parents[1] / "benchmarks" / "hankel_finetune.py")
hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf)


def test_finetune_config_is_the_continued_run_plus_the_penalty():
    exp = {"epochs": 40, "main_epochs": 20, "train": {"patience": 4, "lr": 0.01}}
    cfg = hf.finetune_config(exp, seed=3, weight=0.5, order=8, sample=0.25)
    assert (cfg.epochs, cfg.patience, cfg.seed, cfg.lr) == (20, 4, 3, 0.01)
    assert (cfg.hankel_reg, cfg.hankel_order, cfg.hankel_sample, cfg.reduce_to) == (0.5, 8, 0.25, None)
    with pytest.raises(ValueError, match="weight=0"):
        hf.finetune_config(exp, seed=0, weight=0, order=8, sample=1.0)
    fixed = hf.finetune_config(exp, seed=3, weight=0.5, order=8, sample=0.25, fixed_epochs=6)
    assert (fixed.epochs, fixed.patience, fixed.hankel_reg) == (6, 0, 0.5)
    with pytest.raises(ValueError, match="fixed_epochs=0 is invalid"):
        hf.finetune_config(exp, seed=0, weight=1, order=8, sample=1.0, fixed_epochs=0)
    sel = hf.finetune_config(exp, seed=3, weight=0.5, order=8, sample=0.25, select_rank=8, horizon="finite")
    assert (sel.select_rank, sel.hankel_horizon, sel.patience, sel.epochs) == (8, "finite", 4, 20)
    assert (cfg.select_rank, cfg.hankel_horizon) == (None, "auto")
    with pytest.raises(ValueError, match="fixed_epochs=6 and select_rank=8 were both given"):
        hf.finetune_config(exp, seed=0, weight=1, order=8, sample=1.0, fixed_epochs=6, select_rank=8)
    assert hf.run_name(0.3, select_rank=8, horizon="finite") == "w0.3_fin_sel8"
    assert hf.run_name(1, fixed_epochs=8) == "w1_e8" and hf.run_name(0.5) == "w0.5"


def test_finetune_then_compress_without_retraining(tmp_path, capsys, tiny_experiment):
    exp = tiny_experiment(tmp_path / "exp", "original-continued", epochs=2)
    out = tmp_path / "hft"
    hf.main([str(exp), "--weight", "0.1", "--order", "2", "--ranks", "4,2", "--methods", "bt,h2", "--out", str(out)])
    text = capsys.readouterr().out
    rows = json.loads((out / "hankel_finetune.json").read_text())
    assert sorted({(r["seed"], r["rank"], r["method"]) for r in rows}) == [
        (s, r, m) for s in (0, 1) for r in (2, 4) for m in ("bt", "h2")]
    data = load_dataset("digits")
    for seed in (0, 1):
        run = out / "w0.1" / f"seed{seed}"
        cfg = json.loads((run / "config.json").read_text())
        cont = json.loads((exp / "s4d" / f"seed{seed}" / "original-continued" / "config.json").read_text())
        # original-continued's settings and starting point, plus the penalty
        pen = ("hankel_reg", "hankel_order", "hankel_sample")
        assert {k: v for k, v in cfg["train"].items() if k not in pen} == \
            {k: v for k, v in cont["train"].items() if k not in pen}
        assert (cfg["train"]["hankel_reg"], cfg["train"]["hankel_order"]) == (0.1, 2)
        assert cfg["init_from"] == cont["init_from"]
        # the compressed rows are the fine-tuned model reduced without retraining, at the requested size
        model, _ = ckpt.load_model(run)
        small, _ = compress_model(model, method="bt", rank=2)
        row = next(r for r in rows if (r["seed"], r["rank"], r["method"]) == (seed, 2, "bt"))
        assert row["state_dims"] == [2]
        assert row["test_compressed"] == evaluate(small, *data.split("test"), task=data.task)["accuracy"]
        assert row["original"] == json.loads((exp / "s4d" / f"seed{seed}" / "original" / "summary.json")
                                             .read_text())["test_accuracy"]
    # the table's differences are the paired comparisons of the rows
    g = sorted((r for r in rows if r["rank"] == 2 and r["method"] == "bt"), key=lambda r: r["seed"])
    c = paired_comparison([r["test_compressed"] for r in g], [r["original"] for r in g])
    assert f"| 2 | bt | " in text and f"| {100 * c['mean_diff']:+.2f} (" in text
    # a rerun trains nothing more; a folder with other settings is refused in one sentence
    before = (out / "w0.1" / "seed0" / "summary.json").read_text()
    hf.main([str(exp), "--weight", "0.1", "--order", "2", "--ranks", "2", "--seeds", "0", "--out", str(out)])
    assert (out / "w0.1" / "seed0" / "summary.json").read_text() == before
    capsys.readouterr()
    with pytest.raises(SystemExit):
        hf.main([str(exp), "--weight", "0.1", "--order", "3", "--ranks", "2", "--seeds", "0", "--out", str(out)])
    assert "holds a run with other settings (hankel_order)" in capsys.readouterr().err
    # ... and so is one fine-tuned from another starting point (another experiment's original)
    cfg = json.loads((out / "w0.1" / "seed0" / "config.json").read_text())
    (out / "w0.1" / "seed0" / "config.json").write_text(json.dumps({**cfg, "init_from": str(tmp_path / "other")}))
    with pytest.raises(SystemExit):
        hf.main([str(exp), "--weight", "0.1", "--order", "2", "--ranks", "2", "--seeds", "0", "--out", str(out)])
    assert "other settings (init_from: " in capsys.readouterr().err
    (out / "w0.1" / "seed0" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        hf.main([str(tmp_path), "--weight", "0.1", "--out", str(out)])
    assert "holds no experiment.json" in capsys.readouterr().err
    # --fixed-epochs: exactly that many epochs, no early stopping, the last epoch's model is the one reduced
    hf.main([str(exp), "--weight", "0.1", "--order", "2", "--ranks", "2", "--seeds", "1", "--fixed-epochs", "3",
             "--out", str(out)])
    run = out / "w0.1_e3" / "seed1"
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["epochs"], cfg["patience"]) == (3, 0)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    last = hf.finetuned_model(run, 3)
    stored = ckpt.read_tensors(run / ckpt.LAST)
    assert all(torch.equal(v, stored["model." + k]) for k, v in last.state_dict().items())
    row = json.loads((out / "hankel_finetune.json").read_text())[0]
    assert row["fixed_epochs"] == 3
    assert row["test"] == evaluate(last, *data.split("test"), task=data.task)["accuracy"]
    small, _ = compress_model(last, method="bt", rank=2)
    assert row["test_compressed"] == evaluate(small, *data.split("test"), task=data.task)["accuracy"]
    assert "the last epoch's model" in capsys.readouterr().out
    # --select-rank with the finite-horizon penalty: train --select-rank's settings, and the model kept is the
    # epoch whose reduction to that order scored best on validation
    capsys.readouterr()
    hf.main([str(exp), "--weight", "0.1", "--order", "2", "--ranks", "2", "--seeds", "0", "--select-rank", "2",
             "--hankel-horizon", "finite", "--out", str(out)])
    run = out / "w0.1_fin_sel2" / "seed0"
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["select_rank"], cfg["hankel_horizon"], cfg["hankel_reg"]) == (2, "finite", 0.1)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [m for m in metrics if "val_accuracy_reduced" in m]
    row = json.loads((out / "hankel_finetune.json").read_text())[0]
    assert (row["select_rank"], row["hankel_horizon"]) == (2, "finite")
    best = max(scored, key=lambda m: m["val_accuracy_reduced"])
    assert row["best_epoch"] == best["epoch"]
    model = hf.finetuned_model(run, None)
    small, _ = compress_model(model, method="bt", rank=2)
    assert row["val_compressed"] == pytest.approx(best["val_accuracy_reduced"], abs=1e-12)
    assert row["test_compressed"] == evaluate(small, *data.split("test"), task=data.task)["accuracy"]
    text = capsys.readouterr().out
    assert "Gramians over the sequence length" in text and "reduced by BT to order 2 scored best" in text
    with pytest.raises(SystemExit):
        hf.main([str(exp), "--weight", "0.1", "--select-rank", "2", "--fixed-epochs", "3", "--out", str(out)])
    assert "were both given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hf.main([str(exp), "--weight", "0.1", "--select-rank", "8", "--out", str(out)])
    assert "select_rank=8 is invalid; expected an even real order in [2, 6]" in capsys.readouterr().err
    expj = json.loads((exp / "experiment.json").read_text())
    (exp / "experiment.json").write_text(json.dumps({**expj, "refit": False}))
    with pytest.raises(SystemExit):
        hf.main([str(exp), "--weight", "0.1", "--select-rank", "2", "--out", str(out)])
    assert "chosen on another reduction than the one reported" in capsys.readouterr().err
    (exp / "experiment.json").write_text(json.dumps(expj))
