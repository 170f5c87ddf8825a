"""Training: everything `fit` needs to turn a split into a checkpoint.

`registry` (architectures), `presets` (preprocessing and augmentation), `fit` (the training
loop's driver; `predict` re-exported), `loop` (one epoch and its steps), `averaging` (EMA with
warm-up), `budget` (time budget), `private` (DP-SGD with Opacus), `distributed` (torchrun +
DDP), `checkpoints` (atomic writes, safe loading), `runtime` (device and precision), `speed`
(FLOPs, device peak, utilisation), `transfer` (fine-tuning, distillation), `benchtrain`
(the training benchmark behind `auditflow bench-train`), `canaries` (the one-run audit's
canaries, drawn once) and `stage` (the train stage: resume or reuse, fit, keep, its report).
"""
