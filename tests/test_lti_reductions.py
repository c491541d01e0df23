"""Properties every reduction shares (balanced truncation, balanced singular perturbation, IRKA, modal
truncation): the system comes back unchanged when the order is not reduced, and no method yields an
unstable system, on held-out trained-like systems and on the systems of real S4D layers."""
import zlib

import numpy as np
import pytest

from lti_cases import FAMILIES, random_systems
from ssmcompress.lti import (balanced_singular_perturbation, balanced_truncation, h2_optimal,
                             modal_truncation)

DOMAINS = ("continuous", "discrete")
METHODS = {
    "bt": lambda s, r: balanced_truncation(s, order=r),
    "bsp": lambda s, r: balanced_singular_perturbation(s, order=r),
    "h2": lambda s, r: h2_optimal(s, order=r, maxiter=30),
    "modal-hinf": lambda s, r: modal_truncation(s, order=r, score="hinf"),
    "modal-h2": lambda s, r: modal_truncation(s, order=r, score="h2"),
}


def grid(s):
    if s.is_discrete:
        return np.linspace(0, np.pi, 257)
    return np.concatenate([[0.0], np.logspace(-3, 3, 256)])


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_order_not_reduced_returns_the_system_unchanged(method, domain):
    rng = np.random.default_rng(zlib.crc32(f"unchanged-{method}-{domain}".encode()))
    for family in FAMILIES:
        s = random_systems(family, 16, 4, rng, domain)
        for r in (16, 23, np.array([16, 100, 17, 16])):
            res = METHODS[method](s, r)
            om = grid(s)
            G, Gr = s.freqresp(om), res.system.freqresp(om)
            assert np.abs(G - Gr).max() <= 1e-12 * np.abs(G).max(), (family, r)
            np.testing.assert_array_equal(res.system.D, s.D)
            np.testing.assert_array_equal(res.system.modes[:, :8], s.modes)


def s4d_layer_systems(init, seed):
    """The H discrete systems of a freshly built S4D layer (N = 64), through the nn <-> lti bridge."""
    torch = pytest.importorskip("torch")
    from ssmcompress.compress import layer_system
    from ssmcompress.nn.layer import SSMLayer

    torch.manual_seed(seed)
    return layer_system(SSMLayer(d_model=24, state_dim=64, kernel="s4d", init=init))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_method_yields_an_unstable_system(method):
    """Held-out seeds: every family in both domains (per-channel orders, odd ones too), and the discrete
    systems of S4D layers at the legs / lin / inv initialisations."""
    rng = np.random.default_rng(zlib.crc32(f"stable-{method}".encode()))
    cases = [random_systems(family, 32, 12, rng, domain) for family in FAMILIES for domain in DOMAINS]
    cases += [s4d_layer_systems(init, 1) for init in ("legs", "lin", "inv")]
    for s in cases:
        r = rng.integers(1, s.order, s.batch_shape)
        res = METHODS[method](s, r)
        assert np.all(res.system.is_stable()), (s.domain, method)
        assert np.all(np.asarray(res.order) <= r)
        assert np.all(np.isfinite(res.system.freqresp(grid(s))))
