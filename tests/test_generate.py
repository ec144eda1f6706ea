"""Greedy decoding equals transformers' generate(do_sample=False); sampling controls behave."""
import math

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.generate import generate, sample_logits  # noqa: E402
from oracles import perturb_, save_tiny  # noqa: E402

NEW = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 bos_token_id=None, eos_token_id=None, pad_token_id=0)
  model = perturb_(transformers.AutoModelForCausalLM.from_config(cfg).eval(), 0.1)
  path = save_tiny(model, tmp_path_factory.mktemp("gen"))
  return model, hf.from_pretrained(path), path


def _reference(model, ids, mask, **kw):
  with torch.no_grad():
    return model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                          do_sample=False, **kw).numpy()


def test_greedy_matches_transformers(pair):
  model, ours, _ = pair
  ids = np.random.RandomState(0).randint(1, 97, (2, 8))
  mask = np.ones_like(ids)
  np.testing.assert_array_equal(np.asarray(generate(ours, ids, NEW)), _reference(model, ids, mask))


def test_greedy_left_padded_batch_matches_transformers(pair):
  model, ours, _ = pair
  ids = np.random.RandomState(1).randint(1, 97, (3, 9))
  mask = np.ones_like(ids)
  mask[0, :4], mask[2, :1] = 0, 0
  ids[mask == 0] = 0
  out = np.asarray(generate(ours, ids, NEW, attention_mask=mask))
  np.testing.assert_array_equal(out, _reference(model, ids, mask))


def test_scanned_layers_decode_the_same(pair):
  # Stacked [L, ...] layer weights: generate unstacks them once, outside its token loop
  # (BlockStack.unstack); the padded batch exercises the cache masks too.
  model, _, path = pair
  scanned = hf.from_pretrained(path, scan_layers=True)
  ids = np.random.RandomState(1).randint(1, 97, (3, 9))
  mask = np.ones_like(ids)
  mask[0, :4] = 0
  ids[mask == 0] = 0
  out = np.asarray(generate(scanned, ids, NEW, attention_mask=mask))
  np.testing.assert_array_equal(out, _reference(model, ids, mask))
  assert scanned.layers.scan   # the caller's model keeps its stacked layout


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scanned"])
def test_remat_models_decode_the_same(pair, scan_layers):
  # A remat policy (the training configs set one) must not break decoding: generate runs the
  # (unstacked) blocks inside its token loop, where nnx.remat raised TraceContextError.
  model, _, path = pair
  ours = hf.from_pretrained(path, scan_layers=scan_layers, remat="dots")
  ids = np.random.RandomState(2).randint(1, 97, (2, 8))
  np.testing.assert_array_equal(np.asarray(generate(ours, ids, NEW)),
                                _reference(model, ids, np.ones_like(ids)))


