"""Architectures, the training loop, evaluation metrics, ONNX export and inference benchmarks.

Pure compute: nothing here imports Prefect or MLflow.
"""
