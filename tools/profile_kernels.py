"""Where a compiled program's time goes, kernel by kernel: a `jax.profiler` trace of LLM decoding or of
a LaTtE-Flow sample, summarised per kernel. On a GPU the rows are device kernels (also those run inside
XLA's command buffers / CUDA graphs); on the CPU they are XLA's thunks.

    python tools/profile_kernels.py --target=decode --size=xl --dtype=bfloat16        # on a GPU
    python tools/profile_kernels.py --target=latte --size=small --unroll_group=off
    python tools/profile_kernels.py --target=decode --size=smoke --steps=4 --json     # used by a test

Reports, per step (a decoded token, or a sampling step): kernels, summed kernel time, the wall span and
their ratio `busy_ratio` — on a GPU ≈ 1 means the device never waited for a launch (kernel-bound; the
kernels themselves must get faster or fewer), well below 1 means launch- or host-bound; on the CPU
thunks overlap across threads, so it can exceed 1 — and the top kernels by time with the HLO op each
belongs to. Per-step figures include the once-per-call work (decode: prefill and the per-call weight
copies; counts below 1 per step) spread over the steps. `--trace_dir` keeps the trace (its perfetto_trace.json.gz opens in ui.perfetto.dev); the
optimised HLO that names the ops comes from `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`.
Session 12's H200 decode profile (BENCHMARKS.md) was read this way.
"""
from __future__ import annotations

import tempfile

from bench_common import (DTYPES, SIZES, emit, kernel_table, latte_sampler, latte_setup,  # noqa: I001
                          lm_config, load_trace, machine)

from absl import app, flags

_TARGET = flags.DEFINE_enum("target", "decode", ["decode", "latte"], "What to trace.")
_SIZE = flags.DEFINE_string("size", "smoke", "decode: a bench_common.SIZES name (smoke, small, large, "
                            "xl); latte: a bench_common.LATTE_SIZES name (smoke, small).")
_STEPS = flags.DEFINE_integer("steps", 32, "Decoded tokens (decode) or sampling steps (latte).")
_BATCH = flags.DEFINE_integer("batch", 1, "decode: batch size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "decode: weight and compute dtype.")
_FUSE = flags.DEFINE_bool("fuse", True, "decode: generate(fuse_projections=...).")
_TRANSPOSE = flags.DEFINE_enum("transpose_kernels", "auto", ["auto", "none", "small", "all"],
                               "decode: generate(transpose_kernels=...); auto: None (its default).")
_UNROLL = flags.DEFINE_enum("unroll_group", "auto", ["auto", "on", "off"],
                            "latte: LatteConfig.unroll_group None / True / False.")
_TOP = flags.DEFINE_integer("top", 20, "Kernels listed.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "Keep the trace here (default: a temporary directory).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")

_TRI = {"auto": None, "on": True, "off": False}


def _decode_program(size: str, steps: int, batch: int, dtype: str, fuse: bool, transpose):
  """A zero-argument run of `generate` on a random LLM of SIZES[size], and its module name."""
  import numpy as np
  from flax import nnx

  from jaxmodels.generate import generate
  from jaxmodels.llm import LLM

  s = SIZES[size]
  model = LLM(lm_config(s, scan_layers=True, dtype=dtype, param_dtype=dtype), rngs=nnx.Rngs(0))
  ids = np.random.RandomState(0).randint(1, s["vocab_size"], (batch, 16))
  return (lambda: generate(model, ids, steps, fuse_projections=fuse, transpose_kernels=transpose)
          .block_until_ready()), "jit__generate"


def _latte_program(size: str, steps: int, unroll):
  latte, _, inputs = latte_setup(size, unroll_group=unroll)
  run, state = latte_sampler(latte, steps)
  return (lambda: run(state, *inputs).block_until_ready()), "jit_run"


def main(argv):
  del argv
  import jax

  if _TARGET.value == "decode":
    fn, module = _decode_program(_SIZE.value, _STEPS.value, _BATCH.value, _DTYPE.value, _FUSE.value,
                                 None if _TRANSPOSE.value == "auto" else _TRANSPOSE.value)
  else:
    fn, module = _latte_program(_SIZE.value, _STEPS.value, _TRI[_UNROLL.value])
  fn()                                                   # compile and warm up outside the trace
  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="profile_kernels_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    fn()
  table = kernel_table(load_trace(trace_dir), module, _STEPS.value, _TOP.value)
  result = {"machine": machine(), "target": _TARGET.value, "size": _SIZE.value, "trace_dir": trace_dir,
            **table}
  unit = "token" if _TARGET.value == "decode" else "sampling step"
  rows = [f"machine: {result['machine']}",
          f"{module}: {table['kernels_per_step']:.1f} kernels per {unit} ({table['distinct_kernels']} distinct), "
          f"kernel time {table['busy_us_per_step']:.1f} us, wall {table['span_us_per_step']:.1f} us "
          f"(busy ratio {table['busy_ratio']:.2f}; {'device kernels' if table['on_device'] else 'host thunks'})",
          f"{'us/' + unit[:5]:>11} {'share':>6} {'count':>6} {'us each':>8}  kernel  [HLO op]"]
  rows += [f"{r['us_per_step']:11.1f} {r['share']:6.1%} {r['per_step']:6.1f} {r['us_each']:8.2f}  "
           f"{r['name'][:60]}  [{r['hlo_op'][:40]}]" for r in table["top"]]
  rows.append(f"trace: {trace_dir}")
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
