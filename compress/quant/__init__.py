"""INT8: fake-quantized models that export to the Q/DQ ONNX graphs integer kernels run."""
