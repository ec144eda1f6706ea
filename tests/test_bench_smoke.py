"""Benchmark tools stay runnable: tiny sizes, one or two steps, JSON output (not timed tests)."""
import json
import os
import subprocess
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _run(tool, *args):
  env = {**os.environ, "XLA_FLAGS": ""}      # one CPU device, like a user's run
  out = subprocess.run([sys.executable, os.path.join(TOOLS, tool), *args, "--json"], capture_output=True,
                       text=True, timeout=300, env=env, cwd=TOOLS)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout[out.stdout.index("{"):])


@pytest.mark.slow
def test_bench_train_smoke():
  r = _run("bench_train.py", "--sizes=smoke", "--steps=1", "--remat=dots,none")
  smoke = r["sizes"]["smoke"]
  assert smoke["jax_step_s"] > 0 and smoke["torch_step_s"] > 0 and 0 < smoke["jax_mfu"] < 1.5
  assert smoke["remat"] == "dots" and set(smoke["remat_step_s"]) == {"dots", "none"}
  assert smoke["jax_step_s"] == smoke["remat_step_s"]["dots"]
  assert r["matmul_gflops"]["peak"] > 0
  # The tool re-executed itself with the host-malloc settings where they apply, and says so.
  from jaxmodels import host_malloc
  own = {k: os.environ[k] for k in host_malloc.MALLOC_ENV if k in os.environ}    # a user's own, kept
  expected = host_malloc.MALLOC_ENV if host_malloc.wanted() else (own or "glibc defaults")
  assert r["machine"]["malloc"] == expected


@pytest.mark.slow
def test_bench_decode_smoke():
  r = _run("bench_decode.py", "--sizes=smoke", "--batches=1", "--new_tokens=4", "--repeats=1", "--unfused",
           "--layouts=small,all")
  run = r["runs"]["smoke_b1"]
  assert run["jax_tok_s"] > 0 and run["torch_tok_s"] > 0 and r["copy_bandwidth_gbs"] > 0
  assert run["jax_unfused_ms_per_step"] > 0 and run["fusion_speedup"] > 0
  assert run["default_layout"] == "none"       # the CPU's: kernels as stored
  assert set(run["layouts"]) == {"small", "all"} and all(v > 0 for v in run["layouts"].values())


@pytest.mark.slow
def test_bench_flow_smoke():
  r = _run("bench_flow.py", "--latte_sizes=smoke", "--dit_sizes=smoke", "--sample_steps=2", "--rounds=1")
  latte = r["latte"]["smoke"]
  k = latte["num_groups"]
  # Layer evaluations: steps x L at full depth vs steps x M with the layerwise experts, ratio K exactly,
  # from the jaxpr and from a run-time counter alike.
  evals = (latte["layer_evals_full"], latte["layer_evals_latte"])
  assert evals == (2 * latte["num_layers"], 2 * latte["group_size"])
  assert latte["layer_eval_ratio"] == k == 2
  assert (latte["counted_full"], latte["counted_latte"]) == evals
  assert latte["latte_s"] > 0 and latte["full_s"] > 0
  for name in ("sana_smoke", "lumina_smoke"):
    dit = r["dit"][name]
    assert dit["jax_steps_s"] > 0 and dit["torch_steps_s"] > 0 and dit["ratio"] > 0
    assert dit["max_abs_diff"] < 1e-3          # same weights, same noise: the same samples
    assert dit["flops_per_step"] > 0 and abs(dit["jax_mfu"] / dit["torch_mfu"] - dit["ratio"]) < 1e-6
    assert abs(dit["ratio_bound"] * dit["torch_mfu"] - 1) < 1e-6


@pytest.mark.slow
def test_bench_compile_smoke():
  r = _run("bench_compile.py", "--size=smoke", "--layers=1,2", "--rounds=1")
  assert set(r["variants"]) == {"scan_1", "scan_2", "unrolled_1", "unrolled_2"}
  for v in r["variants"].values():
    assert v["lower_s"] > 0 and v["compile_s"] > 0
    assert abs(v["total_s"] - v["lower_s"] - v["compile_s"]) < 1e-6
  assert r["ratio"]["scan"] > 0 and r["ratio"]["unrolled"] > 0


@pytest.mark.slow
def test_bench_data_smoke():
  r = _run("bench_data.py", "--config_arg=runlocal", "--data_batches=2", "--train_steps=1", "--drain=1",
           "--rounds=1")
  assert r["config"] == "configs/shapes_tiny.py" and r["dataset"] == "tiny" and r["batch_size"] == 8
  assert r["gen_every"] == 1 and r["worker_count"] == 0       # :runlocal
  assert r["data_examples_s"] > 0 and r["train_examples_s"] > 0
  assert abs(r["ratio"] - r["data_examples_s"] / r["train_examples_s"]) < 1e-9
