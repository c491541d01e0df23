"""The equal-size rule, free slots, finite horizons, the refit, and the float32 hole of issue 8."""
import math

import numpy as np
import pytest
import torch

from ssmcompress.compress import (METHODS, STABLE_RADIUS, allocate_budget, budget_ranks, compress_model,
                                  layer_mode_scores, layer_system, reduce_layer, resolve_horizon)
from ssmcompress.lti import DiagonalSSM, balanced_truncation
from ssmcompress.lti.refit import impulse_response
from ssmcompress.nn import SequenceModel

KERNELS = ["s4d", "bilinear", "dss-exp", "dss-softmax"]


def _model(kernel, N=16, seed=0, l_max=64, H=6, layers=2, dtype=torch.float64, stable=False):
    torch.manual_seed(seed)
    m = SequenceModel(d_input=1, d_output=3, d_model=H, layers=layers, state_dim=N, kernel=kernel, l_max=l_max)
    with torch.no_grad():            # spread the modes like a trained model: some slow, some fast
        for layer in m.ssm_layers():
            name = "log_A_real" if layer.constrained else "A_real"
            p = getattr(layer, name)
            p.add_(torch.randn_like(p) * (1.0 if layer.constrained else 0.3))
            if stable and not layer.constrained:
                p.copy_(-p.abs() - 0.05)
            layer.log_dt.add_(torch.randn_like(layer.log_dt))
    return m.to(dtype)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method, refit", [("bt", False)] + [(m, True) for m in METHODS])
def test_rank_r_gives_the_shapes_of_a_fresh_size_r_model(kernel, method, refit):
    model = _model(kernel, N=24)
    if method in ("bsp", "h2") and kernel == "dss-softmax":
        model = _model(kernel, N=24, stable=True)
    for r in ((8, 2) if method == "h2" else (8, 4, 2)):
        small, report = compress_model(model, method=method, rank=r, refit=refit)
        fresh = SequenceModel(**{**model.config, "state_dim": r})
        assert small.state_dims == [r, r]
        assert small.parameter_counts() == fresh.parameter_counts()
        assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
        for rep in report.layers:
            assert rep.state_dim_after == r and np.all(rep.orders <= r)
        x = torch.randn(2, 64, 1, dtype=torch.float64)
        assert torch.isfinite(small(x)).all()


def test_channels_with_real_eigenvalues_get_a_lower_order_that_fits():
    """Order 2*slots does not fit when the reduced A has real eigenvalues; the order is lowered until it fits."""
    model = _model("s4d", N=32, seed=3, H=16, layers=1)
    layer = model.ssm_layers()[0]
    sys = layer_system(layer)
    plain = balanced_truncation(sys, order=6)
    too_big = np.flatnonzero(np.asarray(plain.n_modes) > 3)
    assert too_big.size, "test systems should include channels whose order-6 form has real eigenvalues"
    red, rep = reduce_layer(layer, rank=6, refit=False, horizon="infinite")
    assert red.n_modes == 3
    for h in too_big:
        r_h = int(rep.orders[h])
        assert r_h < 6
        one = balanced_truncation(sys[h], order=r_h)
        assert one.n_modes <= 3
        # the channel is that balanced truncation (error bound of order r_h)
        np.testing.assert_allclose(impulse_response(red[h], 64), impulse_response(one.system, 64), atol=1e-10)
        assert rep.error_bound[h] == pytest.approx(2 * plain.hsv[h, r_h:].sum(), rel=1e-12)


def test_free_slots_are_skew_hippo_modes_with_zero_output():
    """A channel of low Hankel rank leaves slots free: they start from Skew-HiPPO modes with C = 0."""
    from ssmcompress.nn.init import initial_modes
    from ssmcompress.nn.kernels import discretize

    model = _model("s4d", N=16, layers=1)
    layer = model.ssm_layers()[0]
    with torch.no_grad():
        layer.C[0, 1:] = 0.0          # channel 0 has a single active mode: real order 2
    red, rep = reduce_layer(layer, rank=8, refit=False)
    assert rep.orders[0] == 2 and rep.free_slots >= 3
    A, B = initial_modes("legs", 8, layer.d_model)
    dt = torch.exp(layer.log_dt.detach().double())
    lam_d, _, _ = discretize("s4d", A, B, dt, layer.l_max)
    np.testing.assert_allclose(red.modes[0, 1:], lam_d[0, 1:].numpy(), rtol=1e-12)
    assert np.all(red.C[0, 1:] == 0)
    small, _ = compress_model(model, rank=8, refit=False)
    sl = small.ssm_layers()[0]
    assert torch.all(torch.view_as_complex(sl.C.detach())[0, 1:] == 0)
    # free slots are ordinary trainable modes: their C gets a gradient in main training
    x = torch.randn(4, 64, 1, dtype=torch.float64)
    small(x).sum().backward()
    assert sl.C.grad[0, 1:].abs().sum() > 0


