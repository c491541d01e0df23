"""Torch modules: diagonal state-space layers and the sequence model (never imports lti)."""
from .init import INITS, init_inv, init_legs, init_lin, init_random, init_real, initial_modes
from .kernels import KERNELS
from .layer import SSMLayer
from .model import SequenceModel

__all__ = [
    "SSMLayer",
    "SequenceModel",
    "KERNELS",
    "INITS",
    "initial_modes",
    "init_legs",
    "init_lin",
    "init_inv",
    "init_real",
    "init_random",
]
