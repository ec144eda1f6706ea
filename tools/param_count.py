"""Parameter counts per component of a config's model, from `jax.eval_shape` only (nothing allocated).

    python tools/param_count.py --config=configs/blip3o_8b.py
    python tools/param_count.py --config=configs/pisces_8b.py:tiny

Prints one JSON object: llm, und_encoder, und_projector, gen_encoder, gen_projector, image_tokenizer,
queries, query_embed, connector, dit, patch_head, autoencoder, vae (the frozen in-model DC-AE), edit_latents, total,
trainable (after the config's optim.trainable / optim.frozen filters).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:arg]).")


def count(config) -> dict[str, int]:
  import jax
  import numpy as np
  from flax import nnx

  from jaxmodels.trainer.optim import trainable_filter
  from jaxmodels.trainer.setup import model_factory

  model = nnx.eval_shape(model_factory(config, resolve_inputs=False))   # counting needs no prompt ids

  def n(state) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))

  out = {}
  for part in ("llm", "und_encoder", "und_projector", "gen_encoder", "gen_projector", "image_tokenizer",
               "queries", "query_embed", "connector", "dit", "patch_head", "autoencoder", "vae", "edit_latents"):
    node = getattr(model, part, None)
    out[part] = 0 if node is None else n(nnx.state(node, nnx.Param) if isinstance(node, nnx.Module) else node)
  out["total"] = n(nnx.state(model, nnx.Param))
  keep = trainable_filter(config.optim.trainable, config.optim.frozen)
  out["trainable"] = n(nnx.state(model, keep))
  return out


def main(argv):
  del argv
  from jaxmodels.errors import run_cli
  run_cli(lambda: print(json.dumps(count(_CONFIG.value), indent=2)))   # config errors: one line


if __name__ == "__main__":
  app.run(main)
