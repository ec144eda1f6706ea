r"""Scores a checkpoint, or an existing folder of generated images, on the ShapesWorld benchmarks.

    # a training run's checkpoint (latest step, or --step): Q/A accuracy + ShapesWorld-GenEval
    python evaluate.py --config=configs/shapes_tiny.py --checkpoint=runs/shapes_tiny --out=runs/eval
    # any model's images in GenEval's official layout, scored with the strict shapes detector
    python evaluate.py --score_only --geneval_dir=DIR --metadata=prompts.jsonl --out=runs/eval

Writes the official GenEval files (results.jsonl, summary_scores.txt), `results.json` with every score,
and prints the score table. The checkpoint mode restores the same state tree that train.py saved
(built abstractly, so nothing is allocated twice) and reads the run's tokenizer.json.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags


def _define_flags():
  """CLI flags, defined only when run as a script (so train.py and evaluate.py import together)."""
  global _CONFIG, _CHECKPOINT, _STEP, _OUT, _SCORE_ONLY, _GENEVAL_DIR, _METADATA
  global _ALLOW_INCOMPLETE, _IMAGES_PER_PROMPT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (checkpoint mode).")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The run's workdir (holds checkpoints/, tokenizer.json).")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
  _SCORE_ONLY = flags.DEFINE_bool("score_only", False, "Score --geneval_dir without a model.")
  _GENEVAL_DIR = flags.DEFINE_string("geneval_dir", None, "Images in GenEval's layout (score-only mode).")
  _METADATA = flags.DEFINE_string("metadata", None, "GenEval prompt file (evaluation_metadata.jsonl).")
  _ALLOW_INCOMPLETE = flags.DEFINE_bool("allow_incomplete", False, "Score an incomplete image folder.")
  _IMAGES_PER_PROMPT = flags.DEFINE_integer("images_per_prompt", 4, "Images per prompt (GenEval: 4).")


def score_only(geneval_dir: str, metadata: str, out: str, *, allow_incomplete: bool,
               images_per_prompt: int = 4) -> dict:
  from jaxmodels.evals import geneval
  from jaxmodels.evals.detectors import ShapesDetector
  summary = geneval.score_folder(geneval_dir, metadata, ShapesDetector(), out_dir=out,
                                 allow_incomplete=allow_incomplete,
                                 images_per_prompt=images_per_prompt)["summary"]
  return {"geneval": {"overall": summary["overall"],
                      **{t: v["accuracy"] for t, v in summary["tags"].items()}}}


def evaluate_checkpoint(config, workdir: str, out: str, step: int | None = None) -> dict:
  import jax
  from flax import nnx

  from input_pipeline.datasets import default_data_dir
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels import sharding
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.errors import CheckpointFormatError
  from jaxmodels.evals import shapes_world as shapes_eval
  from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory

  mesh, rules = mesh_and_rules(config)
  make_state, _ = train_state_factory(config)
  abstract = nnx.eval_shape(make_state)
  graphdef, state = nnx.split(abstract)
  target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise CheckpointFormatError(f"{ckpt.directory}: no checkpoint to evaluate")
  model = nnx.merge(graphdef, ckpt.restore(step, target)).model
  tok_path = os.path.join(workdir, "tokenizer.json")
  if not os.path.exists(tok_path):
    raise CheckpointFormatError(f"{tok_path}: missing (the run's tokenizer is saved there by train.py)")
  scores = shapes_eval.evaluate_model(model, WordTokenizer.load(tok_path), config,
                                      config.data.get("data_dir") or default_data_dir(), out,
                                      rng=jax.random.key(config.seed + 1), final=True)
  return {"step": step, **scores}


def main(argv):
  del argv
  from jaxmodels.errors import run_cli
  run_cli(_run)


def _run():
  from jaxmodels.evals import shapes_world as shapes_eval
  os.makedirs(_OUT.value, exist_ok=True)
  if _SCORE_ONLY.value:
    if not (_GENEVAL_DIR.value and _METADATA.value):
      raise app.UsageError("--score_only needs --geneval_dir and --metadata")
    scores = score_only(_GENEVAL_DIR.value, _METADATA.value, _OUT.value,
                        allow_incomplete=_ALLOW_INCOMPLETE.value,
                        images_per_prompt=_IMAGES_PER_PROMPT.value)
  else:
    if not (_CONFIG.value and _CHECKPOINT.value):
      raise app.UsageError("checkpoint mode needs --config and --checkpoint (or use --score_only)")
    scores = evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUT.value, _STEP.value)
  with open(os.path.join(_OUT.value, "results.json"), "w") as f:
    json.dump(scores, f, indent=2)
  shapes_eval.print_scores({k: v for k, v in scores.items() if isinstance(v, dict)})


if __name__ == "__main__":
  _define_flags()
  app.run(main)
