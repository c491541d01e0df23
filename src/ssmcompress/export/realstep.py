"""The eval-mode streaming step of a SequenceModel in real arithmetic, with its parameters precomputed once.

One token of a :class:`~ssmcompress.nn.SequenceModel` in recurrent mode is::

    h = encoder(x_t)                                  # Linear(d_input, H) or Embedding(vocab, H)
    for every block:
        z = norm(h) if prenorm else h                 # LayerNorm, or BatchNorm with running statistics
        # SSM, per channel and stored mode, real (re) and imaginary (im) parts of the complex state:
        s_re' = lam_re s_re - lam_im s_im + B_re z
        s_im' = lam_re s_im + lam_im s_re + B_im z
        y     = 2 sum_modes (C_re s_re' - C_im s_im') + D z
        h     = h + GLU(Linear(H, 2H)(GELU(y)))       # GELU in its exact erf form
        h     = h if prenorm else norm(h)
    h = final_norm(h) if prenorm else h
    out_t = decoder(h)                               # pool "last"
    out_t = decoder(sum_{k <= t} h_k / (t + 1))       # pool "mean": the running sum is part of the state

so that ``out_t == model(x[:, :t+1])`` in eval mode.  :class:`StepWeights` holds every number of
that recurrence as float32 numpy arrays, read once from the model (``SSMLayer.step_parameters``:
the dss-softmax state rescaling included); the ONNX and C exporters and :class:`TorchStreamer`
all run exactly this recurrence.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

__all__ = ["NormWeights", "BlockWeights", "StepWeights", "TorchStreamer", "stream_outputs"]


@dataclasses.dataclass
class NormWeights:
    """``kind == "layer"``: ``(x - mean) / sqrt(var + eps) * scale + shift`` over channels.
    ``kind == "batch"``: the running statistics folded into ``x * scale + shift`` (as torch's eval kernel)."""

    kind: str
    scale: np.ndarray  # (H,)
    shift: np.ndarray  # (H,)
    eps: float


@dataclasses.dataclass
class BlockWeights:
    """One residual block; SSM arrays are (H, n) real, ``D`` (H,), the GLU linear (2H, H) + (2H,)."""

    lam_re: np.ndarray
    lam_im: np.ndarray
    B_re: np.ndarray
    B_im: np.ndarray
    C_re: np.ndarray
    C_im: np.ndarray
    D: np.ndarray
    linear_weight: np.ndarray
    linear_bias: np.ndarray
    norm: NormWeights

    @property
    def n_modes(self) -> int:
        return self.lam_re.shape[1]


@dataclasses.dataclass
class StepWeights:
    """Every parameter of the eval-mode streaming step (float32 numpy arrays), see the module docstring."""

    d_input: int
    d_output: int
    d_model: int
    vocab_size: Optional[int]
    prenorm: bool
    pool: str
    kernel: str
    encoder_weight: np.ndarray  # (H, d_input) Linear weight, or (vocab, H) embedding table
    encoder_bias: Optional[np.ndarray]  # (H,), None for an embedding
    blocks: list
    final_norm: Optional[NormWeights]
    decoder_weight: np.ndarray  # (d_output, H)
    decoder_bias: np.ndarray  # (d_output,)

    @classmethod
    def from_model(cls, model) -> "StepWeights":
        """Read the precomputed recurrence of a float32 or float64 ``SequenceModel`` (stored as float32).

        Drops the layers' ``setup_step`` caches, so that the current parameters are read.
        """
        from ..nn import SequenceModel

        if not isinstance(model, SequenceModel):
            raise ValueError(f"StepWeights.from_model expects a SequenceModel, got {type(model).__name__}.")

        def f32(t):
            return t.detach().to("cpu", torch.float32).numpy().copy()

        def norm_weights(norm) -> NormWeights:
            m = norm.norm
            if norm.kind == "layer":
                return NormWeights("layer", f32(m.weight), f32(m.bias), float(m.eps))
            # torch's eval batch norm: alpha = weight / sqrt(var + eps), beta = bias - mean * alpha, y = x alpha + beta
            invstd = 1.0 / torch.sqrt(m.running_var.detach() + m.eps)
            alpha = invstd * m.weight.detach()
            beta = m.bias.detach() - m.running_mean.detach() * alpha
            return NormWeights("batch", f32(alpha), f32(beta), float(m.eps))

        blocks = []
        with torch.no_grad():
            for block in model.blocks:
                block.ssm.clear_step()  # never read a cache of older parameters
                p = block.ssm.step_parameters()
                blocks.append(BlockWeights(
                    lam_re=f32(p["lam_re"]), lam_im=f32(p["lam_im"]), B_re=f32(p["B_re"]), B_im=f32(p["B_im"]),
                    C_re=f32(p["C_re"]), C_im=f32(p["C_im"]), D=f32(p["D"]),
                    linear_weight=f32(block.output_linear.weight), linear_bias=f32(block.output_linear.bias),
                    norm=norm_weights(block.norm)))
            embedding = model.vocab_size is not None
            return cls(
                d_input=int(model.d_input) if not embedding else 1,
                d_output=int(model.d_output), d_model=int(model.d_model),
                vocab_size=int(model.vocab_size) if embedding else None,
                prenorm=bool(model.prenorm), pool=model.pool, kernel=model.config["kernel"],
                encoder_weight=f32(model.encoder.weight),
                encoder_bias=None if embedding else f32(model.encoder.bias),
                blocks=blocks,
                final_norm=norm_weights(model.final_norm) if model.final_norm is not None else None,
                decoder_weight=f32(model.decoder.weight), decoder_bias=f32(model.decoder.bias),
            )

    # ------------------------------------------------------------------ sizes
    @property
    def state_dims(self) -> list:
        """Real order (2 per stored mode) of every layer."""
        return [2 * b.n_modes for b in self.blocks]

    def weight_count(self) -> int:
        """Numbers in the exported weights (SSM arrays, linear layers, norms, encoder, decoder)."""
        arrays = [self.encoder_weight, self.decoder_weight, self.decoder_bias]
        arrays += [] if self.encoder_bias is None else [self.encoder_bias]
        for norm in [b.norm for b in self.blocks] + ([self.final_norm] if self.final_norm else []):
            arrays += [norm.scale, norm.shift]
        for b in self.blocks:
            arrays += [b.lam_re, b.lam_im, b.B_re, b.B_im, b.C_re, b.C_im, b.D, b.linear_weight, b.linear_bias]
        return int(sum(a.size for a in arrays))

    def ssm_weight_count(self) -> int:
        """Numbers in the SSM arrays alone (lam, B, C real and imaginary parts, D)."""
        return int(sum(6 * b.lam_re.size + b.D.size for b in self.blocks))

    def state_count(self) -> int:
        """Floats of state per stream: real and imaginary parts of every mode, plus the running sum of mean pooling."""
        return int(sum(2 * self.d_model * b.n_modes for b in self.blocks)) + (self.d_model if self.pool == "mean" else 0)


class TorchStreamer:
    """Eager-PyTorch reference of the streaming classifier: ``SequenceModel.step`` plus the pooling state.

    ``step(x_t)`` returns the decoder output after every token: for mean pooling the running
    mean of the features (``== model(x[:, :t+1])``), for last pooling the current features.
    The SSM recurrence parameters are cached once (``SSMLayer.setup_step``).
    """

    def __init__(self, model, batch: int = 1):
        from ..nn import SequenceModel

        if not isinstance(model, SequenceModel):
            raise ValueError(f"TorchStreamer expects a SequenceModel, got {type(model).__name__}.")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}.")
        self.model = model
        self.batch = batch
        for layer in model.ssm_layers():
            layer.setup_step()
        self.reset()

    def reset(self) -> None:
        self.state = self.model.default_state(self.batch)
        self.total = torch.zeros(self.batch, self.model.d_model, dtype=self.model.decoder.weight.dtype)
        self.count = 0

    @torch.no_grad()
    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """x_t (batch, d_input) float, or tokens (batch,) -> output (batch, d_output)."""
        h, self.state = self.model.step(x_t, self.state)
        if self.model.pool == "last":
            return self.model.decoder(h)
        self.total = self.total + h
        self.count += 1
        return self.model.decoder(self.total / self.count)


def stream_outputs(model, x) -> torch.Tensor:
    """Outputs after every step, (length, batch, d_output), of the eager streaming classifier.

    x: (batch, length, d_input), (batch, length) when d_input == 1, or tokens (batch, length).
    """
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"stream_outputs expects x of shape (batch, length[, features]), got {tuple(x.shape)}.")
    streamer = TorchStreamer(model, batch=x.shape[0])
    try:
        outs = []
        for t in range(x.shape[1]):
            x_t = x[:, t]
            if model.vocab_size is None and x_t.ndim == 1:
                x_t = x_t[:, None]
            outs.append(streamer.step(x_t))
        return torch.stack(outs)
    finally:
        for layer in model.ssm_layers():
            layer.clear_step()
