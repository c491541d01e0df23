"""compress_model, the compress / experiment commands, at tiny sizes."""
import json
import shutil

import numpy as np
import pytest
import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress import experiment as exp_mod
from ssmcompress.cli import main
from ssmcompress.compress import compress_model, layer_system, resolve_horizon
from ssmcompress.lti import balanced_truncation
from ssmcompress.nn import SequenceModel

KERNELS = ["s4d", "bilinear", "dss-exp", "dss-softmax"]
TINY = ["--d-model", "8", "--layers", "2", "--batch-size", "128", "--quiet"]


def _model(kernel, N=16, seed=0):
    torch.manual_seed(seed)
    return SequenceModel(d_input=1, d_output=3, d_model=6, layers=2, state_dim=N, kernel=kernel, l_max=120).double()


@pytest.mark.parametrize("kernel", KERNELS)
def test_compressed_layers_are_the_reduced_systems(kernel):
    model = _model(kernel)
    small, report = compress_model(model, rank=6, refit=False, horizon="infinite")
    x = torch.randn(3, 120, 1, dtype=torch.float64)
    for i, (big_l, small_l, rep) in enumerate(zip(model.ssm_layers(), small.ssm_layers(), report.layers)):
        sys = layer_system(big_l)
        horizon = resolve_horizon("infinite", big_l, sys)     # infinite unless a mode is unstable
        # channels whose order-6 diagonal form fits in 3 stored modes are exactly BT of order 6
        ref = balanced_truncation(sys, order=6, horizon=horizon)
        fits = np.asarray(ref.n_modes) <= 3
        assert fits.any()
        K_layer = small_l.kernel(120).detach().numpy()
        np.testing.assert_allclose(K_layer[fits], ref.system.kernel(120)[fits], rtol=1e-9,
                                   atol=1e-12 * np.abs(K_layer).max())
        # the others are BT of the largest order that fits (5 or 4)
        for h in np.flatnonzero(~fits):
            r_h = int(rep.orders[h])
            assert r_h in (4, 5)
            one = balanced_truncation(sys[h], order=r_h, horizon=horizon)
            np.testing.assert_allclose(K_layer[h], one.system.kernel(120), rtol=1e-9,
                                       atol=1e-12 * np.abs(K_layer).max())
        # and the layer's output is that kernel convolved with the input plus D u
        u = torch.randn(2, 120, 6, dtype=torch.float64)
        y = small_l(u).detach().numpy()
        un = u.numpy()
        y_ref = np.stack([[np.convolve(un[b, :, h], K_layer[h])[:120] for h in range(6)] for b in range(2)], 0)
        y_ref = y_ref.transpose(0, 2, 1) + un * small_l.D.detach().numpy()
        np.testing.assert_allclose(y, y_ref, rtol=1e-8, atol=1e-10)
        # step sizes and D are kept; orders and Hankel singular values are reported
        torch.testing.assert_close(small_l.discrete_system()["dt"], big_l.discrete_system()["dt"])
        torch.testing.assert_close(small_l.D, big_l.D)
        np.testing.assert_allclose(rep.hsv, ref.hsv)
        assert np.all(rep.orders[fits] == 6) and rep.state_dim_after == 6 == small.state_dims[i]
        if horizon is None:
            assert np.all(rep.hinf_error <= rep.error_bound * (1 + 1e-6) + 1e-12)
    # everything that is not an SSM parameter is copied
    big_sd, small_sd = model.state_dict(), small.state_dict()
    for k, v in big_sd.items():
        if ".ssm." not in k:
            torch.testing.assert_close(small_sd[k], v)
    assert small(x).shape == model(x).shape


@pytest.mark.parametrize("kernel", KERNELS)
def test_full_rank_keeps_the_model(kernel):
    model = _model(kernel, N=8).eval()
    small, _ = compress_model(model, rank=8)
    x = torch.randn(2, 120, 1, dtype=torch.float64)
    torch.testing.assert_close(small.eval()(x), model(x), rtol=1e-8, atol=1e-9)


