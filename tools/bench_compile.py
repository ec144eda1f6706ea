"""Compile time of a decoder-LM train step (forward + backward + AdamW) at two depths, with the layer
stack scanned (`scan_layers=True`, one traced layer) and unrolled (a Python loop over the layers).

    python tools/bench_compile.py --layers=4,32 --rounds=3 [--json]
    python tools/bench_compile.py --size=smoke --layers=1,2 --rounds=1 --json     # used by a test

The model is bench_train.py's Llama-style step (`bench_common.lm_train_step`) at the "small" width
(d_model 256, 4 heads, seq 256, batch 16), so the numbers are about compilation, not FLOPs. One timed
compile is `step.lower(state, batch, rng)` (tracing + StableHLO) then `.compile()` (XLA), on a freshly
built model after `jax.clear_caches()`. After a warm-up compile, rounds alternate the four variants
(shallow/deep × scan/unrolled) in one process; medians. Reports seconds per variant and the deep /
shallow ratio with and without scan (target with scan ≤ 1.5×).
"""
from __future__ import annotations

from bench_common import SIZES, emit, lm_train_step, load_average, machine  # noqa: I001

from absl import app, flags

_SIZE = flags.DEFINE_string("size", "small", "Width/shape preset of bench_common.SIZES (small, smoke).")
_LAYERS = flags.DEFINE_list("layers", ["4", "32"], "Shallow and deep layer counts.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (median reported).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def compile_seconds(size: str, num_layers: int, scan: bool) -> dict:
  """{"lower_s", "compile_s", "total_s"} of one cold lower + compile of the train step."""
  import time

  import jax
  jax.clear_caches()
  step, state, batch, _ = lm_train_step(SIZES[size], num_layers=num_layers, scan_layers=scan)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, jax.random.key(0))
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0}


def main(argv):
  del argv
  import statistics
  shallow, deep = map(int, _LAYERS.value)
  # Warm-up at the measured size: imports and first-use costs of jax / XLA, and on a GPU the GEMM
  # autotuning of this size's shapes (kept by XLA across `jax.clear_caches()`), which otherwise lands
  # in the first timed variant (H200: scan 4 layers 9.9 s vs 32 layers 2.0 s).
  compile_seconds(_SIZE.value, shallow, True)
  variants = [(n, scan) for scan in (True, False) for n in (shallow, deep)]
  runs = {v: [] for v in variants}
  for _ in range(_ROUNDS.value):
    for n, scan in variants:
      runs[(n, scan)].append(compile_seconds(_SIZE.value, n, scan))
  result = {"machine": machine(), "load_average": load_average(), "size": _SIZE.value, "variants": {},
            "ratio": {}}
  rows = [f"machine: {result['machine']} (load {result['load_average']:.1f})"]
  for (n, scan), rs in runs.items():
    name = f"{'scan' if scan else 'unrolled'}_{n}"
    med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    result["variants"][name] = med
    rows.append(f"{name}: lower {med['lower_s']:.2f}s + compile {med['compile_s']:.2f}s "
                f"= {med['total_s']:.2f}s")
  for kind in ("scan", "unrolled"):
    v = result["variants"]
    result["ratio"][kind] = v[f"{kind}_{deep}"]["total_s"] / v[f"{kind}_{shallow}"]["total_s"]
    rows.append(f"{kind}: {deep}/{shallow} layers compile-time ratio {result['ratio'][kind]:.2f}x"
                + (" (target <= 1.5x)" if kind == "scan" else ""))
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
