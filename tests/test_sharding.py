"""Sharding rules and meshes on 8 CPU devices; scan/loop and remat equivalence; train.py runs whose
shardings follow the configured mesh and rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import train
from configs import shapes_tiny
from jaxmodels import sharding
from jaxmodels.layers.block import unstack_layers
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.vision import VisionConfig, VisionTransformer
from tools.golden_sharding import path_name

CFG = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8)
IDS = jnp.asarray(np.random.RandomState(0).randint(0, 64, (4, 8)))


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_logical_to_spec_follows_rules_in_order(mesh):
  assert sharding.logical_to_spec(("embed", "mlp"), (32, 64), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("vocab", "embed"), (64, 32), mesh) == P("tensor", "fsdp")
  # A mesh axis is used once per array: heads takes tensor, so head_dim stays replicated.
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (32, 4, 8), mesh) == P("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("act_batch", "act_length"), (4, 8), mesh) == P(("data", "fsdp"), None)
  # Sizes that do not divide fall back to replication; unknown names are replicated.
  assert sharding.logical_to_spec(("embed",), (3,), mesh) == P(None)
  assert sharding.logical_to_spec(("layers", "whatever"), (2, 8), mesh) == P(None, None)
  custom = [("embed", "tensor"), ("mlp", "fsdp")]
  assert sharding.logical_to_spec(("embed", "mlp"), (32, 64), mesh, custom) == P("tensor", "fsdp")


def test_make_mesh_fills_minus_one_and_validates():
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  assert dict(mesh.shape) == {"data": 2, "fsdp": jax.device_count() // 2, "tensor": 1}
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})
  with pytest.raises(ValueError, match="mesh axis name 'a b'"):
    sharding.make_mesh({"a b": 8})
  with pytest.raises(ValueError, match="mesh axis tensor=0"):
    sharding.make_mesh({"tensor": 0})


def test_mesh_axes_are_data(mesh):
  """Any axis names: a mapping (a config's sorted ConfigDict) takes the conventional order (dcn_*
  first, data, fsdp, others, tensor last), (name, size) pairs their own; the standard axes are always
  there (size 1), so the default rules apply to every mesh."""
  assert sharding.mesh_axis_order(["tensor", "sequence", "fsdp", "data", "dcn_data"]) == (
      "dcn_data", "data", "fsdp", "sequence", "tensor")
  seq = sharding.make_mesh({"data": 2, "fsdp": 2, "sequence": 2, "tensor": 1})
  assert seq.axis_names == ("data", "fsdp", "sequence", "tensor") and seq.shape["sequence"] == 2
  pairs = sharding.make_mesh([("sequence", 4), ("data", -1)])
  assert pairs.axis_names == ("fsdp", "tensor", "sequence", "data") and pairs.shape["data"] == 2
  import ml_collections
  assert sharding.make_mesh(ml_collections.ConfigDict(dict(tensor=2, sequence=2, fsdp=-1))).axis_names == (
      "data", "fsdp", "sequence", "tensor")
  dcn = sharding.make_mesh({"dcn_data": 2, "fsdp": -1})      # one slice (CPU): a plain axis
  assert dict(dcn.shape) == {"dcn_data": 2, "data": 1, "fsdp": 4, "tensor": 1}
  # The default rules split the batch over the dcn_* axes too (data parallel across slices).
  rules = sharding.default_rules(dcn.axis_names)
  assert dict(rules)["act_batch"] == ("dcn_data", "data", "fsdp")
  assert sharding.default_rules(mesh.axis_names) is sharding.DEFAULT_RULES
  assert sharding.batch_sharding(dcn, 2, rules).spec == P(("dcn_data", "fsdp"), None)
  assert sharding.logical_to_spec(("act_batch", "act_length"), (8, 4), seq,
                                  [("act_batch", "data"), ("act_length", "sequence")]) == P("data", "sequence")


def test_dcn_axes_take_the_slices(monkeypatch):
  """On devices in several slices the dcn_* axes span the slices and the others the devices of one
  slice (create_hybrid_device_mesh with the ICI and DCN shapes split by axis); the slice count must
  be the dcn_* axes' product."""
  from jax.experimental import mesh_utils
  calls = []

  def hybrid(ici, dcn, devices):
    calls.append((list(ici), list(dcn)))
    return np.asarray(devices, dtype=object).reshape([a * b for a, b in zip(ici, dcn)])

  monkeypatch.setattr(mesh_utils, "create_hybrid_device_mesh", hybrid)
  monkeypatch.setattr(sharding, "_slice_count", lambda devices: 2)
  mesh = sharding.make_mesh({"dcn_data": 2, "fsdp": 2, "tensor": -1})
  assert calls == [([1, 1, 2, 2], [2, 1, 1, 1])]
  assert dict(mesh.shape) == {"dcn_data": 2, "data": 1, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="dcn_\\* axes multiply to 4, but the devices are in 2 slices"):
    sharding.make_mesh({"dcn_data": 4, "fsdp": -1})
  assert len(calls) == 1 and sharding.make_mesh({"fsdp": -1}).axis_names == ("data", "fsdp", "tensor")


