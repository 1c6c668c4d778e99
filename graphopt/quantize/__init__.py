"""Post-training int8 quantization: calibration of tensor ranges for the quantize-qdq pass."""
