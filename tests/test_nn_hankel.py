"""The differentiable Hankel penalty (nn/hankel.py): values against lti and 60-digit references,
gradients against finite differences, its effect in training, and the train command's flags."""
import json

import numpy as np
import pytest
import torch

from ssmcompress import train as train_mod
from ssmcompress.cli import main
from ssmcompress.compress import layer_system, resolve_horizon
from ssmcompress.lti import hankel_singular_values
from ssmcompress.nn import SequenceModel, SSMLayer
from ssmcompress.nn.hankel import gramian_horizon, hankel_penalty, layer_hankel_singular_values

INITS = ["legs", "lin", "inv", "real", "random"]


def _layer(kernel, init="legs", H=6, N=16, l_max=120, seed=0, shake=0.1, **kw):
    """A float64 layer with its parameters moved off the initialisation (as training does)."""
    torch.manual_seed(seed)
    layer = SSMLayer(H, N, kernel=kernel, init=init, l_max=l_max, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(shake * torch.randn_like(p))
    return layer


def _relative_error(got, ref, floor):
    keep = ref >= floor * ref[:, :1]
    return np.max(np.abs(got - ref)[keep] / ref[keep])


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("kernel", ["s4d", "bilinear", "dss-exp"])
@pytest.mark.parametrize("init", INITS)
def test_infinite_horizon_values_match_lti(kernel, init):
    layer = _layer(kernel, init)
    sys = layer_system(layer)
    assert gramian_horizon(layer) is None and resolve_horizon("infinite", layer, sys) is None
    ref = hankel_singular_values(sys)
    got = layer_hankel_singular_values(layer).detach().numpy()
    assert got.shape == ref.shape == (6, 16)
    assert np.all(np.diff(got, axis=-1) <= 0)
    assert _relative_error(got, ref, 1e-8) < 1e-8


@pytest.mark.parametrize("log_re", [-10.0, -14.0])
def test_modes_near_the_unit_circle(log_re):
    """Slow modes (1 - |lam_d| down to ~1e-9): 1 - mu_i conj(mu_j) is formed without cancellation."""
    layer = _layer("s4d", "legs", seed=2, shake=0.0)
    with torch.no_grad():
        layer.log_A_real[:, :3] = log_re + torch.randn(6, 3, dtype=torch.float64)
    sys = layer_system(layer)
    assert (1 - np.abs(sys.modes)).min() < (1e-7 if log_re == -10 else 1e-8)
    got = layer_hankel_singular_values(layer).detach().numpy()
    assert _relative_error(got, hankel_singular_values(sys), 1e-8) < 1e-10


@pytest.mark.parametrize("init", INITS)
def test_dss_softmax_uses_the_finite_horizon_of_compress(init):
    layer = _layer("dss-softmax", init)
    sys = layer_system(layer)
    assert gramian_horizon(layer) == resolve_horizon("finite", layer, sys) == 120
    ref = hankel_singular_values(sys, horizon=120)
    got = layer_hankel_singular_values(layer).detach().numpy()
    # both are accurate to ~1e-9 relative for the values above 1e-4 of the largest (60-digit tests below)
    assert _relative_error(got, ref, 1e-4) < 1e-8


def _reference_hsv(lam, B, C, L):
    """Finite-horizon Hankel singular values of one channel with 60 digits (closed-form Gramians, eig(PQ))."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    mu = [mpmath.mpc(complex(v)) for v in np.concatenate([lam, lam.conj()])]
    beta = [mpmath.mpc(complex(v)) for v in np.concatenate([B, B.conj()])]
    gamma = [mpmath.mpc(complex(v)) for v in np.concatenate([C, C.conj()])]
    m = len(mu)

    def geometric(x):
        return L if x == 1 else (1 - x ** L) / (1 - x)

    P, Q = mpmath.matrix(m, m), mpmath.matrix(m, m)
    for i in range(m):
        for j in range(m):
            P[i, j] = beta[i] * mpmath.conj(beta[j]) * geometric(mu[i] * mpmath.conj(mu[j]))
            Q[i, j] = mpmath.conj(gamma[i]) * gamma[j] * geometric(mpmath.conj(mu[i]) * mu[j])
    ev = mpmath.eig(P * Q, left=False, right=False)
    return np.array(sorted((float(mpmath.sqrt(abs(mpmath.re(e)))) for e in ev), reverse=True))


@pytest.mark.parametrize("init", ["legs", "lin"])
def test_finite_horizon_values_against_60_digits(init):
    layer = _layer("dss-softmax", init, H=3, N=12, l_max=100, seed=3)
    with torch.no_grad():  # growing modes, and one just inside the unit circle
        layer.A_real[0, :3] = torch.tensor([0.02, 1e-3, -1e-6], dtype=torch.float64)
    sys = layer_system(layer)
    got = layer_hankel_singular_values(layer).detach().numpy()
    for h in range(3):
        ref = _reference_hsv(sys.modes[h], sys.B[h], sys.C[h], 100)
        # the Gramians are formed in float64: absolute accuracy ~1e-12 of the largest value (measured 2e-12)
        np.testing.assert_array_less(np.abs(got[h] - ref), 1e-8 * ref + 1e-11 * ref[0])
        assert _relative_error(got[h:h + 1], ref[None], 1e-4) < 1e-8
        # lti's values (what compress ranks and reports): the finite-horizon kernel without cancellation near
        # the unit circle, unpaired pivoting (pair pivoting cost 7e-7 relative here, 1.5e-3 on other channels)
        lti = hankel_singular_values(sys[h:h + 1], horizon=100)[0]
        np.testing.assert_array_less(np.abs(lti - ref), 1e-10 * ref + 1e-13 * ref[0])     # measured 4e-11, 2e-14


def test_float32_layer_uses_its_own_kernel_system():
    """A float32 layer: the penalty sees lam_d rounded as the kernel does, B_d and C unrounded."""
    torch.manual_seed(1)
    layer = SSMLayer(4, 16, kernel="s4d", init="legs")
    sys = layer.system()
    lam_d, B_d, C = sys.lam_d, sys.B_d, sys.C
    assert lam_d.dtype == torch.complex128 and lam_d.requires_grad
    s = layer.discrete_system()
    torch.testing.assert_close(lam_d.detach().to(torch.complex64), s["lam_d"], rtol=0, atol=0)
    torch.testing.assert_close(B_d.detach().to(torch.complex64), s["B_d"])
    ref = hankel_singular_values(layer_system(layer, exact=False))  # the rounded form: B_d, C in float32
    got = layer_hankel_singular_values(layer).detach().numpy()
    assert _relative_error(got, ref, 1e-6) < 1e-6


# ----------------------------------------------------------------------------- gradients

def _as_function(layer, order, relative=False, horizon="auto"):
    names = [n for n, _ in layer.named_parameters()]

    def penalty(*params):
        saved = dict(layer._parameters)
        layer._parameters.update(dict(zip(names, params)))
        try:
            return hankel_penalty(layer, order, relative=relative, horizon=horizon)
        finally:
            layer._parameters.update(saved)

    return penalty, tuple(p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters())


@pytest.mark.parametrize("kernel", ["s4d", "bilinear", "dss-exp", "dss-softmax"])
@pytest.mark.parametrize("order", [None, 3])
def test_gradient_matches_finite_differences(kernel, order):
    layer = _layer(kernel, "lin", H=2, N=8, l_max=50, seed=1, shake=0.05, learn_B=True, dt_min=0.05, dt_max=0.5)
    penalty, params = _as_function(layer, order)
    assert {"log_dt", "A_imag", "B", "C"} <= {n for n, _ in layer.named_parameters()}
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["s4d", "dss-softmax"])
def test_gradient_of_the_relative_penalty_matches_finite_differences(kernel):
    layer = _layer(kernel, "lin", H=2, N=8, l_max=50, seed=2, shake=0.05, learn_B=True, dt_min=0.05, dt_max=0.5)
    penalty, params = _as_function(layer, 3, relative=True)
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["s4d", "dss-exp"])
def test_gradient_of_the_finite_horizon_penalty_matches_finite_differences(kernel):
    layer = _layer(kernel, "lin", H=2, N=8, l_max=40, seed=3, shake=0.05, learn_B=True, dt_min=0.01, dt_max=0.1)
    penalty, params = _as_function(layer, 3, horizon="finite")
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_finite_horizon_penalty_is_over_the_layer_length():
    # slow modes (small dt) over a short length: the finite-horizon values are far below the infinite ones
    layer = _layer("s4d", "legs", H=3, N=16, l_max=40, seed=4, dt_min=0.001, dt_max=0.01)
    fin = float(hankel_penalty(layer, 4, horizon="finite").detach())
    assert fin == float(hankel_penalty(layer, 4, horizon=40).detach())
    assert resolve_horizon("auto", layer, layer_system(layer), "bt") == 40      # what compress reduces over
    assert float(hankel_penalty(layer, 4, horizon="auto").detach()) == float(hankel_penalty(layer, 4, horizon=None).detach())
    assert fin < 0.5 * float(hankel_penalty(layer, 4, horizon=None).detach())
    # against lti's finite-horizon values (the Gramians compress reduces with)
    ref = hankel_singular_values(layer_system(layer), horizon=40)
    got = layer_hankel_singular_values(layer, horizon="finite").detach().numpy()
    assert _relative_error(got, ref, 1e-6) < 1e-7
    assert fin == pytest.approx(float(ref[:, 4:].sum()) / 3, rel=1e-8)
    with pytest.raises(ValueError, match="horizon='finite' needs the layer's kernel length"):
        hankel_penalty(_layer("s4d", H=2, N=4, l_max=None), 2, horizon="finite")


def test_gradient_is_finite_on_a_model_at_initialisation():
    torch.manual_seed(0)
    model = SequenceModel(1, 3, d_model=8, layers=2, state_dim=32, kernel="s4d", init="legs")
    hankel_penalty(model, 4).backward()
    grads = [p.grad for layer in model.ssm_layers() for p in layer.parameters() if p.grad is not None]
    assert len(grads) >= 4 and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.decoder.parameters())


# ----------------------------------------------------------------------------- definition

def test_penalty_is_the_channel_mean_of_the_tail():
    torch.manual_seed(0)
    model = SequenceModel(1, 3, d_model=5, layers=3, state_dim=[16, 8, 16], kernel="s4d").double()
    hsv = [layer_hankel_singular_values(layer).detach() for layer in model.ssm_layers()]
    for order in (None, 0, 2, 9):
        start = 0 if order is None else order
        want = sum(float(h[:, start:].sum()) for h in hsv) / 15
        assert float(hankel_penalty(model, order).detach()) == pytest.approx(want, rel=1e-12)
    assert float(hankel_penalty(model, 16).detach()) == 0.0
    assert float(hankel_penalty(model.ssm_layers()[1], 2).detach()) == pytest.approx(float(hsv[1][:, 2:].sum()) / 5)


def test_relative_penalty_is_the_channel_mean_of_the_tail_share_and_ignores_scale():
    torch.manual_seed(0)
    model = SequenceModel(1, 3, d_model=5, layers=2, state_dim=[16, 8], kernel="s4d").double()
    hsv = [layer_hankel_singular_values(layer).detach() for layer in model.ssm_layers()]
    for order in (0, 2, 9):
        want = sum(float((h[:, order:].sum(1) / h.sum(1)).sum()) for h in hsv) / 10
        assert float(hankel_penalty(model, order, relative=True).detach()) == pytest.approx(want, rel=1e-12)
    assert float(hankel_penalty(model, 0, relative=True).detach()) == pytest.approx(1.0, rel=1e-14)
    before_abs = float(hankel_penalty(model, 2).detach())
    before_rel = float(hankel_penalty(model, 2, relative=True).detach())
    with torch.no_grad():                          # the same kernels, 7 times larger
        for layer in model.ssm_layers():
            layer.C.mul_(7.0)
    assert float(hankel_penalty(model, 2).detach()) == pytest.approx(7 * before_abs, rel=1e-10)
    assert float(hankel_penalty(model, 2, relative=True).detach()) == pytest.approx(before_rel, rel=1e-10)
    with torch.no_grad():                          # a channel with no output has no energy and contributes 0
        model.ssm_layers()[1].C[0].zero_()
    h1 = layer_hankel_singular_values(model.ssm_layers()[1]).detach()
    share = [float(h[:, 2:].sum(1)[i] / h.sum(1)[i]) for h in [layer_hankel_singular_values(model.ssm_layers()[0]).detach()]
             for i in range(5)] + [0.0] + [float(h1[i, 2:].sum() / h1[i].sum()) for i in range(1, 5)]
    assert float(hankel_penalty(model, 2, relative=True).detach()) == pytest.approx(sum(share) / 10, rel=1e-10)


def test_sampled_penalty_is_an_unbiased_estimate_of_the_full_one():
    """Each draw is the channel mean over a random subset (weighted by group size); its expectation over
    all subsets is the full penalty: checked exactly by averaging over every subset of one group."""
    import itertools

    torch.manual_seed(0)
    model = SequenceModel(1, 3, d_model=4, layers=2, state_dim=[16, 8], kernel="s4d").double()
    hsv = [layer_hankel_singular_values(layer).detach() for layer in model.ssm_layers()]
    tails = [h[:, 2:].sum(-1) for h in hsv]              # per channel, beyond r = 2
    full = float(hankel_penalty(model, 2).detach())
    assert full == pytest.approx(float(sum(t.sum() for t in tails)) / 8, rel=1e-12)
    # sample = 0.5: 2 of 4 channels per group; the estimate is (4/2) * (sum of the two) per group, over 8
    subsets = list(itertools.combinations(range(4), 2))
    expect = sum(sum(float(2 * t[list(c)].sum()) for c in subsets) / len(subsets) for t in tails) / 8
    assert expect == pytest.approx(full, rel=1e-12)
    # the draws themselves: each is one of those values, and their mean tends to the full penalty
    g = torch.Generator().manual_seed(3)
    draws = [float(hankel_penalty(model, 2, sample=0.5, generator=g).detach()) for _ in range(400)]
    possible = {round(sum(float(2 * t[list(c)].sum()) for t, c in zip(tails, cs)) / 8, 10)
                for cs in itertools.product(subsets, subsets)}
    assert all(round(d, 10) in possible for d in draws)
    assert np.mean(draws) == pytest.approx(full, rel=0.05)
    assert len(set(round(d, 10) for d in draws)) > 5
    # a tiny fraction still draws one channel per group, and the draw is reproducible
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(hankel_penalty(model, 2, sample=0.01, generator=g1), hankel_penalty(model, 2, sample=0.01, generator=g2))
    hankel_penalty(model, 2, sample=0.5).backward()     # differentiable
    assert model.ssm_layers()[0].log_A_real.grad is not None


@pytest.mark.parametrize("bad, phrase", [
    (dict(sample=0), "sample"), (dict(sample=1.5), "sample"), (dict(sample=True), "sample"),
    (dict(order=-1), "order"), (dict(order=2.5), "order"), (dict(horizon=0), "horizon"),
    (dict(relative=True), "needs an order"), (dict(order=2, relative=1), "relative must be True or False"),
])
def test_penalty_argument_errors(bad, phrase):
    layer = _layer("s4d", H=2, N=4)
    with pytest.raises(ValueError, match=phrase):
        hankel_penalty(layer, **bad)
    with pytest.raises(ValueError, match="SSMLayer"):
        hankel_penalty(torch.nn.Linear(2, 2))


def test_infinite_horizon_refuses_unstable_modes():
    layer = _layer("dss-softmax", H=2, N=4)
    with torch.no_grad():
        layer.A_real[0, 0] = 0.1
    with pytest.raises(ValueError, match="unit circle"):
        layer_hankel_singular_values(layer, horizon=None)
    assert torch.isfinite(layer_hankel_singular_values(layer)).all()  # auto: finite horizon


# ----------------------------------------------------------------------------- effect

def _tail_after_fitting(weight, order=4, steps=60):
    """Fit one SSM layer to a richer teacher layer; return the mean tail beyond ``order`` and the
    relative fit error (1 would be predicting zero)."""
    torch.manual_seed(0)
    teacher = SSMLayer(2, 16, kernel="s4d", init="lin", dt_min=0.05, dt_max=0.2).double()
    torch.manual_seed(1)
    student = SSMLayer(2, 16, kernel="s4d", init="legs", dt_min=0.05, dt_max=0.2).double()
    u = torch.randn(8, 48, 2, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(u)
    opt = torch.optim.Adam(student.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(student(u), y) / y.var()
        if weight:
            loss = loss + weight * hankel_penalty(student, order)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(hankel_penalty(student, order)), float(torch.nn.functional.mse_loss(student(u), y) / y.var())


def test_training_with_the_penalty_shrinks_the_tail():
    tail_plain, err_plain = _tail_after_fitting(0.0)
    tail_reg, err_reg = _tail_after_fitting(0.1)
    assert tail_reg < 0.4 * tail_plain      # measured: 0.46 against 1.88
    assert err_reg < 0.2                    # and it still fits the teacher (measured 0.096; 0.049 without)


# ----------------------------------------------------------------------------- command line

TINY = ["--d-model", "8", "--layers", "1", "--state-dim", "8", "--batch-size", "256", "--quiet"]


def test_train_flag_records_the_penalty(tmp_path, capsys, monkeypatch):
    out = tmp_path / "reg"
    assert main(["train", "--data", "digits", "--out", str(out), "--epochs", "2", "--hankel-reg", "0.5",
                 "--hankel-order", "2", "--hankel-sample", "0.5", *TINY]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["hankel_penalty"]) and r["hankel_penalty"] > 0 for r in rows)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["hankel_reg"] == 0.5 and cfg["train"]["hankel_order"] == 2
    assert cfg["train"]["hankel_sample"] == 0.5 and cfg["train"]["hankel_relative"] is False
    share = tmp_path / "share"
    assert main(["train", "--data", "digits", "--out", str(share), "--epochs", "1", "--hankel-reg", "0.5",
                 "--hankel-order", "2", "--hankel-relative", *TINY]) == 0
    row = json.loads((share / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < row["hankel_penalty"] < 1          # a share of the Hankel energy
    assert json.loads((share / "config.json").read_text())["train"]["hankel_relative"] is True
    fin = tmp_path / "fin"
    calls = []
    real = train_mod.hankel_penalty
    monkeypatch.setattr(train_mod, "hankel_penalty", lambda *a, **k: calls.append(k["horizon"]) or real(*a, **k))
    assert main(["train", "--data", "digits", "--out", str(fin), "--epochs", "1", "--hankel-reg", "0.5",
                 "--hankel-order", "2", "--hankel-horizon", "finite", *TINY]) == 0
    assert calls and set(calls) == {"finite"}
    assert json.loads((fin / "config.json").read_text())["train"]["hankel_horizon"] == "finite"
    assert json.loads((reg := out / "config.json").read_text())["train"]["hankel_horizon"] == "auto", reg
    plain = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--out", str(plain), "--epochs", "1", *TINY]) == 0
    assert "hankel_penalty" not in json.loads((plain / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("argv, phrase", [
    (["--hankel-order", "2"], "needs --hankel-reg"),
    (["--hankel-sample", "0.5"], "needs --hankel-reg"),
    (["--hankel-reg", "1", "--hankel-order", "8"], "not below the state dimension"),
    (["--hankel-relative"], "--hankel-relative needs --hankel-reg"),
    (["--hankel-reg", "1", "--hankel-relative"], "--hankel-relative needs --hankel-reg WEIGHT > 0 and --hankel-order"),
    (["--hankel-horizon", "finite"], "--hankel-horizon finite needs --hankel-reg WEIGHT > 0"),
])
def test_train_flag_mistakes_exit_2(argv, phrase, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["train", "--data", "digits", "--out", str(out), *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_config_checks_the_penalty_horizon():
    with pytest.raises(ValueError, match="hankel_horizon='infinite' is invalid; expected 'auto' or 'finite'"):
        train_mod.TrainConfig(hankel_reg=1.0, hankel_horizon="infinite")
    assert train_mod.TrainConfig(hankel_reg=1.0, hankel_horizon="finite").hankel_horizon == "finite"


def test_negative_weight_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "digits", "--out", str(tmp_path / "x"), "--hankel-reg", "-1"])
    assert exc.value.code == 2 and "non-negative" in capsys.readouterr().err