def test_float32_modes_that_round_onto_the_unit_circle_still_compress():
    """|Re A| dt below ~3e-8 rounds lam_d to |lam_d| = 1 in float32 (issue 8, item 6)."""
    model = _model("s4d", N=16, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.ssm_layers():
            layer.log_A_real[:, 0] = math.log(1e-5)
            layer.log_dt.fill_(math.log(1e-3))
    layer = model.ssm_layers()[0]
    assert (layer.discrete_system()["lam_d"].abs() >= 1).any()           # the rounded form
    assert (layer_system(layer).modes.__abs__() < 1).all()                 # the exact form
    assert resolve_horizon("infinite", layer, layer_system(layer)) is None  # not switched to a finite horizon
    small, report = compress_model(model, rank=8, horizon="infinite")
    assert small.state_dims == [8, 8]
    for layer in small.ssm_layers():
        assert torch.isfinite(layer.log_A_real).all() and torch.isfinite(layer.kernel(64)).all()
    assert all(rep.horizon is None for rep in report.layers)


@pytest.mark.parametrize("kernel", KERNELS)
def test_finite_horizon_works_for_every_kernel(kernel):
    model = _model(kernel, N=24, l_max=30)
    small, report = compress_model(model, rank=8, horizon="finite")
    assert all(rep.horizon == 30 for rep in report.layers)
    for layer, rep in zip(small.ssm_layers(), report.layers):
        lam = layer_system(layer).modes
        if layer.constrained:
            assert np.all(np.abs(lam) <= STABLE_RADIUS * (1 + 1e-12))
        assert np.all(np.isfinite(rep.kernel_rel_error))


@pytest.mark.parametrize("kernel", ["s4d", "dss-exp"])
def test_refit_lowers_the_kernel_error_over_the_window(kernel):
    model = _model(kernel, N=32, l_max=40)
    _, plain = compress_model(model, rank=6, refit=False)
    _, fitted = compress_model(model, rank=6, refit=True)
    for a, b in zip(plain.layers, fitted.layers):
        assert np.all(b.kernel_rel_error <= a.kernel_rel_error + 1e-9)
        assert b.kernel_rel_error.mean() < a.kernel_rel_error.mean()
    # and the model's layers carry exactly the refitted response
    small, rep = compress_model(model, rank=6, refit=True)
    for big_l, small_l, r in zip(model.ssm_layers(), small.ssm_layers(), rep.layers):
        h_big = impulse_response(layer_system(big_l), 40)
        h_small = impulse_response(layer_system(small_l), 40)
        err = np.linalg.norm(h_big - h_small, axis=-1) / np.linalg.norm(h_big, axis=-1)
        np.testing.assert_allclose(err, r.kernel_rel_error, rtol=1e-6, atol=1e-10)


def test_bound_holds_without_refit_and_is_not_claimed_with_it():
    model = _model("s4d", N=24)
    _, plain = compress_model(model, rank=8, refit=False, horizon="infinite")
    for rep in plain.layers:
        assert rep.summary()["bound_holds"] is True
    _, fitted = compress_model(model, rank=8, refit=True, horizon="infinite")
    assert all("bound_holds" not in rep.summary() for rep in fitted.layers)


def test_modal_keeps_the_modes_with_the_largest_h2_score():
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.3, 0.95, (1, 5)) * np.exp(1j * rng.uniform(0.1, 3.0, (1, 5)))
    B = np.ones((1, 5), complex)
    C = rng.standard_normal((1, 5)) + 1j * rng.standard_normal((1, 5))
    sys = DiagonalSSM(lam, B, C, 0.0, 1.0, "discrete")
    s = layer_mode_scores(sys, "h2")
    # closed form against brute force: the energy of each mode's own 2 Re(r lam^l) response
    for i in range(5):
        h = 2 * (C[0, i] * lam[0, i] ** np.arange(4000)).real
        assert s[0, i] == pytest.approx(np.sqrt((h ** 2).sum()), rel=1e-9)
    model = _model("s4d", N=10, layers=1)
    layer = model.ssm_layers()[0]
    red, _ = reduce_layer(layer, method="modal", rank=4, refit=False)
    scores = layer_mode_scores(layer_system(layer), "h2")
    top = np.sort(np.argsort(-scores, -1)[:, :2], -1)
    for h in range(layer.d_model):
        np.testing.assert_allclose(np.sort_complex(red.modes[h]), np.sort_complex(layer_system(layer).modes[h, top[h]]))


