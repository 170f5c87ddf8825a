"""Tuning: hyperparameter search with Optuna.

`space` (the search space, the validated study plan and the rule that chooses the trial to
ship) and `study` (one trial, the driver that runs a study, its figures).
"""
