"""Ablation configs for `tools/ablate.py` (docs/ablations.md): one file per ablation, `get_config(arg)`
with `arg` = "<arm>[,runlocal][,stage=...]", a module-level `ARMS` tuple and the `METRICS` it reports."""