def test_rules_from_config_checks_mesh_axes(mesh):
  """config.sharding_rules: tables normalised, per-tower tables get the mesh's default, and a rule
  naming a missing mesh axis (or a malformed rule) is a one-line ConfigError naming it."""
  import ml_collections

  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.setup import mesh_and_rules
  names = mesh.axis_names
  assert sharding.rules_from_config(None, names) is None
  assert sharding.rules_from_config([["embed", ["fsdp", "tensor"]], ("mlp", None)], names) == (
      ("embed", ("fsdp", "tensor")), ("mlp", None))
  per_tower = sharding.rules_from_config({"dit": [("embed", "tensor")]}, names)
  assert per_tower == {"dit": (("embed", "tensor"),), "default": sharding.DEFAULT_RULES}
  with pytest.raises(ConfigError, match=r"^config.sharding_rules\[1\]=\('act_length', 'sequence'\) names "
                                        r"mesh axis 'sequence', which the mesh does not have \(axes: data, fsdp, "
                                        r"tensor; add it to config.mesh\)$"):
    sharding.rules_from_config([("embed", "fsdp"), ("act_length", "sequence")], names)
  with pytest.raises(ConfigError, match=r"config.sharding_rules.dit\[0\]=\('embed', \('fsdp', 'model'\)\) "
                                        r"names mesh axis 'model'"):
    sharding.rules_from_config({"dit": [("embed", ("fsdp", "model"))]}, names)
  with pytest.raises(ConfigError, match=r"config.sharding_rules\[0\]=\('embed',\): expected \(logical name"):
    sharding.rules_from_config([("embed",)], names)
  with pytest.raises(ConfigError, match="expected a list of"):
    sharding.rules_from_config("embed", names)
  # Through a run's config: the mesh from config.mesh, the EMA copy following its tower's table.
  c = ml_collections.ConfigDict(dict(mesh=dict(data=2, fsdp=2, sequence=2, tensor=1), sharding_rules=None,
                                     train=dict(ema_path="dit")))
  m, rules = mesh_and_rules(c)
  assert m.axis_names == ("data", "fsdp", "sequence", "tensor") and rules is None
  c.sharding_rules = {"dit": [("embed", "sequence")], "llm": [("mlp", "tensor")]}
  _, rules = mesh_and_rules(c)
  assert rules["ema"] == rules["dit"] == (("embed", "sequence"),) and "default" in rules
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=-1, tensor=1))
  with pytest.raises(ConfigError, match=r"config.sharding_rules.dit\[0\]=\('embed', 'sequence'\) names"):
    mesh_and_rules(c)


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_llm_params_and_logits(mesh, scan):
  cfg = CFG.replace(scan_layers=scan)
  reference = LLM(cfg, rngs=nnx.Rngs(0))
  model = sharding.create_sharded(lambda: LLM(cfg, rngs=nnx.Rngs(0)), mesh)
  lead = ("layers",) if scan else ()
  blocks = model.layers.blocks if scan else model.layers.blocks[0]
  expect = {
      "embed": (model.embed.embedding, P("tensor", "fsdp")),
      "lm_head": (model.lm_head.kernel, P("fsdp", "tensor")),
      "q": (blocks.attn.q.kernel, P(*((None,) * len(lead)), "fsdp", "tensor", None)),
      "o": (blocks.attn.o.kernel, P(*((None,) * len(lead)), "tensor", None, "fsdp")),
      "gate": (blocks.mlp.gate.kernel, P(*((None,) * len(lead)), "fsdp", "tensor")),
      "down": (blocks.mlp.down.kernel, P(*((None,) * len(lead)), "tensor", "fsdp")),
      "norm": (model.norm.scale, P("fsdp")),
  }
  for name, (var, spec) in expect.items():
    assert var.get_value().sharding.spec == spec, name
    assert len(var.get_value().sharding.device_set) == 8
  # Same initial values as the unsharded build, and the same logits under the mesh.
  np.testing.assert_allclose(np.asarray(model.embed.embedding.get_value()),
                             np.asarray(reference.embed.embedding.get_value()), atol=1e-7)
  with sharding.use_mesh(mesh):
    ids = jax.device_put(IDS, sharding.batch_sharding(mesh, 2))
    logits = nnx.jit(lambda m, x: m(x))(model, ids)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference(IDS)), atol=1e-5)


