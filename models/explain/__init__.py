"""Transparency: what the shipped model looks at, and whether it cheats on a shortcut.

`attribution` (Captum attributions of a seeded sample, the model-randomisation sanity check of
Adebayo et al. 2018, the deletion curve against random deletion), `shortcut` (per class, the
small window where attribution concentrates, tested causally both ways against a random window
of the same size) and `stage` (the transparency stage: its checks and its report).
"""
