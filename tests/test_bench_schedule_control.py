"""benchmarks/schedule_control.py: the control has in-training's schedule without its reductions."""
import importlib.util
import json
from pathlib import Path

import pytest

from ssmcompress.experiment import in_training_epochs, paired_comparison

_spec = importlib.util.spec_from_file_location(
    "schedule_control", Path(__file__).resolve().parents[1] / "benchmarks" / "schedule_control.py")
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)


def test_in_training_epochs_and_the_control_schedule():
    assert in_training_epochs(40) == [14, 27, 40] and in_training_epochs(3) == [1, 2, 3]
    assert in_training_epochs(1) == [1]
    with pytest.raises(ValueError, match="epochs=0 is invalid"):
        in_training_epochs(0)
    exp = {"epochs": 40, "main_epochs": 40, "train": {"patience": 4, "lr": 0.01}}
    cfg = sc.control_config(exp, seed=3)
    assert (cfg.epochs, cfg.min_epochs, cfg.patience, cfg.seed, cfg.reduce_to, cfg.lr) == (80, 45, 4, 3, None, 0.01)
    with pytest.raises(ValueError, match="patience 0"):
        sc.control_config({**exp, "train": {"patience": 0}}, seed=0)


def test_control_is_the_in_training_run_without_reductions(tmp_path, capsys, tiny_experiment):
    exp = tiny_experiment(tmp_path / "exp", "in-training,original-continued", ranks="4,2")
    out = tmp_path / "ctrl"
    sc.main([str(exp), "--out", str(out)])
    text = capsys.readouterr().out
    rows = json.loads((out / "schedule_control.json").read_text())
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        cfg = json.loads((out / "s4d" / f"seed{r['seed']}" / "config.json").read_text())
        intr = json.loads((exp / "s4d" / f"seed{r['seed']}" / "r4" / "in-training" / "config.json").read_text())
        # the same settings as the in-training run but the reductions, plus the floor of early stopping
        same = {k: v for k, v in intr["train"].items() if k not in ("reduce_to", "reduce_at", "min_epochs")}
        assert {k: cfg["train"][k] for k in same} == same
        assert cfg["train"]["reduce_to"] is None and cfg["train"]["min_epochs"] == 5
        assert cfg["model"]["state_dim"] in (8, [8]) and r["control_epochs"] == 5
    # the table's differences are the paired comparisons of the runs' test accuracies
    c = paired_comparison([100 * r["in_training_r2_test"] for r in rows], [100 * r["control_test"] for r in rows])
    assert f"| in-training, r = 2 | " in text and f"| {c['mean_diff']:+.2f} |" in text
    # a rerun trains nothing more; a folder with other settings is refused in one sentence
    before = (out / "s4d" / "seed0" / "summary.json").read_text()
    sc.main([str(exp), "--out", str(out), "--seeds", "0"])
    assert (out / "s4d" / "seed0" / "summary.json").read_text() == before
    cfg_path = out / "s4d" / "seed0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["lr"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        sc.main([str(exp), "--out", str(out), "--seeds", "0"])
    assert "holds a run with other settings (lr)" in capsys.readouterr().err