def test_shard_module_moves_a_loaded_model(mesh):
  model = LLM(CFG, rngs=nnx.Rngs(1))
  ref = np.asarray(model(IDS))
  sharded = sharding.shard_module(model, mesh)
  assert sharded.layers.blocks[0].mlp.up.kernel.get_value().sharding.spec == P("fsdp", "tensor")
  with sharding.use_mesh(mesh):
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(sharded, IDS)), ref, atol=1e-5)


def _loop_to_scan(loop_model, make):
  """The scanned model with the loop model's weights (layers stacked on axis 0)."""
  scan_model = make()
  flat = dict(nnx.to_flat_state(nnx.state(loop_model, nnx.Param)))
  for path, var in nnx.to_flat_state(nnx.state(scan_model, nnx.Param)):
    if path[:2] == ("layers", "blocks"):
      n = var.get_value().shape[0]
      var.set_value(jnp.stack([flat[path[:2] + (i,) + path[2:]].get_value() for i in range(n)]))
    else:
      var.set_value(flat[path].get_value())
  nnx.update(scan_model, nnx.state(scan_model))
  return scan_model


def test_scan_equals_loop_llm():
  loop = LLM(CFG, rngs=nnx.Rngs(2))
  scan = _loop_to_scan(loop, lambda: LLM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(3)))
  np.testing.assert_allclose(np.asarray(scan(IDS)), np.asarray(loop(IDS)), atol=1e-5)
  out_l = loop.forward(IDS, return_layer_outputs=True).layer_outputs
  out_s = scan.forward(IDS, return_layer_outputs=True).layer_outputs
  np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_l), atol=1e-5)


def test_scan_equals_loop_vision():
  cfg = VisionConfig(hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, image_size=16,
                     patch_size=4)
  loop = VisionTransformer(cfg, rngs=nnx.Rngs(0))
  scan = _loop_to_scan(loop, lambda: VisionTransformer(cfg.replace(scan_layers=True), rngs=nnx.Rngs(1)))
  x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  a, b = loop(x, output_hidden_states=True), scan(x, output_hidden_states=True)
  np.testing.assert_allclose(np.asarray(b.hidden_states), np.asarray(a.hidden_states), atol=1e-5)
  np.testing.assert_allclose(np.asarray(b.pooler_output), np.asarray(a.pooler_output), atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_loss_and_grads(scan, remat):
  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(IDS))[..., 0])
  base = LLM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(4))
  other = LLM(CFG.replace(scan_layers=scan, remat=remat), rngs=nnx.Rngs(4))
  l1, g1 = nnx.value_and_grad(loss)(base)
  l2, g2 = nnx.value_and_grad(loss)(other)
  np.testing.assert_allclose(l1, l2, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2)
  with pytest.raises(ValueError, match="unknown remat policy"):
    LLM(CFG.replace(remat="sometimes"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
def test_kv_cache_decode_equals_full_forward(per_layer):
  model = LLM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(5))
  full = np.asarray(model(IDS))
  if per_layer:   # generate's layout: per-layer buffers, which need the layers unstacked
    with pytest.raises(ValueError, match="unstacked"):
      model.forward(IDS[:, :5], None, jnp.ones((4, 8), jnp.int32), cache=model.init_cache(4, 8, per_layer=True))
    unstack_layers(model)
  cache = model.init_cache(4, 8, per_layer=per_layer)
  mask = jnp.ones((4, 8), jnp.int32)
  out = model.forward(IDS[:, :5], None, mask, cache=cache, cache_index=0)
  steps = [np.asarray(model.logits(out.hidden))]
  cache = out.cache
  for i in range(5, 8):
    out = model.forward(IDS[:, i:i + 1], jnp.full((4, 1), i), mask, cache=cache, cache_index=i)
    cache = out.cache
    steps.append(np.asarray(model.logits(out.hidden)))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_attention_impls_agree():
  from jaxmodels.layers.attention import dot_product_attention, make_attention_mask
  rs = np.random.RandomState(0)
  q = jnp.asarray(rs.normal(size=(2, 6, 4, 8)), jnp.float32)
  k = jnp.asarray(rs.normal(size=(2, 6, 2, 8)), jnp.float32)
  v = jnp.asarray(rs.normal(size=(2, 6, 2, 8)), jnp.float32)
  valid = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1]])
  mask = make_attention_mask(jnp.arange(6), jnp.arange(6), valid, causal=True)
  a = dot_product_attention(q, k, v, mask, scale=8 ** -0.5, impl="einsum")
  b = dot_product_attention(q, k, v, mask, scale=8 ** -0.5, impl="xla")
  rows = np.asarray(jnp.any(mask[:, 0], axis=-1))   # skip fully-masked query rows
  np.testing.assert_allclose(np.asarray(a)[rows], np.asarray(b)[rows], atol=1e-5)
  window = make_attention_mask(jnp.arange(6), jnp.arange(6), None, causal=True, sliding_window=2)
  assert np.asarray(window[0, 0]).sum(axis=-1).tolist() == [1, 2, 2, 2, 2, 2]


