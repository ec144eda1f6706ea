"""Experiment configs: each file has `get_config(arg)` and a docstring with its run command."""
