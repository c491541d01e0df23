"""The perturbed-parent control of benchmarks/perturbed_parent.py: which parameters move, along a fixed direction."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmcompress.nn import SequenceModel
from ssmcompress.train import evaluate

_spec = importlib.util.spec_from_file_location(
    "perturbed_parent", Path(__file__).resolve().parents[1] / "benchmarks" / "perturbed_parent.py")
pp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pp)


def _model():
    torch.manual_seed(0)
    return SequenceModel(d_input=1, d_output=3, d_model=4, layers=2, state_dim=8, kernel="dss-exp", init="legs")


@pytest.mark.parametrize("variant", sorted(pp.VARIANTS))
def test_perturb_moves_only_the_named_ssm_parameters_along_one_direction(variant):
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small, large = pp.perturb(m, variant, 0.01, seed=3), pp.perturb(m, variant, 0.5, seed=3)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())        # the parent is not touched
    moved = set()
    for k, v in before.items():
        ds, dl = small.state_dict()[k] - v, large.state_dict()[k] - v
        if ".ssm." in k and k.rsplit(".", 1)[-1] in pp.VARIANTS[variant]:
            moved.add(k.rsplit(".", 1)[-1])
            rms = float(v.double().pow(2).mean().sqrt())
            # the same draw for both scales: the step is proportional to sigma, of size sigma * rms(p) per entry
            np.testing.assert_allclose(dl.double().numpy(), 50 * ds.double().numpy(), rtol=1e-3, atol=1e-5 * rms)
            assert 0.3 < float(dl.double().pow(2).mean().sqrt()) / (0.5 * rms) < 2.0
        else:
            assert torch.equal(ds, torch.zeros_like(ds)) and torch.equal(dl, torch.zeros_like(dl)), k
    assert moved == set(pp.VARIANTS[variant])
    zero = pp.perturb(m, variant, 0.0, seed=3)
    assert all(torch.equal(v, before[k]) for k, v in zero.state_dict().items())


def test_perturb_rejects_bad_input():
    m = _model()
    with pytest.raises(ValueError, match="variant must be one of"):
        pp.perturb(m, "B", 0.1, seed=0)
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        pp.perturb(m, "C", -1.0, seed=0)


def test_match_accuracy_returns_a_model_it_measured():
    m = _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 12, 1, generator=g), torch.randint(0, 3, (60,), generator=g)
    base = evaluate(m, x, y)["accuracy"]
    sigma, acc, model = pp.match_accuracy(m, "ssm", 0, base + 0.1, x, y, None, "classification")
    assert sigma == 0.0 and acc == base                 # a target at or above the parent needs no step
    sigma, acc, model = pp.match_accuracy(m, "ssm", 0, 0.0, x, y, None, "classification", steps=6)
    assert sigma > 0 and acc == evaluate(model, x, y)["accuracy"]
    assert acc == evaluate(pp.perturb(m, "ssm", sigma, 0), x, y)["accuracy"]


@pytest.mark.parametrize("kernel", ["s4d", "dss-exp"])
def test_embed_keeps_the_reduced_model_s_outputs_with_the_parent_s_size(kernel):
    from ssmcompress.compress import compress_model

    torch.manual_seed(1)
    parent = SequenceModel(d_input=1, d_output=3, d_model=4, layers=2, state_dim=16, kernel=kernel, init="legs",
                           l_max=30)
    small, _ = compress_model(parent, rank=4)
    big = pp.embed(small, 16)
    assert big.config["state_dim"] == [16, 16]
    assert sum(p.numel() for p in big.parameters()) == sum(p.numel() for p in parent.parameters())
    x = torch.randn(5, 30, 1)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot embed a layer of 16 states into 8"):
        pp.embed(parent, 8)
