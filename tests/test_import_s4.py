"""import-s4: state dicts of state-spaces/s4 example.py S4D models, checked against the S4D equations.

The reference below is written from the S4D paper / s4d.py equations with the source model's
key names, in float64 numpy, independently of our layer: a direct causal convolution with
K[h, l] = 2 Re(sum_n C[h,n] (exp(dt A) - 1)/A exp(dt A l)), GELU, the 1x1 convolution
to 2H channels and GLU, residual, LayerNorm (pre or post), mean pooling, decoder.
"""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.special import erf

from ssmcompress import checkpoint as ckpt
from ssmcompress.cli import main
from ssmcompress.import_s4 import S4ImportError, import_s4, read_state_dict, s4d_model

D_INPUT, H, D_OUTPUT, L = 3, 6, 4, 40
MODES = (4, 3)   # N = 8 and N = 6


def s4_state_dict(seed=0):
    """A trained-looking state dict of example.py's S4Model with S4D layers (float32)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)
    sd = {"encoder.weight": rnd(H, D_INPUT, scale=0.5), "encoder.bias": rnd(H, scale=0.1)}
    for i, n in enumerate(MODES):
        p = f"s4_layers.{i}."
        sd[p + "D"] = rnd(H)
        sd[p + "kernel.C"] = rnd(H, n, 2, scale=0.7)
        sd[p + "kernel.log_dt"] = math.log(1e-3) + torch.rand(H, generator=g) * (math.log(1e-1) - math.log(1e-3))
        sd[p + "kernel.log_A_real"] = math.log(0.5) + rnd(H, n, scale=0.3)
        sd[p + "kernel.A_imag"] = math.pi * torch.arange(n).float().expand(H, n) + rnd(H, n, scale=0.2)
        sd[p + "output_linear.0.weight"] = rnd(2 * H, H, 1, scale=1 / math.sqrt(H))
        sd[p + "output_linear.0.bias"] = rnd(2 * H, scale=0.1)
        sd[f"norms.{i}.weight"] = 1 + rnd(H, scale=0.1)
        sd[f"norms.{i}.bias"] = rnd(H, scale=0.1)
    sd["decoder.weight"] = rnd(D_OUTPUT, H, scale=0.5)
    sd["decoder.bias"] = rnd(D_OUTPUT, scale=0.1)
    return {k: v.float().contiguous() for k, v in sd.items()}


def reference_forward(sd, x, prenorm):
    """example.py's S4Model.forward from the equations; x (B, L, d_input) -> (B, d_output), float64."""
    p = {k: v.double().numpy() for k, v in sd.items()}

    def layer_norm(z, i):  # over channels; z (B, H, L)
        mu = z.mean(1, keepdims=True)
        var = z.var(1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-5) * p[f"norms.{i}.weight"][:, None] + p[f"norms.{i}.bias"][:, None]

    h = (x @ p["encoder.weight"].T + p["encoder.bias"]).transpose(0, 2, 1)          # (B, H, L)
    for i in range(len(MODES)):
        k = f"s4_layers.{i}."
        z = layer_norm(h, i) if prenorm else h
        dt = np.exp(p[k + "kernel.log_dt"])[:, None]
        A = -np.exp(p[k + "kernel.log_A_real"]) + 1j * p[k + "kernel.A_imag"]
        C = p[k + "kernel.C"][..., 0] + 1j * p[k + "kernel.C"][..., 1]
        Cp = C * (np.exp(dt * A) - 1.0) / A
        K = 2 * np.einsum("hn,hnl->hl", Cp, np.exp(dt[..., None] * A[..., None] * np.arange(L))).real
        y = np.zeros_like(z)
        for t in range(L):                                        # direct causal convolution
            y[:, :, t] = np.einsum("hs,bhs->bh", K[:, t::-1], z[:, :, :t + 1])
        y = y + z * p[k + "D"][:, None]
        y = 0.5 * y * (1 + erf(y / math.sqrt(2)))                  # GELU
        y = np.einsum("oh,bhl->bol", p[k + "output_linear.0.weight"][:, :, 0], y) \
            + p[k + "output_linear.0.bias"][:, None]
        y = y[:, :H] / (1 + np.exp(-y[:, H:]))                      # GLU over channels
        h = h + y
        h = h if prenorm else layer_norm(h, i)
    return h.mean(-1) @ p["decoder.weight"].T + p["decoder.bias"]


@pytest.mark.parametrize("prenorm", [False, True])
def test_imported_model_matches_the_s4d_equations(prenorm):
    sd = s4_state_dict()
    model = s4d_model(sd, prenorm=prenorm)
    assert model.state_dims == [2 * n for n in MODES] and model.config["kernel"] == "s4d"
    assert model.final_norm is None and model.config["learn_B"] is False
    x = np.random.default_rng(1).normal(size=(5, L, D_INPUT))
    ref = reference_forward(sd, x, prenorm)
    with torch.no_grad():
        ours = model(torch.tensor(x, dtype=torch.float32)).double().numpy()
        streamed = model.stream(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed, ref, rtol=0, atol=1e-5)
    other = reference_forward(sd, x, not prenorm)
    assert np.abs(other - ref).max() > 1e-3                         # the flag matters


