"""ssmcompress: train S4 models with diagonal state-space layers and compress them.

See DESIGN.md (shared) for the architecture; the public interface is re-exported here.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy re-exports, so that `import ssmcompress` stays light and `ssmcompress.lti` never pulls torch
    if name in ("SequenceModel", "SSMLayer"):
        from . import nn
        return getattr(nn, name)
    if name in ("DiagonalSSM", "balanced_truncation", "hankel_singular_values"):
        from . import lti
        return getattr(lti, name)
    if name == "compress_model":
        from .compress import compress_model
        return compress_model
    raise AttributeError(f"module 'ssmcompress' has no attribute {name!r}")


__all__ = ["SequenceModel", "SSMLayer", "DiagonalSSM", "balanced_truncation", "hankel_singular_values",
           "compress_model"]