def test_per_tower_rules(mesh):
  """A tower's own table (MaxDiffusion style) overrides the default for params under that tower."""
  model = nnx.eval_shape(lambda: LLM(CFG, rngs=nnx.Rngs(0)))
  rules = {"lm_head": [("embed", "tensor"), ("vocab", "fsdp")], "default": sharding.DEFAULT_RULES}
  sh = sharding.state_shardings(nnx.state(model), mesh, rules)
  assert sh["lm_head"]["kernel"].get_value().spec == P("tensor", "fsdp")
  assert sh["embed"]["embedding"].get_value().spec == P("tensor", "fsdp")      # default: vocab, embed
  assert sh["layers"]["blocks"][0]["mlp"]["up"]["kernel"].get_value().spec == P("fsdp", "tensor")


def test_causal_flag_and_even_length_padding_match_the_mask():
  """The fused-kernel paths: `causal=True` (no mask array; `is_causal` for xla/cudnn) and the padding
  of odd lengths that cuDNN's masked (bias) kernel needs give the plain masked result."""
  from jaxmodels.layers.attention import _even_lengths, dot_product_attention, make_attention_mask
  rs = np.random.RandomState(1)
  q = jnp.asarray(rs.normal(size=(2, 7, 4, 8)), jnp.float32)
  k = jnp.asarray(rs.normal(size=(2, 7, 2, 8)), jnp.float32)
  v = jnp.asarray(rs.normal(size=(2, 7, 2, 8)), jnp.float32)
  mask = make_attention_mask(jnp.arange(7), jnp.arange(7), None, causal=True)
  ref = dot_product_attention(q, k, v, mask, scale=0.3, impl="einsum")
  for impl in ("einsum", "xla"):
    np.testing.assert_allclose(dot_product_attention(q, k, v, None, scale=0.3, impl=impl, causal=True),
                               ref, atol=1e-5)
  np.testing.assert_allclose(_even_lengths(q, k, v, mask, 0.3, impl="xla"), ref, atol=1e-5)
  np.testing.assert_allclose(_even_lengths(q, k, v, None, 0.3, impl="xla", causal=True), ref, atol=1e-5)
  full = dot_product_attention(q, k, v, None, scale=0.3, impl="einsum")          # no mask at all
  np.testing.assert_allclose(_even_lengths(q, k, v, None, 0.3, impl="xla"), full, atol=1e-5)
  with pytest.raises(ValueError, match="causal=True takes no mask"):
    dot_product_attention(q, k, v, mask, scale=0.3, causal=True)