def test_file_formats_and_wrappers(tmp_path):
    sd = s4_state_dict()
    files = {
        "plain.pt": sd,
        "example.pt": {"model": sd, "acc": 91.5, "epoch": 7},                 # example.py's checkpoint
        "dp.pth": {"module." + k: v for k, v in sd.items()},                  # DataParallel
        "lightning.ckpt": {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3,
                           "global_step": 120, "pytorch-lightning_version": "2.1.0",
                           "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}]},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(sd, str(tmp_path / "model.safetensors"))
    for name in list(files) + ["model.safetensors"]:
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd), name
        for k in sd:
            assert torch.equal(got[k], sd[k]), (name, k)


class Opaque:
    pass


def one_sentence(fn, *args, **kwargs):
    with pytest.raises(S4ImportError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_unknown_keys_shapes_and_files_are_one_sentence(tmp_path):
    sd = s4_state_dict()
    msg = one_sentence(s4d_model, {**sd, "s4_layers.0.kernel.B": torch.ones(H, 4, 2)})
    assert "'s4_layers.0.kernel.B'" in msg
    msg = one_sentence(s4d_model, {**sd, "s4_layers.1.kernel.C": torch.ones(H, 4, 2)})
    assert "'s4_layers.1.kernel.C'" in msg and "(6, 4, 2)" in msg and "(6, 3, 2)" in msg
    missing = dict(sd)
    del missing["norms.1.bias"]
    assert "'norms.1.bias'" in one_sentence(s4d_model, missing)
    gap = {k: v for k, v in sd.items() if not k.startswith(("s4_layers.0.", "norms.0."))}
    assert "'s4_layers.0.kernel.A_imag'" in one_sentence(s4d_model, gap)
    nan = {**sd, "s4_layers.0.D": torch.full((H,), float("nan"))}
    assert "'s4_layers.0.D'" in one_sentence(s4d_model, nan)
    # S4 (not S4D) layers have other kernel tensors
    s4 = {**{k: v for k, v in sd.items() if "kernel" not in k}, "s4_layers.0.kernel.inv_dt": torch.zeros(H)}
    assert "'s4_layers.0.kernel.inv_dt'" in one_sentence(s4d_model, s4)
    torch.save({"model": sd, "args": Opaque()}, tmp_path / "pickled.pt")
    msg = one_sentence(read_state_dict, tmp_path / "pickled.pt")
    assert "weights_only" in msg and "Opaque" in msg
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert "junk.ckpt" in one_sentence(read_state_dict, tmp_path / "junk.ckpt")
    (tmp_path / "pickled.pkl").write_bytes(b"x")
    assert "suffix" in one_sentence(read_state_dict, tmp_path / "pickled.pkl")
    assert "does not exist" in one_sentence(read_state_dict, tmp_path / "none.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    assert "not a tensor" in one_sentence(read_state_dict, tmp_path / "list.pt")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    y_tr, y_te = np.arange(80) % D_OUTPUT, np.arange(24) % D_OUTPUT
    x_tr = rng.normal(size=(80, L, D_INPUT)) + y_tr[:, None, None]
    x_te = rng.normal(size=(24, L, D_INPUT)) + y_te[:, None, None]
    np.savez(d / "d.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    np.savez(d / "five.npz", x_train=x_tr, y_train=np.arange(80) % 5, x_test=x_te, y_test=np.arange(24) % 5)
    return d


def test_run_folder_works_with_evaluate_compress_and_init_from(tmp_path, npz, capsys):
    sd = s4_state_dict()
    torch.save({"model": sd, "acc": 50.0, "epoch": 1}, tmp_path / "ckpt.pt")
    run = tmp_path / "imported"
    assert main(["import-s4", str(tmp_path / "ckpt.pt"), "--out", str(run), "--prenorm",
                 "--data", str(npz / "d.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["state_dims"] == [8, 6] and 0 <= summary["test_accuracy"] <= 1
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["imported_from"]["prenorm"] is True and cfg["model"]["final_norm"] is False
    model, _ = ckpt.load_model(run)
    x = np.random.default_rng(2).normal(size=(2, L, D_INPUT))
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.tensor(x, dtype=torch.float32)).numpy(),
                                   reference_forward(sd, x, True), atol=1e-5)
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert main(["compress", str(run), "--rank", "2", "--out", str(tmp_path / "r2"), "--json"]) == 0
    comp = json.loads(capsys.readouterr().out)
    assert all(2 <= s <= 4 for s in comp["state_dims"]) and comp["test_accuracy_before"] == pytest.approx(summary["test_accuracy"])
    assert main(["train", "--data", str(npz / "d.npz"), "--init-from", str(tmp_path / "r2"), "--epochs", "1",
                 "--batch-size", "40", "--out", str(tmp_path / "main"), "--quiet"]) == 0
    assert main(["info", str(run)]) == 0
    capsys.readouterr()
    # wrong data: one sentence, exit 2, nothing written
    assert main(["import-s4", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "x"),
                 "--data", str(npz / "five.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "predicts 4 classes" in err and not (tmp_path / "x").exists()
    assert main(["evaluate", str(run), "--data", str(npz / "five.npz")]) == 2
    assert "predicts 4 classes" in capsys.readouterr().err
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    assert main(["import-s4", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'extra.weight'" in err
    assert main(["import-s4", str(tmp_path / "ckpt.pt"), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_help():
    with pytest.raises(SystemExit) as e:
        main(["import-s4", "--help"])
    assert e.value.code == 0


def test_import_s4_function_writes_a_loadable_run(tmp_path):
    save_file(s4_state_dict(), str(tmp_path / "m.safetensors"))
    model, cfg = import_s4(tmp_path / "m.safetensors", tmp_path / "run")
    loaded, _ = ckpt.load_model(tmp_path / "run")
    x = torch.randn(2, L, D_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert "data" not in cfg and cfg["imported_from"]["prenorm"] is False
