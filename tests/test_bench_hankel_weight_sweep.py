"""benchmarks/hankel_weight_sweep.py: penalised pre-training per weight, compression without retraining,
paired comparisons; --select-rank; reuse only with the same settings."""
import importlib.util
import json
from pathlib import Path

import pytest

from ssmcompress import checkpoint as ckpt
from ssmcompress.compress import compress_model
from ssmcompress.data import load_dataset
from ssmcompress.experiment import paired_comparison
from ssmcompress.train import evaluate

_spec = importlib.util.spec_from_file_location(
    "hankel_weight_sweep", Path(__file__).resolve().parents[1] / "benchmarks" / "hankel_weight_sweep.py")
hs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hs)

TINY = ["--data", "digits", "--d-model", "4", "--layers", "1", "--state-dim", "8", "--epochs", "2",
        "--patience", "0", "--ranks", "2", "--methods", "bt", "--seeds", "0,1"]


def test_sweep_rows_table_select_rank_and_reuse(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert hs.main([*TINY, "--weights", "0.1", "--orders", "2", "--select-rank", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads((out / "hankel_sweep.json").read_text())
    assert len(rows) == 4 and {(r["weight"], r["select_rank"]) for r in rows} == {(0.0, None), (0.1, 2)}
    # the penalised runs were chosen by their reduced model's validation accuracy; the unpenalised ones were not
    sel = json.loads((out / "w0.1_o2_sel2" / "seed1" / "config.json").read_text())["train"]
    assert (sel["select_rank"], sel["hankel_reg"], sel["hankel_order"]) == (2, 0.1, 2)
    assert json.loads((out / "w0_oall" / "seed1" / "config.json").read_text())["train"]["select_rank"] is None
    summ = json.loads((out / "w0.1_o2_sel2" / "seed1" / "summary.json").read_text())
    data = load_dataset("digits")
    for r in rows:           # every row is an independent compress_model + evaluate of the run's kept model
        folder = out / ("w0_oall" if r["weight"] == 0 else "w0.1_o2_sel2") / f"seed{r['seed']}"
        model, _ = ckpt.load_model(folder)
        small, _ = compress_model(model, method="bt", rank=2)
        for split in ("val", "test"):
            assert r[f"{split}_compressed"] == evaluate(small, *data.split(split), task=data.task)["accuracy"]
        if r["weight"] > 0 and r["seed"] == 1:
            assert r["val_compressed"] == summ["best_val_accuracy_reduced"]
    # the table's last column is the paired comparison against the unregularised original of the same seed
    pen = sorted((r for r in rows if r["weight"] > 0), key=lambda r: r["seed"])
    base = {r["seed"]: r["test"] for r in rows if r["weight"] == 0}
    c = paired_comparison([r["test_compressed"] for r in pen], [base[r["seed"]] for r in pen])
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0.1 | 2, chosen at r = 2 | 2 | bt |"))
    assert line.rstrip(" |").endswith(f"{100 * c['mean_diff']:+.2f} ({c['t_p']:.2g}, n = 2)")
    # a rerun reuses every run; a folder trained with another penalty sample is refused in one sentence
    before = (out / "w0.1_o2_sel2" / "seed0" / "summary.json").read_text()
    assert hs.main([*TINY, "--weights", "0.1", "--orders", "2", "--select-rank", "2", "--out", str(out)]) == 0
    assert (out / "w0.1_o2_sel2" / "seed0" / "summary.json").read_text() == before
    capsys.readouterr()
    assert hs.main([*TINY, "--weights", "0.1", "--orders", "2", "--select-rank", "2", "--sample", "0.5",
                    "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]       # (the lines before: rows of the reused seed 0
    assert "w0.1_o2_sel2/seed0 holds a run with other settings (hankel_sample); remove it" in last   # originals)
    assert hs.main([*TINY, "--weights", "0.1", "--orders", "2", "--d-model", "6", "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "w0_oall/seed0 holds a run with other settings (model.d_model)" in last
    # (TINY gives --d-model 4 first; the later --d-model 6 wins)


def test_sweep_finite_horizon_penalty_has_its_own_folder_and_rows(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [*TINY, "--seeds", "0", "--weights", "0.1", "--orders", "2", "--out", str(out)]
    assert hs.main([*args, "--hankel-horizon", "finite"]) == 0
    text = capsys.readouterr().out
    cfg = json.loads((out / "w0.1_o2_fin" / "seed0" / "config.json").read_text())["train"]
    assert cfg["hankel_horizon"] == "finite"
    assert json.loads((out / "w0_oall" / "seed0" / "config.json").read_text())["train"]["hankel_horizon"] == "auto"
    rows = json.loads((out / "hankel_sweep.json").read_text())
    assert {(r["weight"], r["hankel_horizon"]) for r in rows} == {(0.0, "auto"), (0.1, "finite")}
    assert any(ln.startswith("| 0.1 | 2, finite horizon | 2 | bt |") for ln in text.splitlines())
    # the infinite-horizon penalty is another folder, not the finite one reused; both in one table
    before = (out / "w0.1_o2_fin" / "seed0" / "summary.json").read_text()
    assert hs.main([*args, "--hankel-horizon", "finite,auto"]) == 0
    assert (out / "w0.1_o2" / "seed0" / "summary.json").is_file()
    assert (out / "w0.1_o2_fin" / "seed0" / "summary.json").read_text() == before
    rows = json.loads((out / "hankel_sweep.json").read_text())
    assert sorted((r["weight"], r["hankel_horizon"]) for r in rows) == [(0.0, "auto"), (0.1, "auto"), (0.1, "finite")]
    text = capsys.readouterr().out
    assert any(ln.startswith("| 0.1 | 2 | 2 | bt |") for ln in text.splitlines())
    with pytest.raises(SystemExit):
        hs.main([*args, "--hankel-horizon", "long"])
    assert "is not a comma list of auto and finite" in capsys.readouterr().err
