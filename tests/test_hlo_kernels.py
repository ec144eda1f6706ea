"""tools/hlo_kernels.py: the step loop's kernels read from optimised HLO text (a hand-built module whose
census follows by hand, and a real XLA:CPU compilation), and the GPU target lookup's error."""
import sys

import jax
import jax.numpy as jnp
import pytest

from test_bench_smoke import TOOLS

sys.path.insert(0, TOOLS)
from hlo_kernels import gpu_target_device, loop_kernels  # noqa: E402

HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_norm (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %c = f32[] constant(2)
  %b = f32[8]{0} broadcast(%c), dimensions={}
  %m = f32[8]{0} multiply(%p0, %b)
  ROOT %r = f32[8]{0} rsqrt(%m)
}

%fused_sum (p0.1: f32[8]) -> f32[] {
  %p0.1 = f32[8]{0} parameter(0)
  %z = f32[] constant(0)
  ROOT %s = f32[] reduce(%p0.1, %z), dimensions={0}, to_apply=%add
}

%inner_body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%t), index=1
  %k = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_norm, metadata={op_name="jit(step)/while/body/rsqrt"}
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %o = (s32[], f32[8]{0}) tuple(%i, %k)
}

%outer_body (t.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t.1 = (s32[], f32[8]{0}) parameter(0)
  %x.1 = f32[8]{0} get-tuple-element(%t.1), index=1
  %g = f32[8]{0} custom-call(%x.1), custom_call_target="__cublas$gemm", metadata={op_name="jit(step)/dot_general"}
  %s.1 = f32[] fusion(%g), kind=kInput, calls=%fused_sum
  %w = (s32[], f32[8]{0}) while(%t.1), condition=%cond, body=%inner_body, backend_config={"known_trip_count":{"n":"3"}}
  %c.1 = f32[8]{0} copy(%x.1)
  ROOT %o.1 = (s32[], f32[8]{0}) tuple(%i.1, %c.1)
}

%small_body (t.2: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t.2 = (s32[], f32[8]{0}) parameter(0)
  ROOT %k.2 = f32[8]{0} fusion(%t.2), kind=kLoop, calls=%fused_norm
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w.1 = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%small_body
  %w.2 = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%outer_body, backend_config={"known_trip_count":{"n":"32"}}
  ROOT %r.1 = f32[8]{0} get-tuple-element(%w.2), index=1
}
"""


def test_loop_kernels_of_a_hand_built_module():
  c = loop_kernels(HLO)
  # The larger loop is the step loop; its body: a cuBLAS call, a reduction fusion, the inner loop's
  # one fusion three times (its trip count), a copy; tuple plumbing is not a kernel.
  assert c["loop_body"] == "outer_body" and c["trip_count"] == 32
  assert c["kernels_per_step"] == 1 + 1 + 3 + 1
  assert c["by_kind"] == {"fusion:kLoop": 3, "custom-call:__cublas$gemm": 1, "fusion:kInput": 1, "copy": 1}
  names = [r["name"] for r in c["kernels"]]
  assert names == ["g", "s.1", "k", "c.1"]
  k = c["kernels"][2]
  assert (k["ops"], k["repeat"], k["source"], k["shape"]) == ("multiply rsqrt", 3, "rsqrt", "f32[8]")
  assert c["kernels"][1]["ops"] == "reduce"
  with pytest.raises(ValueError, match="no while loop"):
    loop_kernels(HLO.replace("while(", "call("))


def test_loop_kernels_of_a_real_compilation():
  # XLA:CPU's optimised HLO of a fori_loop: the loop body's work is found, by the ops it fuses.
  def f(x):
    return jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ x) * 2.0, x)
  hlo = jax.jit(f).lower(jnp.ones((16, 16))).compile().as_text()
  c = loop_kernels(hlo)
  assert c["kernels_per_step"] >= 1
  text = " ".join(f"{r['op']} {r['ops']}" for r in c["kernels"])
  assert "tanh" in text and "dot" in text


def test_an_unknown_gpu_target_names_the_known_ones():
  with pytest.raises(ValueError, match=r"'a100'.*\['h100', 'h200'\]"):
    gpu_target_device("a100")
