"""Export: the shipped inference artefacts and how fast they run.

`onnx` (ONNX export, offline optimisation, sessions, parity), `quantize` (INT8 and FP16
variants), `fusion` (exact inference rewrites of a trained model), `variants` (which variants
ship and the checks they pass) and `benchmark` (torch against the ONNX variants).
"""