def test_unstable_active_modes_are_always_kept_by_modal_truncation():
    lam = np.array([[1.01 * np.exp(0.2j), 0.5 * np.exp(1j), 0.9 * np.exp(2j)]])
    sys = DiagonalSSM(lam, 1.0, np.array([[1e-6, 1.0, 1.0]]), 0.0, 0.1, "discrete")
    sc = layer_mode_scores(sys, "hinf")
    assert np.isinf(sc[0, 0]) and np.all(np.isfinite(sc[0, 1:]))


def test_bsp_and_h2_refuse_a_finite_horizon():
    model = _model("s4d", N=12)
    for method in ("bsp", "h2"):
        with pytest.raises(ValueError, match="infinite horizon"):
            compress_model(model, method=method, rank=4, horizon="finite")
    with pytest.raises(ValueError, match="rank"):
        compress_model(model, method="h2", energy=0.9)


def test_allocate_budget_is_one_global_threshold_and_exact():
    values = [np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.9, 0.05, 0.03, 0.02]), np.array([0.4, 0.3, 0.2, 0.1])]
    assert allocate_budget(values, 3) == [1, 1, 1]
    assert allocate_budget(values, 12) == [4, 4, 4]
    # next slots by value: 0.3 (layer 0), 0.3 (layer 2), 0.2 (layer 2), 0.15 (layer 0), 0.1 (layer 2), ...
    assert allocate_budget(values, 5) == [2, 1, 2]
    assert allocate_budget(values, 7) == [2, 1, 4] or allocate_budget(values, 7) == [3, 1, 3]
    for b in range(3, 13):
        assert sum(allocate_budget(values, b)) == b
    with pytest.raises(ValueError, match="budget"):
        allocate_budget(values, 2)
    with pytest.raises(ValueError, match="budget"):
        allocate_budget(values, 13)


@pytest.mark.parametrize("method", ["bt", "modal-hinf"])
def test_budget_is_met_exactly_and_layers_of_different_sizes_run(method):
    model = _model("s4d", N=16, layers=3, H=6)
    with torch.no_grad():                 # layer 1 decays very fast: little Hankel energy beyond its first states
        model.ssm_layers()[1].log_A_real.add_(3.0)
    for budget in (3, 9, 15, 0.5):
        small, report = compress_model(model, method=method, budget=budget)
        want = budget if isinstance(budget, int) else round(0.5 * 24)
        assert sum(d // 2 for d in small.state_dims) == want
        assert report.budget == budget
    ranks = budget_ranks(model, 12, method)
    assert sum(r // 2 for r in ranks) == 12
    # layers of different sizes load, run and stream
    small, _ = compress_model(model, method=method, rank=ranks)
    x = torch.randn(2, 64, 1, dtype=torch.float64)
    torch.testing.assert_close(small.eval().stream(x), small(x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kernel", ["s4d", "bilinear"])
@pytest.mark.parametrize("method", METHODS)
def test_stored_B_and_C_are_balanced_per_mode(kernel, method):
    """A diagonal form fixes only C_i B_i; the stored split is |B| == |C| per mode (learned-B kernels), so that
    main training's steps of about the learning rate are of the same relative size for both. The response is
    that of the reduction, whatever the split of the original."""
    m = _model(kernel, N=16, layers=1)
    layer = m.ssm_layers()[0]
    with torch.no_grad():                     # an extreme split in the original: the map is unchanged
        layer.B.mul_(1e-6)
        layer.C.mul_(1e6)
    small, _ = compress_model(m, method=method, rank=8, refit=False)
    small_layer = small.ssm_layers()[0]
    b = torch.linalg.vector_norm(small_layer.B, dim=-1)
    c = torch.linalg.vector_norm(small_layer.C, dim=-1)
    live = (b > 0) & (c > 0)
    assert live.sum() > 0
    torch.testing.assert_close(b[live], c[live], rtol=1e-9, atol=0)
    sys, _ = reduce_layer(layer, method=method, rank=8, refit=False)
    got = small_layer.kernel(64).detach().numpy()
    got[:, 0] += small_layer.D.detach().numpy()                 # impulse_response includes the D tap
    want = impulse_response(sys, 64)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    # with the refit the stored split is balanced as well (the refit may give a mode of tiny B a large C)
    small, _ = compress_model(m, method=method, rank=8)
    sl = small.ssm_layers()[0]
    b, c = torch.linalg.vector_norm(sl.B, dim=-1), torch.linalg.vector_norm(sl.C, dim=-1)
    live = (b > 0) & (c > 0)
    torch.testing.assert_close(b[live], c[live], rtol=1e-9, atol=0)
    sys, _ = reduce_layer(layer, method=method, rank=8)
    got = sl.kernel(64).detach().numpy()
    got[:, 0] += sl.D.detach().numpy()
    want = impulse_response(sys, 64)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
