"""Florence-VL: DBFusion shapes and modes, a jitted training step of the `:tiny` configs, and full-size
parameter counts from `nnx.eval_shape` (never allocated)."""
import importlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import presets
from jaxmodels.errors import ConfigError
from jaxmodels.llm import LLM
from jaxmodels.sharding import param_count
from jaxmodels.trainer import TrainState, make_optimizer, make_train_step, trainable_filter
from jaxmodels.unified.dbfusion import DEFAULT_PROMPTS, FUSION_MODES, DBFusion
from jaxmodels.unified.florence_vl import florence_vl_config
from jaxmodels.unified.model import UnifiedModel
from jaxmodels.vision.florence2 import Florence2, florence2_preset


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _count(make):
  return param_count(nnx.eval_shape(make))


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_dbfusion_output_shapes(mode):
  config = _config("florence_vl_8b", "tiny")
  config.model.dbfusion.mode = mode
  fc = florence_vl_config(config.model)
  fusion = nnx.eval_shape(lambda: DBFusion(fc.und_encoder, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), fusion, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  n, d = 4, 32                                    # 64 px / 32 = 2×2 tokens; Florence width 32
  want = {"channel_concat": (4 * n, 4 * d), "token_concat": (4 * n, d), "average": (n, d)}[mode]
  assert fc.und_encoder.num_tokens == (n if mode != "token_concat" else 4 * n)
  assert fusion.projector.layers[0].kernel.shape == (want[1] if mode == "channel_concat" else d,
                                                     fc.llm.hidden_size)
  assert out.shape == (2, fc.und_encoder.num_tokens, fc.llm.hidden_size)   # projector width = LLM width


def test_fusion_modes_combine_the_streams():
  streams = [jnp.full((1, 2, 3), float(i)) for i in range(4)]
  fuse = lambda mode: DBFusion.fuse(types.SimpleNamespace(config=types.SimpleNamespace(mode=mode)),  # noqa
                                    streams)
  np.testing.assert_array_equal(fuse("channel_concat")[0, 0], np.repeat(np.arange(4.0), 3))
  np.testing.assert_array_equal(fuse("token_concat")[0, :, 0], np.repeat(np.arange(4.0), 2))
  np.testing.assert_array_equal(fuse("average"), np.full((1, 2, 3), 1.5))


def _batch(model: UnifiedModel, b=2, seed=0, t=None):
  c = model.config
  rs = np.random.RandomState(seed)
  text = rs.randint(1, c.llm.vocab_size - 1, (b, 6 if t is None else t - model.num_image_tokens))
  ids = np.concatenate([text[:, :1], np.full((b, model.num_image_tokens), c.image_token_id), text[:, 1:]], 1)
  loss_mask = np.zeros_like(ids)
  loss_mask[:, -3:] = 1
  side = c.und_encoder.image_size
  return dict(und_image=jnp.asarray(rs.uniform(-1, 1, (b, side, side, 3)), jnp.float32),
              und_ids=jnp.asarray(ids, jnp.int32), und_mask=jnp.ones(ids.shape, jnp.int32),
              und_loss_mask=jnp.asarray(loss_mask, jnp.int32))


def _build(config, seed=0):
  """The model with numpy-random parameters: `nnx.eval_shape` then fill (eager per-parameter jax.random
  initialisation costs about a minute of XLA compiles on a loaded 2-core CPU)."""
  abstract = nnx.eval_shape(lambda: UnifiedModel(florence_vl_config(config.model), rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rs = np.random.RandomState(seed)
  leaves = []
  for path, var in nnx.to_flat_state(state):
    shape = var.get_value().shape
    value = rs.normal(0.0, 0.05, shape).astype(np.float32) + (1.0 if path[-1] == "scale" else 0.0)
    leaves.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def test_tiny_config_takes_a_jitted_train_step(tmp_path):
  # The trainer's pieces: the model type routed by config.model.type and a batch of real LLaVA rows.
  from input_pipeline.datasets import make_train_data
  from jaxmodels.unified.model_io import model_io
  from jaxmodels.trainer.setup import model_factory
  from test_train_realdata import _write_llava
  config = _config("florence_vl_8b", "tiny,data=llava_json")
  assert type(nnx.eval_shape(model_factory(config))) is UnifiedModel
  config.data.source.json_path = _write_llava(tmp_path, corrupt=False)
  config.data.batch_size = 2
  model = _build(config)
  data = io = model_io(config.model)
  assert io.num_image_tokens == model.num_image_tokens and io.und_image_size == model.answer_image_size
  data = make_train_data(config, str(tmp_path / "work"), io=io)
  real = next(data.iterator)
  tx, lr = make_optimizer(config.optim.to_dict(), 10)
  wrt = trainable_filter(config.optim.trainable, config.optim.frozen)
  ts = TrainState(model, tx, wrt=wrt)
  before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(ts.model, nnx.Param))}
  graphdef, state = nnx.split(ts)
  step = make_train_step(ts, lr_schedule=lr)
  batch = {k: jnp.asarray(v) for k, v in real.items()}
  assert jax.tree.map(jnp.shape, batch) == jax.tree.map(jnp.shape, _batch(model, t=64))
  state, metrics = step(state, batch, jax.random.key(0))     # lr 0 (warmup starts at 0)
  state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["und_loss"]))
  after = {p: np.asarray(v.get_value())
           for p, v in nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state).model, nnx.Param))}
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  florence = {p for p in before if p[:2] == ("und_encoder", "florence")}
  assert any(p[0] == "llm" for p in changed) and any(p[:2] == ("und_encoder", "projector") for p in changed)
  assert config.optim.frozen is None and changed & florence        # stage 1 trains Florence-2 too


