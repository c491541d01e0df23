"""DiscreteSystem: the one representation of a layer's discrete system (kernel, step, reduction all read it)."""
import math

import numpy as np
import pytest
import torch

from ssmcompress.nn import KERNELS, SSMLayer
from ssmcompress.nn.system import DiscreteSystem

L = 64


def make(kernel, dtype=torch.float64, seed=0, H=3, N=8):
    torch.manual_seed(seed)
    return SSMLayer(H, N, kernel=kernel, init="legs", l_max=L).to(dtype)


def recurrence_response(sys, L):
    """Impulse response of the recurrence x_k = lam_d x_{k-1} + B_d u_k, y_k = 2 Re(C x_k), in numpy complex128."""
    lam, B, C = (np.asarray(t.detach(), dtype=np.complex128) for t in (sys.lam_d, sys.B_d, sys.C))
    x, out = np.zeros_like(lam), []
    for k in range(L):
        x = lam * x + (B if k == 0 else 0)
        out.append(2 * np.real(C * x).sum(-1))
    return np.stack(out, -1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_and_recurrence_come_from_the_same_system(kernel):
    layer = make(kernel)
    sys = layer.system()
    K = layer.kernel(L).detach().numpy()
    np.testing.assert_allclose(recurrence_response(sys, L), K, rtol=1e-9, atol=1e-12)
    # the step form (dss-softmax rescaled state) is the same input-output map
    np.testing.assert_allclose(recurrence_response(sys.step_form(L), L), K, rtol=1e-9, atol=1e-12)
    p = layer.step_parameters()
    q = sys.step_form(L).real_parts(layer.D.dtype)
    assert set(p) == set(q)
    for k in p:
        torch.testing.assert_close(p[k], q[k], rtol=0, atol=0)


def test_growing_softmax_modes_keep_log_scale_until_asked():
    layer = make("dss-softmax")
    with torch.no_grad():
        layer.A_real.fill_(0.9)
        layer.log_dt.fill_(math.log(0.5))
    sys = layer.system()
    assert sys.log_scale is not None and (sys.lam_d.abs() > 1).all()
    stepped = sys.step_form(L)
    assert stepped.log_scale is None
    assert torch.isfinite(torch.view_as_real(stepped.B_d)).all() and torch.isfinite(torch.view_as_real(stepped.C)).all()
    np.testing.assert_allclose(recurrence_response(stepped, L), layer.kernel(L).detach().numpy(), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="needs l_max"):
        sys.step_form(None)


def test_system_is_differentiable_and_discrete_system_is_detached():
    layer = make("s4d")
    sys = layer.system()
    loss = sys.lam_d.abs().sum() + sys.B_d.abs().sum() + sys.C.abs().sum()
    loss.backward()
    assert layer.log_A_real.grad is not None and layer.B.grad is not None and layer.C.grad is not None
    d = layer.discrete_system()
    assert isinstance(d, DiscreteSystem) and not d.lam_d.requires_grad and not d.D.requires_grad


def test_mapping_view_and_precision():
    layer = make("s4d", dtype=torch.float32)
    d = layer.discrete_system()
    assert list(d) == ["lam_d", "B_d", "C", "D", "dt"] and len(d) == 5
    assert d["lam_d"].dtype == torch.complex64 and d["D"].dtype == torch.float32 and d["dt"].dtype == torch.float32
    assert dict(d)["C"] is d.C and dict(d.items()).keys() == set(d.keys())
    e = layer.discrete_system(exact=True)
    assert e.lam_d.dtype == torch.complex128 and e.D.dtype == torch.float64 and e.dt.dtype == torch.float64
    # the rounded system is the exact one rounded to complex64
    torch.testing.assert_close(e.lam_d.to(torch.complex64), d.lam_d, rtol=0, atol=0)
    with pytest.raises(KeyError, match="not one of"):
        d["A"]
    with pytest.raises(ValueError, match="real floating torch dtype"):
        d.with_precision(torch.int32)
    half = d.with_precision(torch.bfloat16)               # no complex half type: complex64, as before
    assert half.lam_d.dtype == torch.complex64 and half.D.dtype == torch.bfloat16
    assert d != layer.discrete_system()                   # identity, not element-wise comparison of tensors


def test_detached_copy_does_not_follow_parameter_updates():
    layer = make("s4d")
    d = layer.discrete_system()
    before = d.C.clone()
    with torch.no_grad():
        layer.C.mul_(2.0)
    torch.testing.assert_close(d.C, before)


def test_shapes_are_validated():
    z = torch.zeros(2, 3, dtype=torch.complex128)
    r = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="lam_d must be a complex tensor"):
        DiscreteSystem(torch.zeros(2, 3), z, None, z, r, r)
    with pytest.raises(ValueError, match="C must have the shape of lam_d"):
        DiscreteSystem(z, z, None, torch.zeros(2, 4, dtype=torch.complex128), r, r)
    with pytest.raises(ValueError, match=r"D must have shape \(2,\)"):
        DiscreteSystem(z, z, None, z, torch.zeros(3), r)
