"""Audits over predictions: per-class fairness, membership-inference privacy, the report.

Pure functions over arrays and files; nothing here imports Prefect or MLflow.
"""
