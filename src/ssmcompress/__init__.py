"""ssmcompress: train S4 models with diagonal state-space layers and compress them.

See DESIGN.md (shared) for the architecture; the public interface is re-exported here.
"""
__version__ = "0.1.0"