def test_llm_fused_causal_path_matches_the_masked_one():
  """attention_impl="xla" drops the mask array for plain causal inputs: same logits and gradients."""
  cfg = CFG.replace(num_layers=2, scan_layers=True)
  ref = LLM(cfg, rngs=nnx.Rngs(0))
  fused = LLM(cfg.replace(attention_impl="xla"), rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 9)))
  loss = lambda m: jnp.square(m(ids)).mean()        # noqa: E731
  (l_ref, g_ref), (l_fused, g_fused) = nnx.value_and_grad(loss)(ref), nnx.value_and_grad(loss)(fused)
  np.testing.assert_allclose(l_fused, l_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fused)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_batches_and_activations_follow_the_configured_rules(mesh):
  """Batch shardings and activation constraints read the rules they are given (one table or per-tower
  tables, whose "default" table they follow), not the built-in DEFAULT_RULES."""
  custom = [("act_batch", "data")] + [r for r in sharding.DEFAULT_RULES if r[0] != "act_batch"]
  assert sharding.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
  assert sharding.batch_sharding(mesh, 2, custom).spec == P("data", None)
  per_tower = {"default": custom, "layers": list(sharding.DEFAULT_RULES)}
  assert sharding.batch_sharding(mesh, 3, per_tower).spec == P("data", None, None)
  assert sharding.batch_sharding(mesh, 2, {"layers": custom}).spec == P(("data", "fsdp"), None)  # no default
  model = sharding.create_sharded(lambda: LLM(CFG, rngs=nnx.Rngs(0)), mesh, per_tower)
  ref = np.asarray(LLM(CFG, rngs=nnx.Rngs(0))(IDS))
  with sharding.use_mesh(mesh, per_tower):          # a per-tower table traces (activations: "default")
    ids = jax.device_put(IDS, sharding.batch_sharding(mesh, 2, per_tower))
    hidden = nnx.jit(lambda m, x: m.forward(x).hidden)(model, ids)
    logits = nnx.jit(lambda m, x: m(x))(model, ids)
  assert hidden.sharding.spec[0] == "data"
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5)


############################ train.py runs with configured sharding ########################
# The shardings a run actually used (its state and the batches it placed, as handed to the compiled
# step, and the compiled step's own input shardings) follow `config.mesh` and
# `config.sharding_rules`, not the built-in defaults. Two tiny 2-step ShapesWorld runs (the
# ShapesWorld evaluations stubbed out: only the layout is checked): per-tower rules (the LLM
# tensor-sharded, the DiT fsdp-sharded, its EMA like the DiT), and one table with custom batch rules
# on a mesh with an added `sequence` axis.

