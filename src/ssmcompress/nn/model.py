"""SequenceModel: encoder -> residual DSS blocks -> pooling -> decoder.

Block (S4 convention)::

    z = norm(x) if prenorm else x
    z = dropout(GELU(SSMLayer(z)))
    z = dropout(GLU(Linear(H, 2H)(z)))
    x = x + z
    x = x if prenorm else norm(x)

With ``prenorm`` a final norm follows the last block.  Everything but the SSM
layer is pointwise in time, so the whole model also runs as a recurrence
(:meth:`SequenceModel.step`, :meth:`SequenceModel.stream`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import INITS
from .kernels import KERNELS, check_kernel_name
from .layer import SSMLayer

__all__ = ["SequenceModel"]

NORMS = ("layer", "batch")
POOLS = ("mean", "last")
TASKS = ("classification", "regression")


class _Norm(nn.Module):
    """LayerNorm or BatchNorm over channels of (batch, length, H) or (batch, H) inputs."""

    def __init__(self, kind: str, H: int):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(H) if kind == "layer" else nn.BatchNorm1d(H)

    def forward(self, x):
        if self.kind == "layer" or x.ndim == 2:
            return self.norm(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)

    def step(self, x_t):
        """Per-time-step normalisation (BatchNorm always with running statistics)."""
        if self.kind == "layer":
            return self.norm(x_t)
        n = self.norm
        return F.batch_norm(x_t, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)


class _Block(nn.Module):
    def __init__(self, H, state_dim, kernel, init, dropout, prenorm, norm, l_max, dt_min, dt_max, learn_B):
        super().__init__()
        self.prenorm = prenorm
        self.ssm = SSMLayer(H, state_dim, kernel=kernel, init=init, l_max=l_max,
                            dt_min=dt_min, dt_max=dt_max, learn_B=learn_B)
        self.norm = _Norm(norm, H)
        self.output_linear = nn.Linear(H, 2 * H)
        self.dropout = nn.Dropout(dropout)

    def _pointwise(self, z):
        z = self.dropout(F.gelu(z))
        return self.dropout(F.glu(self.output_linear(z), dim=-1))

    def forward(self, x):  # (B, L, H)
        z = self.norm(x) if self.prenorm else x
        x = x + self._pointwise(self.ssm(z))
        return x if self.prenorm else self.norm(x)

    def step(self, x_t, state):  # (B, H), (B, H, n, 2); eval semantics
        z = self.norm.step(x_t) if self.prenorm else x_t
        y, state = self.ssm.step(z, state)
        z = F.glu(self.output_linear(F.gelu(y)), dim=-1)
        x_t = x_t + z
        return (x_t if self.prenorm else self.norm.step(x_t)), state


class SequenceModel(nn.Module):
    """Deep diagonal state-space model for sequence classification or regression.

    Parameters
    ----------
    d_input : int
        Features per time step (ignored when ``vocab_size`` is given).
    d_output : int
        Classes (classification logits) or regression targets.
    d_model : int
        Channels H of every block.
    layers : int
        Number of residual blocks.
    state_dim : int or list of int
        Real order N of every SSM (even), or one per layer.
    kernel : {"s4d", "bilinear", "dss-exp", "dss-softmax"}
    init : {"legs", "lin", "inv", "real", "random"}
    dropout : float
    prenorm : bool
        Normalise before (True) or after (False, default) each block.
    norm : {"layer", "batch"}
    pool : {"mean", "last"}
    task : {"classification", "regression"}
        Recorded for the trainer (loss choice); the output is the raw decoder output.
    l_max : int, optional
        Maximum sequence length; required by dss-softmax (its normalisation length).
    vocab_size : int, optional
        Token inputs: x is a LongTensor (batch, length) embedded by ``nn.Embedding``.
    dt_min, dt_max : float
        Range of the initial steps.
    learn_B : bool, optional
        See :class:`SSMLayer` (None: kernel default).
    final_norm : bool, optional
        A norm after the last block; None (default) means ``prenorm``. False with
        prenorm is the state-spaces/s4 ``example.py`` model (``ssmcompress import-s4``).

    Inputs to ``forward``: ``x`` of shape (batch, length, d_input), or (batch, length)
    when ``d_input == 1`` or with ``vocab_size``; ``lengths`` (batch,) optional valid lengths
    (padding at the end).  Output: (batch, d_output).
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_model: int = 64,
        layers: int = 4,
        state_dim=64,
        kernel: str = "s4d",
        init: str = "legs",
        dropout: float = 0.0,
        prenorm: bool = False,
        norm: str = "layer",
        pool: str = "mean",
        task: str = "classification",
        l_max=None,
        vocab_size=None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        learn_B=None,
        final_norm=None,
    ):
        super().__init__()
        check_kernel_name(kernel)
        if init not in INITS:
            raise ValueError(f"Unknown init {init!r}; choose one of {', '.join(sorted(INITS))}.")
        for name, value, valid in (("norm", norm, NORMS), ("pool", pool, POOLS), ("task", task, TASKS)):
            if value not in valid:
                raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(valid)}.")
        for name, value in (("d_output", d_output), ("d_model", d_model), ("layers", layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if vocab_size is None and (not isinstance(d_input, int) or d_input < 1):
            raise ValueError(f"d_input must be a positive integer, got {d_input!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if isinstance(state_dim, (list, tuple)):
            if len(state_dim) != layers:
                raise ValueError(f"state_dim lists one real order per layer: expected {layers} values, got {len(state_dim)}.")
            state_dims = [int(s) for s in state_dim]
        else:
            state_dims = [int(state_dim)] * layers
        for s in state_dims:
            if s < 2 or s % 2:
                raise ValueError(f"state_dim must be a positive even integer (2 per stored mode), got {s}.")
        if kernel == "dss-softmax" and l_max is None:
            raise ValueError("The dss-softmax kernel needs l_max, the sequence length its kernel is normalised over.")

        self.config = dict(
            d_input=d_input, d_output=d_output, d_model=d_model, layers=layers,
            state_dim=state_dim if isinstance(state_dim, int) else list(state_dims),
            kernel=kernel, init=init, dropout=float(dropout), prenorm=bool(prenorm), norm=norm, pool=pool,
            task=task, l_max=None if l_max is None else int(l_max),
            vocab_size=None if vocab_size is None else int(vocab_size),
            dt_min=float(dt_min), dt_max=float(dt_max), learn_B=None if learn_B is None else bool(learn_B),
        )
        if final_norm is not None:  # recorded only when set, so existing configs stay as they were
            self.config["final_norm"] = bool(final_norm)
        self.d_input, self.d_output, self.d_model = d_input, d_output, d_model
        self.pool, self.task, self.vocab_size, self.prenorm = pool, task, vocab_size, bool(prenorm)
        self.encoder = nn.Embedding(vocab_size, d_model) if vocab_size is not None else nn.Linear(d_input, d_model)
        self.blocks = nn.ModuleList(
            _Block(d_model, s, kernel, init, dropout, bool(prenorm), norm, l_max, dt_min, dt_max, learn_B)
            for s in state_dims
        )
        self.final_norm = _Norm(norm, d_model) if (prenorm if final_norm is None else final_norm) else None
        self.decoder = nn.Linear(d_model, d_output)

    # ------------------------------------------------------------------ introspection
    @property
    def state_dims(self):
        """Real order of the SSM of every layer."""
        return [b.ssm.state_dim for b in self.blocks]

    def ssm_layers(self):
        """The SSMLayer of every block, in order."""
        return [b.ssm for b in self.blocks]

    def ssm_parameters(self):
        """SSM parameters of all layers (log_dt, A, learnable B): own lr, no weight decay (S4)."""
        return [p for layer in self.ssm_layers() for p in layer.ssm_parameters()]

    def parameter_counts(self) -> dict:
        """``ssm_params`` (every parameter of the SSM layers: dt, A, B, C, D), ``other_params``, ``params``."""
        params = sum(p.numel() for p in self.parameters())
        ssm = sum(p.numel() for layer in self.ssm_layers() for p in layer.parameters())
        return {"ssm_params": ssm, "other_params": params - ssm, "params": params}

    def other_parameters(self):
        """All trainable parameters not in :meth:`ssm_parameters`."""
        ssm = {id(p) for p in self.ssm_parameters()}
        return [p for p in self.parameters() if id(p) not in ssm]

    # ------------------------------------------------------------------ convolution mode
    def _encode(self, x):
        if self.vocab_size is not None:
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.is_floating_point() or x.is_complex():
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"SequenceModel with vocab_size expects integer tokens of shape (batch, length), got {shape}.")
            return self.encoder(x)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"SequenceModel expects a torch tensor of shape (batch, length, {self.d_input}), got {type(x).__name__}.")
        if x.ndim == 2 and self.d_input == 1:
            x = x[..., None]
        if x.ndim != 3 or x.shape[-1] != self.d_input:
            raise ValueError(f"SequenceModel expects input of shape (batch, length, {self.d_input}), got {tuple(x.shape)}.")
        return self.encoder(x.to(self.decoder.weight.dtype))

    def _check_lengths(self, lengths, B, L, device):
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}.")
        if bool(((lengths < 1) | (lengths > L)).any()):
            raise ValueError(f"lengths must lie in [1, {L}] (the padded length).")
        return lengths.long()

    def _pool(self, h, lengths):  # h (B, L, H)
        B, L, _ = h.shape
        if lengths is None:
            return h.mean(1) if self.pool == "mean" else h[:, -1]
        if self.pool == "last":
            return h[torch.arange(B, device=h.device), lengths - 1]
        mask = (torch.arange(L, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
        return (h * mask[..., None]).sum(1) / lengths.to(h.dtype)[:, None]

    def features(self, x):
        """Per-position features (batch, length, d_model) before pooling."""
        h = self._encode(x)
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h) if self.final_norm is not None else h

    def forward(self, x, lengths=None):
        """x (batch, length, d_input) [or tokens (batch, length)] -> (batch, d_output)."""
        h = self.features(x)
        lengths = self._check_lengths(lengths, h.shape[0], h.shape[1], h.device)
        return self.decoder(self._pool(h, lengths))

    # ------------------------------------------------------------------ recurrent mode
    def default_state(self, batch: int):
        """List of per-layer zero states, each (batch, H, n_layer, 2) real."""
        return [b.ssm.default_state(batch) for b in self.blocks]

    def step(self, x_t, state):
        """One time step in recurrent mode (eval semantics: no dropout, BatchNorm running stats).

        x_t: (batch, d_input) [or tokens (batch,)]; returns per-step features (batch, d_model)
        (apply ``decoder`` to a pooled feature) and the new state list.
        """
        h = self._encode(x_t[:, None] if self.vocab_size is not None or x_t.ndim == 1 else x_t[:, None, :])[:, 0]
        new = []
        for block, s in zip(self.blocks, state):
            h, s = block.step(h, s)
            new.append(s)
        if self.final_norm is not None:
            h = self.final_norm.step(h)
        return h, new

    @torch.no_grad()
    def stream(self, x, lengths=None):
        """Run the whole model step by step; equals ``model(x, lengths)`` in eval mode."""
        h0 = self._encode(x)  # validates x; pointwise, so step-wise encoding is identical
        B, L, _ = h0.shape
        lengths = self._check_lengths(lengths, B, L, h0.device)
        for layer in self.ssm_layers():
            layer.setup_step()
        try:
            state = self.default_state(B)
            total = torch.zeros(B, self.d_model, dtype=h0.dtype, device=h0.device)
            last = torch.zeros_like(total)
            for t in range(L):
                x_t = x[:, t] if (self.vocab_size is not None or x.ndim == 3) else x[:, t, None]
                h, state = self.step(x_t, state)
                valid = torch.ones(B, dtype=torch.bool, device=h.device) if lengths is None else t < lengths
                total = total + torch.where(valid[:, None], h, torch.zeros_like(h))
                is_last = (t == L - 1) if lengths is None else (t == lengths - 1)
                last = torch.where(torch.as_tensor(is_last, device=h.device).reshape(-1, 1), h, last)
            if self.pool == "mean":
                count = torch.full((B,), L, device=h0.device) if lengths is None else lengths
                pooled = total / count.to(total.dtype)[:, None]
            else:
                pooled = last
            return self.decoder(pooled)
        finally:
            for layer in self.ssm_layers():
                layer.clear_step()
