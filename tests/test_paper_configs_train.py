"""The paper configs' `:tiny` variants run through train.py on the embedded ShapesWorld data, as their
docstrings say (`python train.py --config=configs/<paper>.py:tiny --workdir=...`): every batch key the
model reads is produced, and the final ShapesWorld evaluation finds every setting it reads."""
import importlib

import numpy as np
import pytest

import train
from input_pipeline.datasets import make_train_data
from jaxmodels.config_schema import base_config
from jaxmodels.errors import ConfigError
from jaxmodels.unified.model_io import model_io

PAPER_CONFIGS = ["pisces_8b", "blip3o_4b", "blip3o_8b", "blip3o_next_3b", "metaquery_b", "metaquery_l",
                 "metaquery_xl", "latte_flow"]


def _tiny(name):
  return importlib.import_module(f"configs.{name}").get_config("tiny")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_tiny_variants_have_what_train_py_needs(name):
  config = _tiny(name)
  # train.py's data sources carry images, not precomputed latents: a latent target needs the
  # in-model DC-AE (frozen).
  if config.model.get("gen_target") == "latents":
    assert config.model.get("vae") is not None and "vae/.*" in config.optim.frozen
  # The ShapesWorld evaluations read these settings (base_config's defaults, tiny sizes here).
  for key in ("which", "qa_per_kind", "geneval_prompts", "sample_steps", "guidance", "batch_size"):
    assert key in config.evals, key
  assert config.evals.geneval_prompts < base_config().evals.geneval_prompts


def test_latent_target_without_a_vae_is_a_config_error(data_dir):
  config = _tiny("metaquery_b")
  config.data.data_dir = data_dir
  config.model.vae = None
  with pytest.raises(ConfigError, match=r"config.model.vae=None: .*batch\['gen_latents'\]"):
    make_train_data(config, None, io=model_io(config.model))


@pytest.mark.slow
def test_metaquery_tiny_trains_and_evaluates_through_train_py(data_dir, tmp_path):
  """MetaQuery-B :tiny (frozen MLLM, SANA head on the in-model DC-AE's latents): two steps, then the
  final evaluation with the config's own settings, shrunk."""
  config = _tiny("metaquery_b")
  config.data.update(data_dir=data_dir, config="tiny", batch_size=8)   # the 8 test devices
  config.train.update(total_steps=2, log_every=1, eval_every=2, ckpt_every=2)
  config.evals.update(qa_per_kind=2, geneval_prompts=2, sample_steps=1, batch_size=8, rover_tasks=1,
                      colorbench_per_task=1, colorbench_seeds=1)
  config.checkpoint.async_save = False
  scores = train.train_and_evaluate(config, str(tmp_path))
  assert {"qa", "colorbench", "geneval", "rover_ig", "rover_tg"} <= set(scores)
  assert all(np.isfinite(v) for table in scores.values() for v in table.values() if v is not None)
  assert (tmp_path / "checkpoints" / "2").is_dir() and (tmp_path / "samples.png").is_file()


@pytest.mark.slow
def test_florence_vl_tiny_trains_and_scores_understanding_through_train_py(data_dir, tmp_path):
  """Florence-VL :tiny is an understanding-only unified model: train.py trains it on ShapesWorld and
  scores Q/A and ColorBench; GenEval and ROVER, which need generation, are absent."""
  config = importlib.import_module("configs.florence_vl_3b").get_config("tiny")
  config.data.update(data_dir=data_dir, config="tiny", batch_size=8)
  config.train.update(total_steps=2, log_every=1, eval_every=2, ckpt_every=2)
  config.evals.update(qa_per_kind=2, geneval_prompts=2, batch_size=8, colorbench_per_task=1, colorbench_seeds=1)
  config.checkpoint.async_save = False
  assert not model_io(config.model).generates
  scores = train.train_and_evaluate(config, str(tmp_path))
  assert set(scores) >= {"qa", "colorbench"} and not set(scores) & {"geneval", "rover_ig", "rover_tg"}
  assert all(0.0 <= v <= 1.0 for v in scores["qa"].values())
