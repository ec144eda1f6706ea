"""train.py end to end at :runlocal size: checkpoints, metrics, final scores, exact resume."""
import json
import shutil

import pytest

import train
from configs import shapes_tiny


def _config(data_dir, **train_overrides):
  c = shapes_tiny.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(log_every=1, **train_overrides)
  c.evals.update(qa_per_kind=2, geneval_prompts=4, sample_steps=2, batch_size=4)
  c.checkpoint.async_save = False
  return c


def _losses(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_train_end_to_end_and_exact_resume(data_dir, tmp_path):
  full = tmp_path / "full"
  scores = train.train_and_evaluate(_config(data_dir), str(full))
  assert sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  for name in ("metrics.jsonl", "scores.json", "samples.png", "tokenizer.json", "config.json"):
    assert (full / name).is_file(), name
  assert set(scores) == {"qa", "geneval"} and 0.0 <= scores["geneval"]["overall"] <= 1.0
  assert (full / "geneval" / "results.jsonl").is_file()
  losses = _losses(full)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]

  # A run that stopped after step 3 resumes from its checkpoint (model, optimizer, data iterator)
  # and computes exactly the same losses for steps 4-6.
  resumed = tmp_path / "resumed"
  shutil.copytree(full, resumed, ignore=shutil.ignore_patterns("6", "metrics.jsonl", "tb"))
  train.train_and_evaluate(_config(data_dir), str(resumed))
  again = _losses(resumed)
  assert sorted(again) == [4, 5, 6]
  for step in (4, 5, 6):
    assert again[step] == losses[step], (step, again[step], losses[step])
