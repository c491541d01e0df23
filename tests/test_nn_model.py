"""SequenceModel: forward, stream (recurrent mode), config round trip, lengths, validation."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmcompress.nn import KERNELS, SequenceModel, SSMLayer


def model_and_input(dtype=torch.float64, L=60, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_input=3, d_output=5, d_model=8, layers=2, state_dim=8, l_max=L)
    cfg.update(kw)
    model = SequenceModel(**cfg).to(dtype)
    if kw.get("vocab_size"):
        x = torch.randint(0, kw["vocab_size"], (3, L))
    else:
        x = torch.randn(3, L, cfg["d_input"], dtype=dtype)
    return model, x


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("prenorm,norm,pool", [(False, "layer", "mean"), (True, "batch", "last"), (True, "layer", "last"), (False, "batch", "mean")])
def test_stream_equals_forward(kernel, prenorm, norm, pool):
    model, x = model_and_input(kernel=kernel, prenorm=prenorm, norm=norm, pool=pool, dropout=0.1)
    model.train()
    model(x).sum().backward()  # updates BatchNorm running statistics
    model.eval()
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(model.stream(x), ref, rtol=1e-9, atol=1e-9)
    lengths = torch.tensor([60, 17, 1])
    with torch.no_grad():
        ref = model(x, lengths)
    torch.testing.assert_close(model.stream(x, lengths), ref, rtol=1e-9, atol=1e-9)


def test_stream_equals_forward_float32_long():
    model, x = model_and_input(torch.float32, L=300, kernel="s4d", state_dim=16, layers=2)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(model.stream(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_stream_tokens_and_state_dims_list():
    model, x = model_and_input(vocab_size=11, state_dim=[4, 10], pool="last")
    model.eval()
    assert model.state_dims == [4, 10]
    with torch.no_grad():
        torch.testing.assert_close(model.stream(x), model(x), rtol=1e-9, atol=1e-9)


def test_lengths_padding_never_changes_valid_outputs():
    for pool in ("mean", "last"):
        model, x = model_and_input(pool=pool)
        model.eval()
        lengths = torch.tensor([60, 20, 33])
        with torch.no_grad():
            out = model(x, lengths)
            x2 = x.clone()
            x2[1, 20:] = 1e3  # garbage in the padding
            x2[2, 33:] = -7.0
            torch.testing.assert_close(model(x2, lengths), out, rtol=1e-12, atol=1e-12)
            for i, n in enumerate(lengths.tolist()):  # equals running the unpadded sequence alone
                torch.testing.assert_close(model(x[i:i + 1, :n]), out[i:i + 1], rtol=1e-10, atol=1e-10)


def test_config_round_trip():
    model, _ = model_and_input(kernel="dss-softmax", init="lin", state_dim=[6, 8], prenorm=True, norm="batch",
                               pool="last", task="regression", dropout=0.2, learn_B=True)
    cfg = json.loads(json.dumps(model.config))
    clone = SequenceModel(**cfg).double()
    assert cfg["state_dim"] == [6, 8] and clone.state_dims == [6, 8]
    clone.load_state_dict(model.state_dict())
    assert [type(m) for m in clone.modules()] == [type(m) for m in model.modules()]
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = torch.randn(2, 60, 3, dtype=torch.float64)
    model.eval(), clone.eval()
    torch.testing.assert_close(clone(x), model(x))


def test_ssm_and_other_parameters_partition_the_model():
    model, x = model_and_input(kernel="s4d")
    ssm, other = model.ssm_parameters(), model.other_parameters()
    assert {id(p) for p in ssm}.isdisjoint({id(p) for p in other})
    assert len(ssm) + len(other) == len(list(model.parameters()))
    assert len(ssm) == 2 * 4  # log_dt, log_A_real, A_imag, B per layer


def test_compressed_model_from_config_and_discrete_systems():
    """The path compress.py takes: smaller per-layer state_dim, non-SSM weights copied, systems loaded."""
    model, x = model_and_input(state_dim=8)
    small = SequenceModel(**{**model.config, "state_dim": [4, 6]}).double()
    sd = {k: v for k, v in model.state_dict().items() if ".ssm." not in k or k.endswith((".D", ".log_dt"))}
    small.load_state_dict(sd, strict=False)
    for big, little in zip(model.ssm_layers(), small.ssm_layers()):
        sys = big.discrete_system()
        little.load_discrete_system(sys["lam_d"], sys["B_d"], sys["C"], sys["D"])
    assert small.state_dims == [8, 8]  # loaded all modes back: identical model
    model.eval(), small.eval()
    torch.testing.assert_close(small(x), model(x), rtol=1e-9, atol=1e-9)


def test_regression_and_mean_pool_shapes():
    model, x = model_and_input(task="regression", d_output=1)
    assert model(x).shape == (3, 1)
    m1 = SequenceModel(1, 4, d_model=8, layers=1, state_dim=4)
    assert m1(torch.randn(2, 10)).shape == (2, 4)  # (batch, length) for one feature


def test_validation_messages():
    with pytest.raises(ValueError, match="even"):
        SequenceModel(1, 2, state_dim=5)
    with pytest.raises(ValueError, match="one real order per layer"):
        SequenceModel(1, 2, layers=3, state_dim=[4, 4])
    with pytest.raises(ValueError, match="s4d, bilinear, dss-exp, dss-softmax"):
        SequenceModel(1, 2, kernel="s5")
    with pytest.raises(ValueError, match="legs"):
        SequenceModel(1, 2, init="foo")
    with pytest.raises(ValueError, match="layer, batch"):
        SequenceModel(1, 2, norm="group")
    with pytest.raises(ValueError, match="l_max"):
        SequenceModel(1, 2, kernel="dss-softmax")
    model = SequenceModel(3, 2, d_model=8, layers=1, state_dim=4)
    with pytest.raises(ValueError, match=r"\(batch, length, 3\), got \(2, 10, 4\)"):
        model(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 10, 3), lengths=torch.tensor([3, 11]))
    tok = SequenceModel(1, 2, d_model=8, layers=1, state_dim=4, vocab_size=5)
    with pytest.raises(ValueError, match="integer tokens"):
        tok(torch.randn(2, 10))


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(1, 30), d_input=st.integers(1, 4), d_output=st.integers(1, 4),
       layers=st.integers(1, 3), kernel=st.sampled_from(KERNELS), pool=st.sampled_from(["mean", "last"]))
def test_model_shapes(batch, length, d_input, d_output, layers, kernel, pool):
    model = SequenceModel(d_input, d_output, d_model=4, layers=layers, state_dim=4, kernel=kernel, pool=pool, l_max=30)
    out = model(torch.randn(batch, length, d_input))
    assert out.shape == (batch, d_output) and torch.isfinite(out).all()
