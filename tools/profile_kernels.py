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
BENCHMARKS.md's H200 decode profile was read this way.

`--gpu_target=h200` (decode only) needs no GPU: it compiles the decoding program for that GPU
(`hlo_kernels.gpu_target_device`; the jax CUDA plugin installed, `JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`
without the CUDA libraries) and lists the kernels of one decoding step from the optimised HLO, in
order, with the ops each fuses — which kernels a library change adds or removes, not their times:

    JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python tools/profile_kernels.py --target=decode --size=xl \
        --dtype=bfloat16 --gpu_target=h200 --top=40
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
_GPU_TARGET = flags.DEFINE_string("gpu_target", "", "decode: compile only, for this GPU (h100, h200 or a "
                                  "GpuTargetConfig textproto; tools/hlo_kernels.py), and list the "
                                  "kernels of one decoding step from the optimised HLO (no timings, no GPU "
                                  "needed; the jax CUDA plugin must be installed).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")

_TRI = {"auto": None, "on": True, "off": False}


def _decode_model(size: str, dtype: str, abstract: bool = False):
  """A random LLM of SIZES[size] (scanned layers; `abstract`: shapes only, via nnx.eval_shape)."""
  from flax import nnx

  from jaxmodels.llm import LLM
  make = lambda: LLM(lm_config(SIZES[size], scan_layers=True, dtype=dtype, param_dtype=dtype),  # noqa: E731
                     rngs=nnx.Rngs(0))
  return nnx.eval_shape(make) if abstract else make()


def _decode_program(size: str, steps: int, batch: int, dtype: str, fuse: bool, transpose):
  """A zero-argument run of `generate` on a random LLM of SIZES[size], and its module name."""
  import numpy as np

  from jaxmodels.generate import generate

  model = _decode_model(size, dtype)
  ids = np.random.RandomState(0).randint(1, SIZES[size]["vocab_size"], (batch, 16))
  return (lambda: generate(model, ids, steps, fuse_projections=fuse, transpose_kernels=transpose)
          .block_until_ready()), "jit__generate"


def _decode_census(size: str, steps: int, batch: int, dtype: str, fuse: bool, transpose, target: str) -> dict:
  """The kernels of one decoding step as compiled for GPU `target` (hlo_kernels.loop_kernels); the
  model is abstract (nothing is allocated, so any size fits)."""
  import numpy as np

  from hlo_kernels import gpu_target_device, loop_kernels
  from jaxmodels.generate import lower_generate

  model, ids = _decode_model(size, dtype, abstract=True), np.ones((batch, 16), np.int32)
  lowered = lower_generate(model, ids, steps, device=gpu_target_device(target), fuse_projections=fuse,
                           transpose_kernels=transpose)
  return loop_kernels(lowered.compile().as_text())


def _census_rows(census: dict, target: str, top: int) -> list[str]:
  rows = [f"compiled for {target} (no run): {census['kernels_per_step']} kernels per token in loop "
          f"{census['loop_body']}; by kind: " + ", ".join(f"{k} {n}" for k, n in census["by_kind"].items()),
          f"{'op':>12} {'kind':>8}  {'shape':<24} fused ops  [source]"]
  rows += [f"{r['op']:>12} {r['kind'][:8]:>8}  {r['shape'][:24]:<24} {r['ops'][:60]}  [{r['source'][:30]}]"
           + (f" x{r['repeat']}" if r["repeat"] > 1 else "") for r in census["kernels"][:top]]
  return rows


def _latte_program(size: str, steps: int, unroll):
  latte, _, inputs = latte_setup(size, unroll_group=unroll)
  run, state = latte_sampler(latte, steps)
  return (lambda: run(state, *inputs).block_until_ready()), "jit_run"


def main(argv):
  del argv
  import jax

  transpose = None if _TRANSPOSE.value == "auto" else _TRANSPOSE.value
  if _GPU_TARGET.value:
    if _TARGET.value != "decode":
      raise app.UsageError("--gpu_target is for --target=decode")
    try:
      census = _decode_census(_SIZE.value, _STEPS.value, _BATCH.value, _DTYPE.value, _FUSE.value, transpose,
                              _GPU_TARGET.value)
    except (RuntimeError, ValueError) as e:     # no CUDA plugin, or an unknown target: one line
      raise SystemExit(f"profile_kernels: {e}") from None
    result = {"machine": machine(), "target": "decode", "size": _SIZE.value, "gpu_target": _GPU_TARGET.value,
              **census}
    emit(result, _JSON.value, [f"machine: {result['machine']}"]
         + _census_rows(census, _GPU_TARGET.value, _TOP.value))
    return
  if _TARGET.value == "decode":
    fn, module = _decode_program(_SIZE.value, _STEPS.value, _BATCH.value, _DTYPE.value, _FUSE.value,
                                 transpose)
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