def test_fused_projections_match_the_separate_ones(pair):
  # generate joins q/k/v and gate/up into one matmul each (the default) or not: same tokens, both
  # equal to transformers'; the layers' outputs agree to float rounding, with qkv bias, qk-norm and
  # grouped KV heads, and cross-attention keeps using the separate projections.
  from flax import nnx

  from jaxmodels.layers.attention import Attention
  from jaxmodels.layers.mlp import GatedMLP
  model, ours, _ = pair
  ids = np.random.RandomState(3).randint(1, 97, (2, 8))
  ref = _reference(model, ids, np.ones_like(ids))
  for fuse in (True, False):
    for transpose in (False, True):     # kernels as stored / transposed (the GPU default)
      out = generate(ours, ids, NEW, fuse_projections=fuse, transpose_kernels=transpose)
      np.testing.assert_array_equal(np.asarray(out), ref)
  assert ours.layers.blocks[0].attn.qkv is None        # the caller's model is left as it was
  assert ours.layers.blocks[0].attn.q.kernel_t is None

  x, ctx = jax.random.normal(jax.random.key(0), (2, 5, 16)), jax.random.normal(jax.random.key(1), (2, 3, 16))
  attn = Attention(16, 4, 2, qkv_bias=True, qk_norm=True, rngs=nnx.Rngs(0))
  for name in ("q", "k", "v"):
    getattr(attn, name).bias[...] = jax.random.normal(jax.random.key(2), getattr(attn, name).bias.shape)
  mlp = GatedMLP(16, 24, use_bias=True, rngs=nnx.Rngs(1))
  mlp.up.bias[...] = jnp.ones((24,))
  before = attn(x)[0], attn(x, kv_input=ctx)[0], mlp(x)
  attn.fuse_qkv()
  mlp.fuse_gate_up()
  assert attn.qkv.kernel.shape == (16, 4 + 2 + 2, 4) and mlp.gate_up.kernel.shape == (16, 48)
  for a, b in zip(before, (attn(x)[0], attn(x, kv_input=ctx)[0], mlp(x))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  # Transposed kernels ([K_out, K_in] copies, multi-dimensional in/out shapes, with bias): same outputs.
  for layer in (attn.qkv, attn.q, attn.o, mlp.gate_up, mlp.down):
    layer.transpose_kernel()
    assert layer.kernel_t.shape == (math.prod(layer.out_shape), math.prod(layer.in_shape))
  for a, b in zip(before, (attn(x)[0], attn(x, kv_input=ctx)[0], mlp(x))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_small_layout_transposes_the_kernels_xla_gpu_reduces(pair, monkeypatch):
  # transpose_kernels="small" (the GPU batch-1 default) picks the layers XLA's GPU compiler would run as
  # multiply + reduce: (1 + K_out) * K_in below the threshold. Tiny model (D 32, 4 q / 2 kv heads of
  # 8, MLP 64): fused q/k/v 65 * 32 = 2080, o 33 * 32 = 1056, down 33 * 64 = 2112, gate/up 129 * 32.
  from flax import nnx

  from jaxmodels.layers import linear
  from jaxmodels.layers.block import unstack_layers
  _, ours, _ = pair
  monkeypatch.setattr(linear, "XLA_GPU_DOT_REDUCE_SIZE", 2100)
  blk = unstack_layers(nnx.clone(ours), fuse_projections=True, transpose_kernels="small").layers.blocks[0]
  picked = {name: getattr(mod, name).kernel_t is not None
            for mod, name in ((blk.attn, "qkv"), (blk.attn, "o"), (blk.mlp, "gate_up"), (blk.mlp, "down"))}
  assert picked == {"qkv": True, "o": True, "gate_up": False, "down": False}
  everything = unstack_layers(nnx.clone(ours), fuse_projections=True, transpose_kernels="all")
  assert everything.layers.blocks[0].mlp.gate_up.kernel_t is not None
  assert everything.lm_head.kernel_t is None           # the output head keeps its layout
  # At the real threshold: an xl o projection (2048 x 2048) is reduced, the fused q/k/v (2048 x 6144) not.
  monkeypatch.undo()
  shapes = nnx.eval_shape(lambda: [linear.Linear(2048, n, axes=("embed", "mlp")) for n in (2048, 6144)])
  assert [l.reduced_on_gpu() for l in shapes] == [True, False]
  with pytest.raises(ValueError, match="transpose_kernels"):
    generate(ours, np.ones((1, 4), np.int32), 2, transpose_kernels="some")


def test_lower_generate_compiles_an_abstract_model_for_a_device():
  # lower_generate: generate's program from an abstract model (nothing allocated), its arguments placed
  # on a given device (here the CPU; a compile-only GPU device in tools/profile_kernels.py --gpu_target).
  # The kernel-layout default follows the platform compiled for.
  import sys

  from flax import nnx

  from jaxmodels.generate import default_transpose_kernels, lower_generate
  from jaxmodels.llm import LLM, LLMConfig
  from test_bench_smoke import TOOLS
  sys.path.insert(0, TOOLS)
  from hlo_kernels import loop_kernels

  cfg = LLMConfig(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                  num_heads=2, num_kv_heads=1, scan_layers=True)
  abstract = nnx.eval_shape(lambda: LLM(cfg, rngs=nnx.Rngs(0)))
  lowered = lower_generate(abstract, np.ones((1, 4), np.int32), 3, device=jax.devices()[0])
  census = loop_kernels(lowered.compile().as_text())
  assert census["kernels_per_step"] > 5 and "dot" in " ".join(r["op"] + " " + r["ops"] for r in census["kernels"])
  assert [default_transpose_kernels(1, "gpu"), default_transpose_kernels(8, "gpu"),
          default_transpose_kernels(1, "cuda"), default_transpose_kernels(1, "cpu")] == ["small", "none",
                                                                                       "small", "none"]


def test_eos_then_pad(pair):
  model, ours, _ = pair
  ids = np.random.RandomState(0).randint(1, 97, (2, 8))
  free = np.asarray(generate(ours, ids, NEW))
  eos = int(free[0, 8 + 3])   # a token row 0 emits at step 3
  out = np.asarray(generate(ours, ids, NEW, eos_token_id=eos, pad_token_id=0))
  ref = _reference(model, ids, np.ones_like(ids), eos_token_id=eos, pad_token_id=0)
  np.testing.assert_array_equal(out[:, :ref.shape[1]], ref)
  first = 8 + int(np.argmax(out[0, 8:] == eos))
  assert first <= 8 + 3 and (out[0, first + 1:] == 0).all()


def test_sampling_is_seeded_and_topk1_is_greedy(pair):
  _, ours, _ = pair
  ids = np.random.RandomState(2).randint(1, 97, (2, 6))
  a = generate(ours, ids, 8, temperature=1.0, rng=jax.random.key(3))
  b = generate(ours, ids, 8, temperature=1.0, rng=jax.random.key(3))
  np.testing.assert_array_equal(a, b)
  greedy = generate(ours, ids, 8)
  np.testing.assert_array_equal(generate(ours, ids, 8, temperature=0.7, top_k=1, rng=jax.random.key(4)),
                                greedy)
  with pytest.raises(ValueError, match="rng"):
    generate(ours, ids, 4, temperature=1.0)


def test_top_p_keeps_only_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = jax.vmap(lambda k: sample_logits(logits, k, temperature=1.0, top_p=0.7, greedy=False))(
      jax.random.split(jax.random.key(0), 400))
  assert set(np.unique(np.asarray(draws)).tolist()) == {0, 1}   # 0.5 < 0.7 needs the second token


def test_top_k_then_top_p_draws_the_truncated_softmax():
  # Expected by hand: softmax over the 4 best of 50, then the nucleus reaching 0.8, renormalised.
  logits = jax.random.normal(jax.random.key(1), (1, 50)) * 2.0
  p = np.exp(np.asarray(logits[0], np.float64) / 0.9)
  best = np.argsort(-p)[:4]
  q = p[best] / p[best].sum()
  n_keep = int(np.sum((np.cumsum(q) - q) < 0.8))
  want = np.zeros(50)
  want[best[:n_keep]] = q[:n_keep] / q[:n_keep].sum()
  draws = np.asarray(jax.vmap(lambda k: sample_logits(logits, k, temperature=0.9, top_k=4, top_p=0.8,
                                                      greedy=False))(jax.random.split(jax.random.key(2), 4000)))
  seen = np.bincount(draws[:, 0], minlength=50) / len(draws)
  assert set(np.flatnonzero(seen)) <= set(best[:n_keep].tolist())
  np.testing.assert_allclose(seen, want, atol=0.03)