def test_energy_orders_differ_between_channels():
    model = _model("s4d", N=32)
    small, report = compress_model(model, energy=0.9)
    orders = np.concatenate([r.orders for r in report.layers])
    assert orders.min() < orders.max() <= 32
    for r, n in zip(report.layers, small.state_dims):
        assert n >= r.orders.max() and n == r.state_dim_after


def test_compress_model_rejects_bad_arguments():
    model = _model("s4d", N=8)
    with pytest.raises(ValueError, match="exactly one"):
        compress_model(model)
    with pytest.raises(ValueError, match="exactly one"):
        compress_model(model, rank=4, energy=0.5)
    with pytest.raises(ValueError, match="method"):
        compress_model(model, method="svd", rank=4)
    with pytest.raises(ValueError, match="layers"):
        compress_model(model, rank=[4, 4, 4])
    with pytest.raises(ValueError, match="even"):
        compress_model(model, rank=3)
    with pytest.raises(ValueError, match="rank"):
        compress_model(model, method="modal", energy=0.9)
    with pytest.raises(ValueError, match="horizon"):
        compress_model(model, rank=4, horizon="forever")


def test_compress_evaluate_info_train_init_from(tmp_path, capsys):
    run, comp, main_run = tmp_path / "run", tmp_path / "comp", tmp_path / "main"
    assert main(["train", "--data", "digits", "--out", str(run), "--epochs", "1", "--state-dim", "16", *TINY]) == 0
    capsys.readouterr()
    assert main(["compress", str(run), "--rank", "4", "--out", str(comp)]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out
    # the default (finite horizon, refit): 2 x the discarded values is named for what it is, not as a bound
    assert "error bound" not in out and "2 x discarded Hankel s.v. max" in out and "-tap Gramians" in out
    assert main(["compress", str(run), "--rank", "4", "--horizon", "infinite", "--no-refit",
                 "--out", str(tmp_path / "inf")]) == 0
    inf = capsys.readouterr().out
    assert "error bound max" in inf and "bound holds: True" in inf and "infinite horizon; the model" not in inf
    summary = json.loads((comp / "summary.json").read_text())
    assert main(["evaluate", str(comp), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert main(["info", str(comp), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state_dims"] == [4, 4]          # equal size by construction
    assert main(["train", "--data", "digits", "--init-from", str(comp), "--out", str(main_run), "--epochs", "1",
                 "--quiet"]) == 0
    cfg = json.loads((main_run / "config.json").read_text())
    assert cfg["model"]["state_dim"] == info["state_dims"] and cfg["init_from"] == str(comp)
    capsys.readouterr()
    # errors: both selectors, odd rank, existing output
    assert main(["compress", str(run), "--rank", "4", "--energy", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compress", str(run), "--rank", "3", "--out", str(tmp_path / "x")])
    assert main(["compress", str(run), "--rank", "4", "--out", str(comp)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_experiment_writes_report_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "exp"
    argv = ["experiment", "--data", "digits", "--state-dim", "8", "--ranks", "4", "--seeds", "2", "--epochs", "1",
            "--main-epochs", "1", "--out", str(out), *TINY]
    calls = []
    real_train = exp_mod.train

    def train_then_die(*a, **k):
        calls.append(a[3])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_train(*a, **k)

    monkeypatch.setattr(exp_mod, "train", train_then_die)
    assert main(argv) == 130                     # interrupted during the 4th training
    n_before = len(calls)
    assert main(argv) == 0                       # resumes: finished runs are not trained again
    capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())
    # 2 seeds x (original + continued + 1 rank x 8 methods)
    assert len(rows) == 2 * (2 + 8)
    assert {r["method"] for r in rows} == set(exp_mod.METHODS) | {"original"}
    for row in rows:
        assert {"method", "kernel", "state_dim", "seed", "retrained", "test_accuracy", "ssm_params", "params"} <= set(row)
    # equal size: every method at rank r has the shapes of the fresh size-r model
    for kernel in ("s4d",):
        for r in (4,):
            at_r = [row for row in rows if row["kernel"] == kernel and row["state_dim"] == r]
            assert len({(row["ssm_params"], row["params"], tuple(row["state_dims"])) for row in at_r}) == 1
            assert at_r[0]["state_dims"] == [r, r]
    # the equal-budget control trains for epochs + main_epochs (1 + 1 here, no early stop)
    assert all(row["max_epochs"] == 2 for row in rows if row["method"] == "legs-budget")
    trainings = 2 * (2 + 6)
    assert len(calls) - n_before == trainings - 3
    for name in ("accuracy_vs_params_s4d.png", "hsv_decay_s4d.png", "responses_s4d.png", "correlation_s4d.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Kernel `s4d`" in report
    assert "Wilcoxon p" in report and "paired t p" in report and "n < 8" in report
    assert "equal total budget" in report and "Majority-class" in report
    summary = json.loads((out / "summary.json").read_text())
    assert all(c["same_size"] for c in summary["comparisons"])
    # a finished experiment reruns without training anything
    calls.clear()
    assert main(argv) == 0
    assert calls == []
    # a subset of seeds / methods selects finished sub-runs: nothing is trained, the report covers the subset
    sub = list(argv)
    sub[sub.index("--seeds") + 1] = "1"
    assert main(sub + ["--methods", "bt,legs"]) == 0
    assert calls == []
    rows = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in rows} == {"original", "bt", "bt-noretrain", "legs"} and {r["seed"] for r in rows} == {0}
    # other settings in the same folder are refused
    assert main(argv[:-len(TINY)] + ["--d-model", "16", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "other settings (model" in err and "seeds, ranks, kernels and methods may change" in err


def test_experiment_rejects_a_hankel_order_at_the_state_dimension(tmp_path, capsys):
    assert main(["experiment", "--data", "digits", "--state-dim", "8", "--ranks", "4", "--hankel-order", "8", "--quiet",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "hankel_order must be None or an integer in [0, 7]" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_experiment_relative_hankel_penalty_needs_an_order(tmp_path, capsys):
    assert main(["experiment", "--data", "digits", "--state-dim", "8", "--ranks", "4", "--hankel-relative", "--quiet",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "--hankel-relative needs --hankel-order r" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="True only with a hankel_order"):
        exp_mod.ExperimentConfig(hankel_relative=True)
    assert main(["experiment", "--data", "digits", "--state-dim", "8", "--ranks", "4", "--hankel-select-rank", "8",
                 "--quiet", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "hankel_select_rank must be None or an even integer in [2, 6] (below the state dimension), got 8." in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="hankel_select_rank chooses the epoch with the default reduction"):
        exp_mod.ExperimentConfig(state_dim=8, ranks=[4], hankel_select_rank=4, horizon="infinite")
    with pytest.raises(ValueError, match="hankel_horizon must be 'auto' or 'finite', got 'long'"):
        exp_mod.ExperimentConfig(hankel_horizon="long")
    with pytest.raises(ValueError, match="but the reductions use the horizon None; drop one"):
        exp_mod.ExperimentConfig(hankel_horizon="finite", horizon=None)


def test_experiment_rejects_unknown_methods_and_kernels(tmp_path, capsys):
    base = ["experiment", "--data", "digits", "--out", str(tmp_path / "e")]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--methods", "bt,magic"])
    assert exc.value.code == 2
    assert "magic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--kernel", "s4d,s5"])
    assert not (tmp_path / "e").exists()


def test_cli_method_names_match_the_experiment():
    from ssmcompress.cli import DEFAULT_METHODS, METHOD_NAMES
    assert tuple(METHOD_NAMES) == tuple(exp_mod.ALL_METHODS)
    assert tuple(DEFAULT_METHODS) == tuple(exp_mod.METHODS)
    from ssmcompress.cli import REDUCTIONS
    from ssmcompress.compress import METHODS as COMPRESS_METHODS
    assert tuple(REDUCTIONS) == tuple(COMPRESS_METHODS)


def _small_experiment(out, capsys, methods, state_dim, epochs, layers, extra=()):
    """One seed, rank 4, a tiny model on digits; returns results.json."""
    assert main(["experiment", "--data", "digits", "--state-dim", str(state_dim), "--ranks", "4", "--seeds", "1",
                 "--epochs", str(epochs), "--main-epochs", "1", "--d-model", "6", "--layers", str(layers),
                 "--batch-size", "256", "--methods", methods, "--out", str(out), "--quiet", *extra]) == 0
    capsys.readouterr()
    return json.loads((out / "results.json").read_text())


def test_experiment_runs_the_further_reductions_at_equal_size(tmp_path, capsys):
    out = tmp_path / "exp"
    rows = _small_experiment(out, capsys, "legs,bsp,h2,modal-hinf,hankel-bt,in-training", 8, 3, 1,
                             extra=("--hankel-order", "4", "--hankel-sample", "0.5", "--hankel-relative",
                                    "--hankel-horizon", "finite", "--hankel-select-rank", "4"))
    got = {r["method"] for r in rows}
    assert got == {"original", "original-hankel", "legs", "bsp", "bsp-noretrain", "h2", "h2-noretrain", "modal-hinf",
                   "modal-hinf-noretrain", "hankel-bt", "hankel-bt-noretrain", "in-training"}
    at_r = [r for r in rows if r["state_dim"] == 4]
    assert len({(r["ssm_params"], r["params"], tuple(r["state_dims"])) for r in at_r}) == 1
    hankel_cfg = json.loads((out / "s4d" / "seed0" / "original-hankel" / "config.json").read_text())
    assert hankel_cfg["train"]["hankel_reg"] == 0.1 and hankel_cfg["train"]["hankel_order"] == 4
    assert hankel_cfg["train"]["hankel_sample"] == 0.5 and hankel_cfg["train"]["hankel_relative"] is True
    assert hankel_cfg["train"]["select_rank"] == 4 and hankel_cfg["train"]["hankel_horizon"] == "finite"
    assert json.loads((out / "s4d" / "seed0" / "original-hankel" / "summary.json").read_text())["selected_by"] \
        == "validation accuracy after bt to order 4"
    assert ("beyond order 4 as a share of all of them, finite-horizon (sequence length) Gramians, channel sample "
            "0.5, best epoch chosen by validation accuracy after BT to order 4") in (out / "report.md").read_text()
    assert json.loads((out / "experiment.json").read_text())["hankel_horizon"] == "finite"
    assert json.loads((out / "s4d" / "seed0" / "original" / "config.json").read_text())["train"]["select_rank"] is None
    intr = json.loads((out / "s4d" / "seed0" / "r4" / "in-training" / "summary.json").read_text())
    assert intr["state_dims"] == [4] and [r["epoch"] for r in intr["reductions"]] == [1, 2, 3]
    assert next(r for r in rows if r["method"] == "in-training")["max_epochs"] == 4      # epochs + main epochs


def test_experiment_in_training_has_an_equal_size_control_on_its_schedule(tmp_path, capsys):
    """legs-schedule: a fresh size-r Skew-HiPPO model with in-training's cap and its no-stop floor (the epoch after
    the last reduction); in-training is compared with it, and it is not itself compared with legs / legs-budget."""
    out = tmp_path / "exp"
    rows = _small_experiment(out, capsys, "legs,legs-budget,in-training,legs-schedule", 8, 3, 1,
                             extra=("--patience", "1", "--seeds", "2"))
    # fresh models only: no N model is trained
    assert {r["method"] for r in rows} == {"legs", "legs-budget", "in-training", "legs-schedule"}
    assert not (out / "s4d" / "seed0" / "original").exists()
    assert {r["seed"] for r in rows} == {0, 1}
    ctrl = json.loads((out / "s4d" / "seed0" / "r4" / "legs-schedule" / "config.json").read_text())
    intr = json.loads((out / "s4d" / "seed0" / "r4" / "in-training" / "config.json").read_text())
    assert (ctrl["train"]["epochs"], ctrl["train"]["min_epochs"], ctrl["train"]["patience"]) == (4, 4, 1)
    assert ctrl["train"]["reduce_at"] == [] and intr["train"]["reduce_at"] == [1, 2, 3]
    same = ("lr", "ssm_lr", "weight_decay", "warmup", "batch_size", "seed", "epochs", "patience")
    assert {k: ctrl["train"][k] for k in same} == {k: intr["train"][k] for k in same}
    assert ctrl["model"]["init"] == "legs" and ctrl["model"]["state_dim"] == 4
    by = {r["method"]: r for r in rows if r["seed"] == 0}
    assert by["legs-schedule"]["state_dims"] == by["in-training"]["state_dims"] == [4]
    assert by["legs-schedule"]["params"] == by["in-training"]["params"] == by["legs"]["params"]
    comps = json.loads((out / "summary.json").read_text())["comparisons"]
    pairs = {(c["method"], c["reference"]) for c in comps}
    assert ("in-training", "legs-schedule") in pairs and ("in-training", "legs-budget") in pairs
    assert not any(m == "legs-schedule" for m, _ in pairs)
    c = next(c for c in comps if c["reference"] == "legs-schedule")
    assert c["same_size"] and c["n"] == 2 and c["t_p"] is not None and c["family"] == 1
    assert c["holm_p"] == c["holm_p_ranks"] == c["t_p"]
    acc = lambda m: [r["test_accuracy"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == m]
    assert c["mean_diff"] == pytest.approx(np.mean(np.subtract(acc("in-training"), acc("legs-schedule"))))
    # the control adds no test to the families against legs / legs-budget
    against_budget = [x for x in comps if x["reference"] == "legs-budget"]
    assert sorted(x["method"] for x in against_budget) == ["in-training", "legs"]
    assert all(x["family"] == 2 for x in against_budget)
    assert "Skew-HiPPO, in-training's schedule" in (out / "report.md").read_text()
    # without early stopping there is no floor: the control trains the whole cap, as in-training does
    cfg = exp_mod.in_training_schedule({"patience": 0, "lr": 0.01}, 60, 40, seed=3)
    assert (cfg.epochs, cfg.min_epochs, cfg.seed) == (100, 0, 3)
    cfg = exp_mod.in_training_schedule({"patience": 4}, 60, 40, seed=0)
    assert (cfg.epochs, cfg.min_epochs) == (100, 65)


def test_experiment_layer_adaptive_methods_match_the_total_size(tmp_path, capsys):
    """bt-adaptive and last split layers x r/2 stored modes between the layers by one global threshold:
    per-layer sizes may differ from the uniform r, parameter counts and the total state may not."""
    out = tmp_path / "exp"
    rows = _small_experiment(out, capsys, "legs,bt-adaptive,last", 16, 2, 3)
    assert {r["method"] for r in rows} == {"original", "legs", "bt-adaptive", "bt-adaptive-noretrain", "last",
                                           "last-noretrain"}
    legs = next(r for r in rows if r["method"] == "legs")
    assert legs["state_dims"] == [4, 4, 4]
    for r in rows:
        if r["method"] not in ("original", "legs"):
            assert sum(r["state_dims"]) == 12 and r["ssm_params"] == legs["ssm_params"] and r["params"] == legs["params"]
    for name, method in (("bt-adaptive", "bt"), ("last", "modal-hinf")):
        comp = json.loads((out / "s4d" / "seed0" / "r4" / f"{name}-compressed" / "summary.json").read_text())
        assert comp["method"] == method and comp["budget"] == 0.25 and comp["rank"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert all(c["same_size"] for c in summary["comparisons"])
    assert "LAST (H-inf scores, global threshold)" in (out / "report.md").read_text()


def test_experiment_has_one_section_per_kernel(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "--data", "digits", "--state-dim", "8", "--ranks", "4", "--seeds", "1", "--epochs", "1",
                 "--methods", "bt", "--kernel", "s4d,dss-exp", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    report = (out / "report.md").read_text()
    assert "## Kernel `s4d`" in report and "## Kernel `dss-exp`" in report
    rows = json.loads((out / "results.json").read_text())
    assert {(r["kernel"], r["method"]) for r in rows} == {(k, m) for k in ("s4d", "dss-exp")
                                                          for m in ("original", "bt", "bt-noretrain")}
    for kernel in ("s4d", "dss-exp"):
        assert (out / f"accuracy_vs_params_{kernel}.png").is_file()


def test_experiment_report_only_reads_finished_sub_runs_and_lists_the_rest(tmp_path, capsys, monkeypatch):
    out = tmp_path / "exp"
    base = ["experiment", "--data", "digits", "--state-dim", "8", "--epochs", "1", "--main-epochs", "1",
            "--seeds", "1", "--out", str(out), *TINY]
    assert main(["experiment", "--data", "digits", "--out", str(out), "--report-only", *TINY]) == 2
    assert "holds no experiment" in capsys.readouterr().err
    # rank 4 with bt and legs, rank 2 with legs only: methods run at different ranks
    assert main(base + ["--ranks", "4", "--methods", "bt,legs"]) == 0
    assert main(base + ["--ranks", "2", "--methods", "legs"]) == 0
    capsys.readouterr()
    calls = []
    monkeypatch.setattr(exp_mod, "train", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(exp_mod, "compress_run", lambda *a, **k: calls.append(a))
    assert main(base + ["--ranks", "4,2", "--methods", "bt,bt-noretrain,legs", "--report-only"]) == 0
    assert calls == []                                    # nothing trained or compressed
    rows = json.loads((out / "results.json").read_text())
    got = sorted((r["method"], r.get("rank")) for r in rows)
    assert got == sorted([("original", None), ("bt", 4), ("bt-noretrain", 4), ("legs", 4), ("legs", 2)])
    report = (out / "report.md").read_text()
    assert ("Report only: 1 selected sub-run is not finished; the rows that need it are left out: "
            "`s4d/seed0/r2/bt-compressed`.") in report
    assert json.loads((out / "summary.json").read_text())["missing"] == ["s4d/seed0/r2/bt-compressed"]
    # nothing selected is finished: one sentence, exit 2
    capsys.readouterr()
    assert main(base + ["--ranks", "4", "--seeds", "3,", "--methods", "bt,legs", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "none of the 4 selected sub-runs" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--ranks", "4", "--seeds", "3,", "--methods", "legs", "--report-only"]) == 2
    assert "none of the 1 selected sub-run in" in capsys.readouterr().err      # a fresh model needs no original


def test_experiment_report_includes_earlier_results_for_sub_runs_the_folder_lost(tmp_path, capsys, monkeypatch):
    out, keep = tmp_path / "exp", tmp_path / "kept"
    base = ["experiment", "--data", "digits", "--state-dim", "8", "--epochs", "1", "--main-epochs", "1",
            "--seeds", "1", "--out", str(out), *TINY]
    assert main(base + ["--ranks", "4", "--methods", "bt,legs"]) == 0
    capsys.readouterr()
    keep.mkdir()
    for name in ("results.json", "experiment.json"):
        shutil.copy(out / name, keep / name)
    earlier = {(r["method"], r["rank"]): r for r in json.loads((keep / "results.json").read_text())}
    assert earlier[("bt-noretrain", 4)]["reductions"]            # the reduction as run travels with the row
    # the folder loses its compressed run and the main training from it (bt-noretrain and bt)
    shutil.rmtree(out / "s4d" / "seed0" / "r4" / "bt-compressed")
    shutil.rmtree(out / "s4d" / "seed0" / "r4" / "bt")
    calls = []
    monkeypatch.setattr(exp_mod, "train", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(exp_mod, "compress_run", lambda *a, **k: calls.append(a))
    report_args = base + ["--ranks", "4", "--methods", "bt,legs", "--report-only"]
    kept = str(keep / "results.json")
    assert main(report_args + ["--include-results", kept]) == 0
    assert calls == []
    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["method"], r["rank"]) for r in rows) == sorted(earlier)
    for r in rows:
        assert r["test_accuracy"] == earlier[(r["method"], r["rank"])]["test_accuracy"]
    report = (out / "report.md").read_text()
    assert f"- 2 rows from the earlier results `{kept}`" in report
    assert ("- 2 sub-runs both in this folder and in those results (made again here): 2 with the same test "
            "accuracy; the report uses the ones made here.") in report
    assert "Report only" not in report                   # nothing is missing
    assert "bt: horizon" in report                       # the reduction as run, read from the included row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["included"] == {kept: 2}
    assert [c["sub_run"] for c in summary["rechecked"]] == ["s4d/seed0/original", "s4d/seed0/legs/r4"]
    assert all(c["same"] for c in summary["rechecked"])
    # the folder's own results.json: its rows of sub-runs still in the folder are not read twice
    own = tmp_path / "own.json"
    shutil.copy(out / "results.json", own)
    assert main(report_args + ["--include-results", str(out / "results.json")]) == 0
    report = (out / "report.md").read_text()
    assert "- 2 rows from the earlier results" in report and "both in this folder" not in report
    assert sorted((r["method"], r["rank"]) for r in json.loads((out / "results.json").read_text())) == sorted(earlier)
    # a sub-run in both whose accuracy differs: the folder's row is used and the report names it
    changed = json.loads((keep / "results.json").read_text())
    for r in changed:
        if r["method"] == "legs":
            r["test_accuracy"] = 0.123
    (keep / "results.json").write_text(json.dumps(changed))
    assert main(report_args + ["--include-results", kept]) == 0
    report = (out / "report.md").read_text()
    assert "1 with the same test accuracy, differing: `s4d/seed0/legs/r4` (" in report and "12.30 % there)" in report
    legs = [r for r in json.loads((out / "results.json").read_text()) if r["method"] == "legs"]
    assert legs[0]["test_accuracy"] == earlier[("legs", 4)]["test_accuracy"] != 0.123
    capsys.readouterr()
    # the parent made again with another accuracy: the included rows built on it came from another parent
    for r in changed:
        if r["method"] == "original":
            r["test_accuracy"] = 0.456
    (keep / "results.json").write_text(json.dumps(changed))
    assert main(report_args + ["--include-results", kept]) == 2
    err = capsys.readouterr().err
    assert "s4d seed 0 original was made again with another test accuracy" in err
    assert "so the included s4d seed 0 bt r=4 came from another parent" in err
    # other settings, no experiment.json beside the file, not a list of rows, training with it: one sentence each
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((keep / "experiment.json").read_text())
    (other / "experiment.json").write_text(json.dumps({**cfg, "epochs": 2}))
    shutil.copy(own, other / "results.json")
    assert main(report_args + ["--include-results", str(other / "results.json")]) == 2
    assert "made with other settings (epochs)" in capsys.readouterr().err
    (other / "experiment.json").write_text("[1, 2]")
    assert main(report_args + ["--include-results", str(other / "results.json")]) == 2
    assert "is not an experiment's settings" in capsys.readouterr().err
    (other / "experiment.json").unlink()
    assert main(report_args + ["--include-results", str(other / "results.json")]) == 2
    assert "has no experiment.json beside it" in capsys.readouterr().err
    (other / "experiment.json").write_text(json.dumps(cfg))
    (other / "results.json").write_text(json.dumps([{"method": "bt"}]))
    assert main(report_args + ["--include-results", str(other / "results.json")]) == 2
    assert "is not a list of experiment rows" in capsys.readouterr().err
    assert main(report_args + ["--include-results", str(tmp_path / "nothing.json")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert main(base + ["--ranks", "4", "--methods", "bt,legs", "--include-results", kept]) == 2
    err = capsys.readouterr().err
    assert "--include-results needs --report-only" in err and len(err.strip().splitlines()) == 1
    # two included files that disagree on a sub-run: both are named
    shutil.copy(own, other / "results.json")
    assert main(report_args + ["--include-results", kept, "--include-results", str(other / "results.json")]) == 2
    err = capsys.readouterr().err
    assert f"included results disagree on s4d seed 0 original: test accuracy 0.456 in {kept}" in err
    assert str(other / "results.json") in err
    with pytest.raises(ValueError, match="only read by a report-only invocation"):
        exp_mod.run_experiment(exp_mod.ExperimentConfig(data="digits"), out, include=[keep / "results.json"])
