"""The trained model outside PyTorch: the real-valued streaming step as ONNX and as dependency-free C99.

onnx and onnxruntime are optional (``pip install 'ssmcompress[export]'``); the C export needs nothing
but a C99 compiler and libm on the target.
"""
from .realstep import BlockWeights, NormWeights, StepWeights, TorchStreamer, stream_outputs

__all__ = ["StepWeights", "BlockWeights", "NormWeights", "TorchStreamer", "stream_outputs"]