LLM_TENSOR = [("act_batch", ("data", "fsdp")), ("act_heads", "tensor"), ("act_mlp", "tensor"),
              ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"), ("vocab", "tensor")]
DIT_FSDP = [("embed", "fsdp"), ("mlp", "fsdp"), ("heads", "fsdp"), ("kv_heads", "fsdp")]
SEQUENCE_RULES = [("act_batch", "data"), ("act_length", "sequence")] + [
    r for r in sharding.DEFAULT_RULES if r[0] not in ("act_batch", "act_length")]


def _specs(tree) -> dict[str, P]:
  """{path: PartitionSpec} of a pytree of arrays or shardings."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]
  return {path_name(p): (x if isinstance(x, jax.sharding.Sharding) else x.sharding).spec for p, x in leaves}


def _run(data_dir, workdir, config):
  """Runs train.py on `config`; returns what its first compiled step was given: {"state", "batch":
  {path: spec}, "compiled": {"state", "batch": {path: spec}}, "mesh": axis names, "hlo": text}."""
  from jaxmodels import trainer
  from jaxmodels.evals import shapes_eval
  seen = {}
  make = trainer.make_train_step

  class Lowered:
    def __init__(self, lowered):
      self.lowered = lowered

    def __getattr__(self, name):                # cost_analysis, as_text, ...
      return getattr(self.lowered, name)

    def compile(self):
      compiled = self.lowered.compile()
      if "compiled" not in seen:
        args = compiled.input_shardings[0]
        seen["compiled"] = {"state": _specs(args[0]), "batch": _specs(args[1])}
      return compiled

  class Step:
    def __init__(self, fn):
      self.fn = fn

    def __getattr__(self, name):                # __wrapped__ (train.py's FLOP count), ...
      return getattr(self.fn, name)

    def lower(self, state, batch, rng):
      lowered = self.fn.lower(state, batch, rng)
      if "state" not in seen:
        seen.update(state=_specs(state), batch=_specs(batch), hlo=lowered.as_text(),
                    mesh=jax.tree.leaves(batch)[0].sharding.mesh.axis_names)
      return Lowered(lowered)

  config.data.data_dir = data_dir
  config.train.update(total_steps=2, log_every=1, eval_every=100, ckpt_every=100)
  config.checkpoint.async_save = False
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "make_train_step", lambda *a, **k: Step(make(*a, **k)))
    mp.setattr(shapes_eval, "evaluate_model", lambda *a, **k: {})
    train.train_and_evaluate(config, str(workdir))
  return seen


@pytest.fixture(scope="module")
def per_tower(data_dir, tmp_path_factory):
  c = shapes_tiny.get_config("runlocal,target=pixels")
  c.mesh = dict(data=2, fsdp=2, tensor=2)
  c.sharding_rules = {"llm": LLM_TENSOR, "dit": DIT_FSDP}
  c.train.ema_decay = 0.9                       # train.ema_path="dit": an EMA copy of the DiT
  return _run(data_dir, tmp_path_factory.mktemp("per_tower"), c)


@pytest.fixture(scope="module")
def sequence_axis(data_dir, tmp_path_factory):
  c = shapes_tiny.get_config("runlocal")
  c.mesh = dict(data=2, fsdp=2, sequence=2, tensor=1)
  c.sharding_rules = SEQUENCE_RULES
  return _run(data_dir, tmp_path_factory.mktemp("sequence"), c)


def _axes(spec: P) -> set[str]:
  return {a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)}


@pytest.mark.slow
def test_per_tower_rules_reach_the_run(per_tower):
  for seen in (per_tower, per_tower["compiled"]):
    state = seen["state"]
    llm = {p: s for p, s in state.items() if p.startswith("model/llm/")}
    dit = {p: s for p, s in state.items() if p.startswith("model/dit/")}
    assert llm and dit
    assert all("fsdp" not in _axes(s) for s in llm.values()), llm
    assert any("tensor" in _axes(s) for s in llm.values())
    assert all("tensor" not in _axes(s) for s in dit.values()), dit
    assert any("fsdp" in _axes(s) for s in dit.values())
    # The DiT's EMA copy and its Adam moments are laid out like the DiT itself.
    ema = {p[len("ema/"):]: s for p, s in state.items() if p.startswith("ema/")}
    assert ema and all(ema[p] == dit["model/dit/" + p] for p in ema), ema
    mu = {p.split("/mu/", 1)[1]: s for p, s in state.items() if "/mu/" in p}
    assert all(mu[p[len("model/"):]] == s for p, s in {**llm, **dit}.items() if p[len("model/"):] in mu)
    assert state["model/llm/embed/embedding"] == P("tensor", None)          # vocab -> tensor, no fsdp
    # Batches cross towers: they follow the "default" table (DEFAULT_RULES here).
    assert set(seen["batch"]) >= {"und_ids", "gen_image"}
    for key, spec in seen["batch"].items():
      assert spec[0] == ("data", "fsdp") and all(e is None for e in spec[1:]), (key, spec)
  assert per_tower["compiled"]["state"] == per_tower["state"]


@pytest.mark.slow
def test_custom_batch_rules_and_a_sequence_axis_reach_the_run(sequence_axis):
  assert sequence_axis["mesh"] == ("data", "fsdp", "sequence", "tensor")
  for seen in (sequence_axis, sequence_axis["compiled"]):
    for key, spec in seen["batch"].items():       # act_batch -> data only
      assert spec[0] == "data" and all(e is None for e in spec[1:]), (key, spec)
    state = seen["state"]
    assert state["model/llm/embed/embedding"] == P(None, "fsdp")             # tensor=1: vocab whole
    assert not any("sequence" in _axes(s) for s in state.values())          # no parameter rule names it
  # act_length -> sequence: the activations' sharding constraints split the length over `sequence`.
  assert '[{"data"}, {"sequence"}' in sequence_axis["hlo"], "no activation constrained over sequence"
  np.testing.assert_equal(sorted(sequence_axis["compiled"]["batch"]), sorted(sequence_axis["batch"]))
