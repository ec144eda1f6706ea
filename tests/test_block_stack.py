"""BlockStack: a scanned stack equals the Python loop over the same weights, in its output and its
gradients, whether the scan is traced as a loop or (short stacks on the CPU) unrolled."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels.layers import block
from jaxmodels.llm import LLM, LLMConfig

CFG = LLMConfig(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=3,
                num_heads=2, num_kv_heads=1)


def _loss_and_grads(model, ids):
  graphdef, state = nnx.split(model)

  def loss(state):
    m = nnx.merge(graphdef, state)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return jnp.mean(m.logits(m.forward(ids, pos, jnp.ones_like(ids)).hidden) ** 2)
  fn = jax.jit(jax.value_and_grad(loss))
  return fn(state), fn.lower(state).as_text()


def test_unrolled_and_looped_scans_match_the_python_loop():
  ids = jax.random.randint(jax.random.key(1), (2, 5), 0, CFG.vocab_size)
  scanned = LLM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(0))
  loop = block.unstack_layers(nnx.clone(scanned))        # the same weights, as a loop of 3 blocks
  (want, want_grads), _ = _loss_and_grads(loop, ids)
  assert block.scan_unroll(3) == (jax.default_backend() == "cpu") and not block.scan_unroll(100)
  results = {}
  for limit in (0, 8):                      # 0: every scan keeps its loop; 8: this 3-layer one unrolls
    with block.scan_unroll_limit(limit):
      assert block.scan_unroll(3) == bool(limit)
      results[limit] = _loss_and_grads(scanned, ids)
  assert "while" in results[0][1] and "while" not in results[8][1]
  for (value, grads), _ in results.values():
    np.testing.assert_allclose(value, want, rtol=1e-5)
    loop_grads = dict(nnx.to_flat_state(want_grads))
    for path, g in nnx.to_flat_state(grads):   # layer i of a stacked gradient is the loop's layer i
      if path[:2] == ("layers", "blocks"):
        for i in range(CFG.num_layers):
          np.testing.assert_allclose(g[...][i], loop_grads[path[:2] + (i,) + path[2:]][...],
                                     rtol=1e-4, atol=1e-6, err_msg=str(path))
      else:
        np.testing.assert_allclose(g[...], loop_grads[path][...], rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_step_flops_counts_every_layer_of_a_looped_scan():
  # XLA's cost analysis counts a while body once; step_flops retraces with the stacks unrolled. As in
  # train.py, the jitted function counted is the one already lowered with looped scans (its trace
  # is cached, so the count must not reuse it).
  from jaxmodels.trainer.metrics import compiled_flops, step_flops
  ids = jnp.ones((2, 5), jnp.int32)
  deep, shallow = (LLM(CFG.replace(scan_layers=True, num_layers=n), rngs=nnx.Rngs(0)) for n in (3, 1))

  def jitted(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s: nnx.merge(graphdef, s).logits(nnx.merge(graphdef, s).forward(ids).hidden)), state
  with block.scan_unroll_limit(0):
    fn, state = jitted(deep)
    looped = fn.lower(state)
    assert "stablehlo.while" in looped.as_text()
    counted = step_flops(fn, state, lowered=looped)
    one = step_flops(*jitted(shallow))
    plain = compiled_flops(looped)
  loop_fn, loop_state = jitted(block.unstack_layers(nnx.clone(deep)))   # no scan: every layer in the HLO
  loop = step_flops(loop_fn, loop_state)
  assert counted == pytest.approx(loop, rel=1e-3) and counted > 2 * one
  assert plain == pytest.approx(one, rel=0.05)          # the loop alone counts one layer's worth
