"""Exporters: PyTorch model -> deployable artifact (ONNX; TensorRT arrives with its issue)."""
