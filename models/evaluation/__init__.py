"""Evaluation: from a trained model to the numbers the audits and the report use.

`inference` (logits on uint8 images, test-time augmentation, the audits' query views),
`metrics` (accuracy, per-class P/R/F1, confusion matrix, ECE, the learning check),
`calibration` (temperature scaling, reliability bins) and `stage` (the evaluate stage: scoring
every split once into a `Predictions` container, and its report and checks).
"""
