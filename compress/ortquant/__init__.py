"""``compress quantize MODEL.onnx``: static INT8 of anyone's ONNX classifier with onnxruntime, and
what it cost (accuracy against the FP32 file, side-by-side speed, the kernels that really run)."""
