"""In-training reduction (train --reduce-to r --reduce-at E1,E2): schedule, sizes, resume, errors."""
import json

import pytest
import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress.cli import main
from ssmcompress.train import TrainConfig, reduction_schedule

TINY = ["--data", "digits", "--d-model", "6", "--layers", "2", "--batch-size", "256", "--quiet"]


def test_schedule_is_geometric_even_and_ends_at_the_target():
    assert reduction_schedule(64, 8, 3) == [32, 16, 8]
    assert reduction_schedule(64, 8, 1) == [8]
    for n_from, n_to, k in ((64, 6, 4), (32, 2, 5), (16, 12, 3)):
        s = reduction_schedule(n_from, n_to, k)
        assert s[-1] == n_to and all(r % 2 == 0 for r in s) and s == sorted(s, reverse=True)


def test_train_reduces_in_steps_and_ends_at_the_final_size(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--state-dim", "16", "--epochs", "4", "--reduce-to", "4", "--reduce-at", "1,2",
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["state_dims"] == [4, 4]
    assert [r["state_dims"] for r in summary["reductions"]] == [[8, 8], [4, 4]]
    model, cfg = ckpt.load_model(out)                  # config and weights agree on the final size
    assert model.state_dims == [4, 4] and cfg["model"]["state_dim"] == [4, 4]
    assert summary["best_epoch"] > 2                   # the best model is one of the final size
    assert main(["evaluate", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(summary["test_accuracy"])


def test_a_reduced_run_resumes_at_its_size(tmp_path, capsys, monkeypatch):
    import ssmcompress.train as train_mod

    out = tmp_path / "run"
    argv = ["train", *TINY, "--state-dim", "12", "--epochs", "3", "--reduce-to", "4", "--reduce-at", "1",
            "--out", str(out)]
    real = train_mod.evaluate
    calls = []

    def die_on_second_epoch(*a, **k):            # killed in the validation of epoch 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", die_on_second_epoch)
    assert main(argv) == 130
    monkeypatch.setattr(train_mod, "evaluate", real)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    model, _ = ckpt.load_model(out)
    assert model.state_dims == [4, 4]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_bad_reduction_arguments_are_one_sentence(tmp_path, capsys):
    base = ["train", *TINY, "--state-dim", "8", "--epochs", "3"]
    assert main(base + ["--reduce-at", "1", "--out", str(tmp_path / "a")]) == 2
    assert "reduce_at" in capsys.readouterr().err
    assert main(base + ["--reduce-to", "4", "--reduce-at", "3", "--out", str(tmp_path / "b")]) == 2
    assert "reduce_at" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reduce_method"):
        TrainConfig(reduce_method="svd")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_select_rank_chooses_the_epoch_by_the_reduced_models_validation_accuracy(tmp_path, capsys):
    from ssmcompress.compress import compress_model
    from ssmcompress.data import load_dataset
    from ssmcompress.train import evaluate

    out = tmp_path / "run"
    assert main(["train", *TINY, "--state-dim", "8", "--epochs", "5", "--hankel-reg", "0.1", "--hankel-order", "2",
                 "--select-rank", "2", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reduced = [r["val_accuracy_reduced"] for r in rows]
    assert len(rows) == 5 and summary["best_epoch"] == 1 + reduced.index(max(reduced))
    assert summary["best_val_accuracy_reduced"] == max(reduced)
    assert summary["best_val_accuracy"] == rows[summary["best_epoch"] - 1]["val_accuracy"]     # the full model's
    assert summary["selected_by"] == "validation accuracy after bt to order 2"
    # the kept model, reduced to order 2 without retraining, has exactly the score it was chosen by
    model, _ = ckpt.load_model(out)
    small, _ = compress_model(model, method="bt", rank=2)
    data = load_dataset("digits")
    assert evaluate(small, *data.split("val"), task=data.task)["accuracy"] == max(reduced)
    assert json.loads((out / "config.json").read_text())["train"]["select_rank"] == 2


def test_select_rank_only_chooses_it_does_not_change_the_training(tmp_path):
    """The reduction at each epoch builds a model (random draws); the run with --select-rank must train exactly
    as the same run without it, dropout masks included, and its early stop must follow the reduced score."""
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import train

    data = load_dataset("digits")
    make = lambda: (torch.manual_seed(0), SequenceModel(d_input=1, d_output=10, d_model=6, layers=2, state_dim=8,
                                                        l_max=64, dropout=0.2))[1]
    cfg = dict(epochs=6, batch_size=256, seed=0, hankel_reg=0.1, hankel_order=2, patience=1)
    plain = train(make(), data, TrainConfig(**cfg, min_epochs=6), tmp_path / "plain", progress=False)
    chosen = train(make(), data, TrainConfig(**cfg, select_rank=2), tmp_path / "chosen", progress=False)
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    a, b = read("plain"), read("chosen")
    for ra, rb in zip(a, b):
        assert (ra["train_loss"], ra["val_loss"], ra["hankel_penalty"]) == (rb["train_loss"], rb["val_loss"],
                                                                            rb["hankel_penalty"])
    reduced = [r["val_accuracy_reduced"] for r in b]
    assert chosen["best_epoch"] == 1 + reduced.index(max(reduced))
    # patience 1 on the reduced score: stopped one epoch after its best, or ran to the cap
    assert chosen["epochs"] == (chosen["best_epoch"] + 1 if chosen["stopped_early"] else 6)
    assert plain["epochs"] == 6 and len(a) == 6


def test_select_rank_errors(tmp_path, capsys):
    from ssmcompress.data import load_dataset
    from ssmcompress.nn import SequenceModel
    from ssmcompress.train import train

    model = SequenceModel(d_input=1, d_output=10, d_model=4, layers=1, state_dim=4, l_max=64)
    with pytest.raises(ValueError, match=r"select_rank=4 does not reduce a model of state dims \[4\]"):
        train(model, load_dataset("digits"), TrainConfig(epochs=1, select_rank=4), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()                   # refused before anything is written
    with pytest.raises(ValueError, match="select_rank=3 is invalid; expected None or a positive even integer"):
        TrainConfig(select_rank=3)
    with pytest.raises(ValueError, match="select_rank=2 is invalid.*not together with reduce_to"):
        TrainConfig(epochs=3, select_rank=2, reduce_to=2, reduce_at=[1])
    for extra, want in ((["--select-rank", "8"], "--select-rank 8 does not reduce a model of state dims [8, 8]"),
                        (["--select-rank", "4", "--reduce-to", "4", "--reduce-at", "1"],
                         "--select-rank 4 and --reduce-to 4 exclude each other")):
        assert main(["train", *TINY, "--state-dim", "8", "--epochs", "2", *extra, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_the_schedule_controls_floor_is_the_first_epoch_in_training_can_stop(tmp_path, monkeypatch):
    """in_training_schedule holds early stopping off until the first epoch at which in-training itself can stop:
    its last reduction (after epoch L) restarts the best tracking, so patience p stops it at L + 1 + p at the
    earliest.  With a validation score that never improves, both runs stop exactly there."""
    import ssmcompress.train as train_mod
    from ssmcompress.data import load_dataset
    from ssmcompress.experiment import in_training_schedule
    from ssmcompress.nn import SequenceModel

    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"loss": 1.0, "accuracy": 0.5})
    data = load_dataset("digits")
    common = {"batch_size": 256, "patience": 2}
    intr = TrainConfig(**common, epochs=10, seed=0, reduce_to=4, reduce_at=[1, 2, 3])
    ctrl = in_training_schedule(common, 3, 7, seed=0)
    assert (ctrl.epochs, ctrl.min_epochs, ctrl.reduce_at) == (10, 6, [])
    make = lambda: SequenceModel(**data.model_shape(), d_model=4, layers=1, state_dim=16)
    ran = {name: train_mod.train(make(), data, cfg, tmp_path / name, progress=False)
           for name, cfg in (("in-training", intr), ("control", ctrl))}
    assert [ran[n]["epochs"] for n in ran] == [6, 6]
    assert ran["in-training"]["best_epoch"] == 4 and ran["control"]["best_epoch"] == 1
    # the floor never exceeds the cap, and without early stopping there is none
    assert in_training_schedule({"patience": 9}, 3, 2, seed=0).min_epochs == 5
    assert in_training_schedule({"patience": 0}, 3, 2, seed=0).min_epochs == 0
