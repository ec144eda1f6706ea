"""A run directory as train.py leaves one, with random weights: checkpoints/0/{state,config} and
tokenizer.json (a WordTokenizer over `words`). For tests of what reads a run (evaluate.py's
benchmark writers, serving), where the files and the bookkeeping are under test, not the outputs."""
import json


def random_run(workdir, words: str, config=None):
  """Writes the run into `workdir` (a pathlib.Path) and returns it; `config` defaults to
  shapes_tiny:runlocal."""
  from flax import nnx

  from configs import shapes_tiny
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.trainer.setup import train_state_factory
  config = shapes_tiny.get_config("runlocal") if config is None else config
  make_state, _ = train_state_factory(config)
  ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ckpt.save(0, nnx.state(make_state()), config=json.loads(config.to_json_best_effort()))
  ckpt.close()
  WordTokenizer.from_texts([words]).save(str(workdir / "tokenizer.json"))
  return workdir
