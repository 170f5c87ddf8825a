"""Compute for the pipeline's model stages, grouped by concern (one subpackage each):

- `training/`: architectures, preprocessing, `fit` and its loop, EMA, time budget, DP-SGD,
  data-parallel training, checkpoints, device and precision, speed accounting, transfer and
  the training benchmark;
- `evaluation/`: inference (logits, test-time augmentation), metrics and calibration;
- `export/`: ONNX export, reduced-precision variants, inference rewrites and the inference
  benchmark;
- `tuning/`: hyperparameter search (the search space and plan; running a study);
- `references.py`: the privacy audit's reference models.

Pure compute: nothing here imports Prefect or MLflow.
"""
