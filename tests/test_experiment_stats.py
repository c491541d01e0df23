"""Statistics of the experiment report against scipy and closed forms; convergence flags; early stopping."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from ssmcompress import experiment as exp_mod
from ssmcompress.experiment import (comparisons, correlation, paired_comparison, parent_losses, rank_matrix, still_rising,
                                   summarize, verdicts)


def test_paired_comparison_closed_form():
    a = np.array([0.80, 0.82, 0.85, 0.83, 0.90])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05])        # d = 1..5 points
    res = paired_comparison(a, b)
    assert res["n"] == 5 and res["wins"] == 5 and res["losses"] == 0
    assert res["mean_diff"] == pytest.approx(0.03)
    sd = math.sqrt(2.5) / 100
    t = 0.03 / (sd / math.sqrt(5))                           # = 4.2426...
    assert t == pytest.approx(4.242640687, rel=1e-9)
    assert res["t_p"] == pytest.approx(2 * stats.t.sf(t, 4), rel=1e-9)
    assert res["t_p"] == pytest.approx(0.013236, abs=1e-6)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert res["ci_low"] == pytest.approx(0.03 - half) and res["ci_high"] == pytest.approx(0.03 + half)
    # exact Wilcoxon, n = 5, all differences positive: p = 2 / 2^5
    assert res["wilcoxon_p"] == pytest.approx(0.0625)


def test_paired_comparison_matches_scipy_on_fixed_inputs():
    rng = np.random.default_rng(7)
    a = rng.uniform(0.6, 0.9, 9)
    b = a + rng.normal(0.0, 0.02, 9)
    res = paired_comparison(a, b)
    assert res["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert res["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert res["mean_diff"] == pytest.approx(np.mean(a - b))


def test_paired_comparison_degenerate_cases():
    one = paired_comparison([0.5], [0.4])
    assert one["n"] == 1 and one["t_p"] is None and one["wilcoxon_p"] is None and one["ci_low"] is None
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["t_p"] == 1.0 and same["wilcoxon_p"] == 1.0 and same["mean_diff"] == 0
    shifted = paired_comparison([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])       # constant difference
    assert shifted["t_p"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([0.1, 0.2], [0.1])


def test_correlation_matches_scipy():
    a = np.array([0.7, 0.75, 0.8, 0.85, 0.9, 0.72])
    b = np.array([0.3, 0.5, 0.45, 0.7, 0.8, 0.2])
    res = correlation(a, b)
    pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
    assert res["n"] == 6
    assert res["pearson"] == pytest.approx(pr[0]) and res["pearson_p"] == pytest.approx(pr[1])
    assert res["spearman"] == pytest.approx(sr[0]) and res["spearman_p"] == pytest.approx(sr[1])
    assert correlation([0.1, 0.2], [0.3, 0.4])["pearson"] is None


def test_still_rising():
    h = lambda accs: [{"val_accuracy": a} for a in accs]
    assert still_rising(h([0.1, 0.2, 0.3, 0.4, 0.5]), False) is True
    assert still_rising(h([0.1, 0.5, 0.4, 0.4, 0.4, 0.3]), False) is False
    assert still_rising(h([0.1, 0.2, 0.3]), True) is False            # stopped early: converged
    assert still_rising([{"val_accuracy": None}], False) is None       # regression


def _rows():
    rows = []
    for seed, (bt, legs, budget) in enumerate([(0.9, 0.8, 0.85), (0.91, 0.82, 0.86), (0.92, 0.8, 0.9),
                                               (0.9, 0.79, 0.88), (0.93, 0.81, 0.87)]):
        for m, acc in (("bt", bt), ("legs", legs), ("legs-budget", budget)):
            rows.append({"method": m, "kernel": "s4d", "state_dim": 8, "seed": seed, "retrained": True,
                         "test_accuracy": acc, "ssm_params": 100, "params": 500, "state_dims": [8, 8]})
    return rows


def test_comparisons_pair_by_seed_and_check_sizes():
    rows = _rows()
    comps = comparisons(rows)
    c = next(c for c in comps if c["method"] == "bt" and c["reference"] == "legs")
    assert c["n"] == 5 and c["same_size"]
    assert c["mean_diff"] == pytest.approx(np.mean([0.1, 0.09, 0.12, 0.11, 0.12]))
    text = "\n".join(verdicts(comps))
    assert "BT + main training beats Skew-HiPPO (" in text
    # a size mismatch is reported, not hidden
    rows[0]["ssm_params"] = 101
    c = next(c for c in comparisons(rows) if c["method"] == "bt" and c["reference"] == "legs")
    assert not c["same_size"]
    # a missing seed is dropped from the pairing
    rows = [r for r in _rows() if not (r["method"] == "legs" and r["seed"] == 4)]
    c = next(c for c in comparisons(rows) if c["method"] == "bt" and c["reference"] == "legs")
    assert c["n"] == 4


def test_parent_losses_pair_each_compressed_run_with_its_own_parent():
    rows = _rows()
    for seed in range(5):
        base = {"kernel": "s4d", "seed": seed, "retrained": True, "ssm_params": 800, "params": 1200,
                "state_dims": [64, 64]}
        rows.append({**base, "method": "original", "state_dim": 64, "test_accuracy": 0.95})
        rows.append({**base, "method": "original-hankel", "state_dim": 64, "test_accuracy": 0.80 + 0.01 * seed})
        rows.append({**base, "method": "hankel-bt-noretrain", "state_dim": 8, "retrained": False,
                     "test_accuracy": 0.79 + 0.01 * seed})
    losses = {c["method"]: c for c in parent_losses(rows)}
    assert set(losses) == {"bt", "hankel-bt-noretrain"}           # legs has no parent; the originals are parents
    assert losses["bt"]["parent"] == "original" and losses["bt"]["n"] == 5
    assert losses["bt"]["mean_diff"] == pytest.approx(np.mean([0.9, 0.91, 0.92, 0.9, 0.93]) - 0.95)
    h = losses["hankel-bt-noretrain"]
    assert h["parent"] == "original-hankel" and h["mean_diff"] == pytest.approx(-0.01)
    assert h["parent_mean"] == pytest.approx(0.82)


def test_rank_matrix_shows_accuracy_difference_and_p():
    rows = _rows()
    rows += [{**r, "state_dim": 16, "test_accuracy": r["test_accuracy"] + 0.01} for r in _rows()]
    text = rank_matrix(summarize(rows), comparisons(rows), "s4d")
    head, _, *body = text.splitlines()
    assert head == "| method | r = 16 | r = 8 |"
    bt = next(line for line in body if line.startswith("| BT + main training |"))
    c = next(c for c in comparisons(rows) if c["method"] == "bt" and c["reference"] == "legs-budget"
             and c["state_dim"] == 8)
    assert f"{100 * np.mean([0.9, 0.91, 0.92, 0.9, 0.93]):.2f} %" in bt
    assert f"({100 * c['mean_diff']:+.2f}, p = " in bt
    budget = next(line for line in body if line.startswith("| Skew-HiPPO, equal total budget |"))
    assert "p =" not in budget                                   # no comparison of the reference with itself
    assert rank_matrix(summarize(rows), comparisons(rows), "dss-exp") == ""


def test_verdicts_say_does_not_beat_plainly():
    rows = _rows()
    for r in rows:
        if r["method"] == "bt":
            r["test_accuracy"] -= 0.2
    text = "\n".join(verdicts(comparisons(rows)))
    assert "BT + main training is beaten by Skew-HiPPO" in text


def test_early_stopping_stops_and_stays_stopped(tmp_path):
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import TrainConfig, train
    import torch

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4, l_max=64)
    # lr so small that validation accuracy cannot keep improving for long
    cfg = TrainConfig(epochs=30, patience=2, lr=1e-7, ssm_lr=0.0, batch_size=512, seed=0)
    summary = train(model, data, cfg, tmp_path / "run", progress=False)
    assert summary["stopped_early"] and summary["epochs"] < 30
    assert summary["epochs"] - summary["best_epoch"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["epochs"]
    again = train(SequenceModel(**model.config), data, cfg, tmp_path / "run", resume=True, progress=False)
    assert again["epochs"] == summary["epochs"]
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_run_experiment_refuses_a_folder_made_with_other_settings(tmp_path):
    """The library call, not only the CLI, refuses to mix sub-runs of different settings; the selection may change."""
    from dataclasses import asdict

    from ssmcompress import checkpoint as ckpt
    from ssmcompress.experiment import ExperimentConfig, StaleRunError, check_same_settings, run_experiment

    made = ExperimentConfig(data="digits", state_dim=8, ranks=[4], seeds=[0], epochs=3, hankel_order=None)
    ckpt.write_json(tmp_path / "experiment.json", asdict(made))
    check_same_settings(ExperimentConfig(data="digits", state_dim=8, ranks=[2, 4], seeds=[0, 1], epochs=3,
                                         kernels=["s4d", "dss-exp"], methods=["bt"]), tmp_path)   # selection only
    # the Hankel penalty's settings may change while no Hankel-regularised pre-training was started ...
    hankel = ExperimentConfig(**{**asdict(made), "hankel_order": 2, "hankel_reg": 0.3})
    check_same_settings(hankel, tmp_path)
    check_same_settings(ExperimentConfig(**{**asdict(made), "hankel_horizon": "finite"}), tmp_path)
    with pytest.raises(StaleRunError, match=r"other settings \(epochs, hankel_order, hankel_reg\)"):
        check_same_settings(ExperimentConfig(**{**asdict(hankel), "epochs": 4}), tmp_path)   # not with others
    (tmp_path / "s4d" / "seed0" / "original-hankel").mkdir(parents=True)    # ... and not once one was
    for change, name in (({"epochs": 4}, "epochs"), ({"hankel_order": 2}, "hankel_order"),
                         ({"hankel_horizon": "finite"}, "hankel_horizon"),
                         ({"horizon": "infinite"}, "horizon"), ({"model": {"d_model": 16}}, "model")):
        asked = ExperimentConfig(**{**asdict(made), **change})
        with pytest.raises(StaleRunError, match=rf"other settings \({name}\); rerun with the same flags"):
            run_experiment(asked, tmp_path, progress=False)
    # an experiment.json written before a field existed counts that field as its default
    old = asdict(made)
    del old["hankel_sample"], old["hankel_horizon"]
    ckpt.write_json(tmp_path / "experiment.json", old)
    check_same_settings(made, tmp_path)
    with pytest.raises(StaleRunError, match="hankel_sample"):
        check_same_settings(ExperimentConfig(**{**asdict(made), "hankel_sample": 0.5}), tmp_path)
    with pytest.raises(StaleRunError, match="hankel_horizon"):
        check_same_settings(ExperimentConfig(**{**asdict(made), "hankel_horizon": "finite"}), tmp_path)


_SUB_RUN = """
import json, sys
from pathlib import Path
from ssmcompress.data import load_dataset
from ssmcompress.experiment import _train_run
from ssmcompress.nn import SequenceModel
from ssmcompress.train import TrainConfig
data = load_dataset("digits")
make = lambda: SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4, l_max=64)
summary = _train_run(Path(sys.argv[1]), make, TrainConfig(epochs=3, batch_size=256, seed=0), data, {})
print(json.dumps(summary))
"""


def test_two_processes_never_train_one_sub_run_at_once(tmp_path):
    """Two experiment processes that reach the same sub-run: the second waits for the first, then skips the
    finished run (before the lock both trained it into the same files)."""
    import subprocess
    import sys

    folder = tmp_path / "seed0" / "original"
    procs = [subprocess.Popen([sys.executable, "-c", _SUB_RUN, str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert first == second
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 3
    assert sum("is being made by another process; waiting for it." in err for _, err in outs) <= 1


def test_holm_closed_form_and_order():
    from ssmcompress.experiment import holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    got = holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.6]) == [1.0, None, 1.0]        # None is not a test: the family has 2
    assert holm([]) == [] and holm([0.2]) == [0.2]
    # brute force: the step-down rule, against every p of a random family
    rng = np.random.default_rng(3)
    p = list(rng.uniform(0, 0.2, 9))
    adj = holm(p)
    order = np.argsort(p)
    for k, i in enumerate(order):
        assert adj[i] == pytest.approx(max(min(1.0, (9 - j) * p[order[j]]) for j in range(k + 1)))
    with pytest.raises(ValueError, match="p-values must be numbers in \\[0, 1\\]"):
        holm([0.1, 1.5])


def test_comparisons_carry_holm_within_kernel_and_reference():
    from ssmcompress.experiment import comparison_table

    rows = []
    for seed in range(5):
        for method, shift in (("legs", 0.0), ("legs-budget", 0.01), ("bt", 0.02 + 0.004 * seed), ("modal", 0.003 * seed)):
            for r in (16, 8):
                rows.append({"kernel": "s4d", "method": method, "state_dim": r, "seed": seed, "rank": r,
                             "test_accuracy": 0.8 + shift + 0.01 * seed + 0.001 * r,
                             "ssm_params": 10 * r, "params": 100 + 10 * r, "state_dims": [r, r]})
    comps = comparisons(rows)
    from ssmcompress.experiment import holm

    for ref in ("legs", "legs-budget"):
        fam = [c for c in comps if c["reference"] == ref]
        assert [c["holm_p"] for c in fam] == pytest.approx(holm([c["t_p"] for c in fam]))
        assert all(c["family"] == len(fam) for c in fam) and len(fam) in (4, 6)
        for method in {c["method"] for c in fam}:
            sub = [c for c in fam if c["method"] == method]
            assert [c["holm_p_ranks"] for c in sub] == pytest.approx(holm([c["t_p"] for c in sub]))
            assert all(c["family_ranks"] == 2 for c in sub)
        assert all(c["holm_p"] >= c["holm_p_ranks"] >= c["t_p"] for c in fam)
    assert "Holm p, ranks | Holm p, all" in comparison_table(comps)
    lines = [line for line in verdicts(comps) if " beats " in line]
    assert lines and all("Holm over its 2 ranks:" in line for line in lines)


def test_anneal_on_stop_goes_back_to_the_best_checkpoint_and_decays_the_rate_to_zero(tmp_path):
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import TrainConfig, train
    import torch

    data = load_dataset("digits")
    make = lambda: (torch.manual_seed(0), SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4,
                                                        l_max=64))[1]
    cfg = TrainConfig(epochs=30, patience=2, lr=1e-7, ssm_lr=0.0, batch_size=512, seed=0, anneal=3)
    plain = train(make(), data, TrainConfig(**{**cfg.__dict__, "anneal": 0}), tmp_path / "plain", progress=False)
    summary = train(make(), data, cfg, tmp_path / "run", progress=False)
    stop = plain["epochs"]
    assert summary["annealed_from_epoch"] == stop and summary["epochs"] == stop + 3 and summary["stopped_early"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in rows[:stop]] == [r["val_accuracy"] for r in plain_rows]   # same run until the stop
    # the rate of each annealing epoch's last step: a cosine from the schedule's factor at the stop to zero
    import math

    from ssmcompress.train import lr_factor
    spe = math.ceil(len(data.split("train")[0]) / cfg.batch_size)
    f0 = lr_factor(stop * spe, 30 * spe, cfg.warmup)
    want = [cfg.lr * f0 * 0.5 * (1 + math.cos(math.pi * ((k + 1) * spe - 1) / (3 * spe))) for k in range(3)]
    assert [r["lr"] for r in rows[stop:]] == pytest.approx(want, rel=1e-9)
    assert f0 < 1 and want[-1] < 0.05 * cfg.lr * f0
    # resuming a finished annealed run changes nothing; anneal needs patience and a non-negative count
    again = train(make(), data, cfg, tmp_path / "run", resume=True, progress=False)
    assert again["epochs"] == summary["epochs"]
    with pytest.raises(ValueError, match="anneal"):
        TrainConfig(anneal=2)
    with pytest.raises(ValueError, match="anneal"):
        TrainConfig(anneal=-1, patience=2)


def test_anneal_starts_from_the_best_weights_and_resumes_exactly(tmp_path, monkeypatch):
    """The first annealing epoch trains from the best checkpoint, not from the weights of the stopping epoch; a
    run killed while annealing and resumed ends exactly where the uninterrupted one does."""
    from safetensors.torch import load_file

    from ssmcompress import checkpoint as ckpt
    from ssmcompress import train as train_mod
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import TrainConfig, train
    import torch

    data = load_dataset("digits")
    make = lambda: (torch.manual_seed(0), SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4,
                                                        l_max=64))[1]
    cfg = TrainConfig(epochs=40, patience=2, lr=3e-3, ssm_lr=1e-3, batch_size=256, seed=1, anneal=3)
    states, real_save = {}, train_mod._save_last

    def record(out, model, opt, state):
        states.setdefault((state["epoch"], bool(state.get("anneal"))),
                          {k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_save(out, model, opt, state)
    monkeypatch.setattr(train_mod, "_save_last", record)
    full = train(make(), data, cfg, tmp_path / "full", progress=False)
    monkeypatch.setattr(train_mod, "_save_last", real_save)
    stop = full["annealed_from_epoch"]
    history = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    best_before = 1 + max(range(stop), key=lambda e: (history[e]["val_accuracy"], -e))
    assert best_before < stop
    start = states[(stop, True)]           # the weights annealing starts from
    for k, v in states[(best_before, False)].items():
        torch.testing.assert_close(start[k], v, rtol=0, atol=0)
    assert any(not torch.equal(start[k], v) for k, v in states[(stop, False)].items())

    real_write = ckpt.write_text

    def die_in_annealing(path, text):
        real_write(path, text)
        if text.count("\n") == stop + 1:        # metrics.jsonl after the first annealing epoch
            raise KeyboardInterrupt
    monkeypatch.setattr(ckpt, "write_text", die_in_annealing)
    with pytest.raises(KeyboardInterrupt):
        train(make(), data, cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(ckpt, "write_text", real_write)
    resumed = train(make(), data, cfg, tmp_path / "killed", resume=True, progress=False)
    assert resumed["epochs"] == full["epochs"] and resumed["test_accuracy"] == full["test_accuracy"]
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(tmp_path / "killed" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_min_epochs_keeps_patience_from_stopping_before_the_floor(tmp_path):
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import TrainConfig, train
    import torch

    data = load_dataset("digits")
    make = lambda: (torch.manual_seed(0), SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4,
                                                        l_max=64))[1]
    # a learning rate too small to move validation: patience 1 stops at epoch 2 without a floor
    cfg = TrainConfig(epochs=12, patience=1, lr=1e-9, ssm_lr=0.0, batch_size=512, seed=0)
    plain = train(make(), data, cfg, tmp_path / "plain", progress=False)
    assert plain["stopped_early"] and plain["epochs"] < 6
    floored = train(make(), data, TrainConfig(**{**cfg.__dict__, "min_epochs": 6}), tmp_path / "floor", progress=False)
    assert floored["stopped_early"] and floored["epochs"] == 6
    rows = [json.loads(line) for line in (tmp_path / "floor" / "metrics.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows[:plain["epochs"]]] == [r["val_loss"] for r in plain_rows]
    full = train(make(), data, TrainConfig(**{**cfg.__dict__, "min_epochs": 12}), tmp_path / "full", progress=False)
    assert full["epochs"] == 12 and not full["stopped_early"]
    with pytest.raises(ValueError, match="min_epochs=3 is invalid; expected an integer in \\[0, epochs=12\\]"):
        TrainConfig(epochs=12, min_epochs=3)               # no patience to delay
    with pytest.raises(ValueError, match="min_epochs=13 is invalid"):
        TrainConfig(epochs=12, patience=2, min_epochs=13)


def test_still_rising_reads_the_score_a_run_was_chosen_by():
    from ssmcompress.experiment import still_rising

    # the full model still rises at the end, the reduced one (train --select-rank) peaked early
    hist = [{"val_accuracy": a, "val_accuracy_reduced": b}
            for a, b in ((0.5, 0.5), (0.6, 0.9), (0.7, 0.8), (0.8, 0.7), (0.9, 0.6))]
    assert still_rising(hist, stopped_early=False) is False
    assert still_rising([{"val_accuracy": h["val_accuracy"]} for h in hist], stopped_early=False) is True
    assert still_rising([], stopped_early=False) is None


def test_check_run_settings_counts_an_unrecorded_setting_as_its_default(tmp_path):
    """A run folder made before a TrainConfig field existed was trained at that field's default."""
    from dataclasses import asdict

    from ssmcompress import checkpoint as ckpt
    from ssmcompress.experiment import check_run_settings
    from ssmcompress.train import TrainConfig

    made = TrainConfig(epochs=3, hankel_reg=0.3, hankel_order=2)
    train_cfg = asdict(made)
    del train_cfg["hankel_horizon"]                     # written before the field existed
    ckpt.write_json(tmp_path / ckpt.CONFIG, {"train": train_cfg, "model": {"d_model": 4}, "init_from": None})
    check_run_settings(tmp_path, made, {"d_model": 4})
    with pytest.raises(ValueError, match=r"holds a run with other settings \(hankel_horizon\)"):
        check_run_settings(tmp_path, TrainConfig(epochs=3, hankel_reg=0.3, hankel_order=2, hankel_horizon="finite"))
    with pytest.raises(ValueError, match=r"other settings \(model.d_model\)"):
        check_run_settings(tmp_path, made, {"d_model": 8})
