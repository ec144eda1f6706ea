"""The unified model's paper families as registered parts (jaxmodels/unified/generation_paths.py,
dits.py): each paper config picks its generation path, flow target and flow head by data, and the model
hands its loss and sampler to the path it names."""
import importlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.flow.lumina import LuminaNextDiT
from jaxmodels.flow.sana import SanaTransformer
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified import generation_paths as gp
from jaxmodels.unified.build import unified_config
from jaxmodels.unified.dits import build_dit
from jaxmodels.unified.latte_flow import LatteFlow

FAMILIES = [  # (config, arg, path, flow head, target)
    ("metaquery_b", "tiny", "queries", SanaTransformer, gp.LatentTarget),
    ("blip3o_8b", "tiny", "queries", LuminaNextDiT, gp.FeatureTarget),
    ("pisces_8b", "tiny", "queries", LuminaNextDiT, gp.FeatureTarget),
    ("blip3o_next_3b", "tiny", "image_tokens", SanaTransformer, gp.LatentTarget),
    ("latte_flow", "tiny", "layerwise", LatteFlow, gp.LatentTarget),
    ("shapes_tiny", "target=ae,width=32,layers=1", "queries", LuminaNextDiT, gp.AutoencoderTarget),
    ("shapes_tiny", "target=tokens,width=32,layers=1", "patch_tokens", type(None), None),
]


def _abstract(name, arg):
  cfg = unified_config(importlib.import_module(f"configs.{name}").get_config(arg).model)
  return cfg, nnx.eval_shape(lambda: UnifiedModel(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name,arg,path,head,target", FAMILIES, ids=[f"{f[0]}:{f[1]}" for f in FAMILIES])
def test_each_paper_config_names_its_parts(name, arg, path, head, target):
  cfg, model = _abstract(name, arg)
  assert cfg.generation_path == path and isinstance(gp.PATHS[path], gp.GenerationPath)
  assert type(model.dit) is head
  if target is not None:
    assert type(gp.TARGETS[cfg.gen_target]) is target


def test_an_unknown_flow_head_is_a_config_error():
  with pytest.raises(ConfigError, match="config.model.dit: a dict is not a flow head"):
    build_dit({"num_layers": 2}, rngs=nnx.Rngs(0))


def test_the_model_hands_loss_and_sampling_to_its_path(monkeypatch):
  """A path registered under the config's key receives the model and the call's arguments."""
  cfg, _ = _abstract("shapes_tiny", "target=tokens,width=32,layers=1")
  model = UnifiedModel(cfg, rngs=nnx.Rngs(0))
  seen = {}

  class Recording(gp.GenerationPath):
    def loss(self, m, batch, rng):
      seen["loss"] = (m is model, sorted(batch))
      return jnp.float32(1.5), {"gen_loss": jnp.float32(1.5)}

    def sample(self, m, ids, mask, rng, **kw):
      seen["sample"] = (m is model, kw["guidance"], kw["num_steps"])
      return jnp.zeros((ids.shape[0], 4, 4, 3)), "codes"

  monkeypatch.setitem(gp.PATHS, "patch_tokens", Recording())
  ids = jnp.ones((2, 3), jnp.int32)
  loss, metrics = model.generation_loss({"gen_ids": ids, "gen_mask": ids}, jax.random.key(0))
  assert float(loss) == 1.5 and seen["loss"] == (True, ["gen_ids", "gen_mask"])
  x, codes = model.generate_image(ids, ids, jax.random.key(1), guidance=2.5, num_steps=7, return_codes=True)
  assert x.shape == (2, 4, 4, 3) and codes == "codes" and seen["sample"] == (True, 2.5, 7)