@pytest.mark.parametrize("name,arg,frozen", [("florence_vl_3b", "tiny,stage=2", True),
                                             ("florence_vl_8b", "tiny,freeze_florence", True),
                                             ("florence_vl_3b", "tiny", False)])
def test_stages_freeze_florence(name, arg, frozen):
  config = _config(name, arg)
  fc = florence_vl_config(config.model)
  assert fc.und_encoder.frozen == frozen
  abstract = nnx.eval_shape(lambda: UnifiedModel(fc, rngs=nnx.Rngs(0)))
  wrt = trainable_filter(config.optim.trainable, config.optim.frozen)
  trained = {p[:2] for p, _ in nnx.to_flat_state(nnx.state(abstract, wrt))}
  assert ("llm", "embed") in trained and ("und_encoder", "projector") in trained
  assert (("und_encoder", "florence") in trained) == (not frozen)


def test_config_errors_and_prompt_ids_required():
  config = _config("florence_vl_8b", "tiny")
  config.model.dbfusion.mode = "concat"
  with pytest.raises(ConfigError, match="mode='concat'"):
    florence_vl_config(config.model)
  full = florence_vl_config(_config("florence_vl_8b").model)
  assert full.und_encoder.num_tokens == 576 and full.und_encoder.projector_in == 4 * 1024
  fusion = nnx.eval_shape(lambda: DBFusion(full.und_encoder, rngs=nnx.Rngs(0)))
  with pytest.raises(ConfigError, match="prompt_ids is not set"):
    fusion.prompt_batch(577)


def test_florence2_large_param_counts():
  # Source: microsoft/Florence-2-large model card, "0.77B" for the whole encoder-decoder; tolerance 1%.
  model = nnx.eval_shape(lambda: Florence2(florence2_preset("florence2-large", scan_layers=True),
                                           rngs=nnx.Rngs(0)))
  total = param_count(model)
  assert abs(total - 0.77e9) / 0.77e9 < 0.01, total
  # Vision tower + projection + encoder (what Florence-VL keeps): the total minus the 12-layer decoder
  # and its position table / embedding norm. Our count: 567.6M (Florence-2-large has no separate
  # published figure for this part, so it is pinned exactly).
  decoder = param_count(model.decoder) + model.decoder_positions.size + param_count(model.decoder_embed_norm)
  assert total - decoder == 567_561_216
  assert param_count(model.vision_tower) + param_count(model.image_projection) == 362_833_920


@pytest.mark.parametrize("preset,published,source", [
    ("phi3.5-mini", 3.82e9, "microsoft/Phi-3.5-mini-instruct model card: 3.82B"),
    ("llama3.1-8b", 8.03e9, "meta-llama/Llama-3.1-8B model card: 8.03B"),
])
def test_llm_param_counts(preset, published, source):
  n = _count(lambda: LLM(presets.llm_preset(preset, scan_layers=True), rngs=nnx.Rngs(0)))
  assert abs(n - published) / published < 0.01, (n, source)


@pytest.mark.parametrize("name,llm,width", [("florence_vl_3b", "phi3.5-mini", 3072),
                                            ("florence_vl_8b", "llama3.1-8b", 4096)])
def test_full_florence_vl_is_the_sum_of_its_parts(name, llm, width):
  fc = florence_vl_config(_config(name).model)
  assert fc.llm.hidden_size == width and fc.und_encoder.image_size == 768 and fc.und_encoder.num_tokens == 576
  total = _count(lambda: UnifiedModel(fc, rngs=nnx.Rngs(0)))
  llm_n = _count(lambda: LLM(presets.llm_preset(llm, scan_layers=True), rngs=nnx.Rngs(0)))
  projector = 4096 * width + width + 2 * (width * width + width)
  assert total == 567_561_216 + projector + llm_n


def _bart_like_tokenizer(folder):
  """A word-level tokenizer.json whose post-processor wraps text in <s> ... </s> (as Florence-2's)."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors
  split = lambda p: p.replace(".", " .").replace("?", " ?").replace(",", " ,").split()  # noqa: E731
  words = ["<s>", "<pad>", "</s>", "<unk>"] + sorted({w for p in DEFAULT_PROMPTS for w in split(p)})
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.Punctuation()])
  tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                     special_tokens=[("<s>", 0), ("</s>", 2)])
  tok.save(str(folder / "tokenizer.json"))
  return words


def test_prompt_ids_from_a_local_tokenizer_or_a_one_line_error(tmp_path):
  from jaxmodels.trainer.setup import model_factory
  words = _bart_like_tokenizer(tmp_path)
  config = _config("florence_vl_3b")
  with pytest.raises(ConfigError, match=r"^config.model.dbfusion.tokenizer is not set"):
    model_factory(config)                           # the trainer needs the prompt ids
  config.model.dbfusion.tokenizer = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="config.model.dbfusion.tokenizer='.*missing'"):
    florence_vl_config(config.model)
  config.model.dbfusion.tokenizer = str(tmp_path)
  ids = florence_vl_config(config.model).und_encoder.prompt_ids
  assert [[words[i] for i in p] for p in ids][1] == ["<s>", "What", "is", "the", "text", "in", "the", "image",
                                                     "?", "</s>"]
  assert all(p[0] == 0 and p[-1] == 2 and 3 not in p for p in ids)


def test_param_count_tool_counts_florence_vl_without_a_tokenizer():
  """tools/param_count.py builds the model config.model.type names (here Florence-VL, abstractly)."""
  from configs import florence_vl_3b
  from tools import param_count as tool
  counts = tool.count(florence_vl_3b.get_config())
  assert counts["total"] == counts["trainable"] > 4_000_000_000
  assert counts["llm"] > 3_000_000_000
