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
  r = _run("bench_train.py", "--sizes=smoke", "--steps=1", "--remat=dots,none", "--baselines=eager")
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
  r = _run("bench_flow.py", "--latte_sizes=smoke", "--dit_sizes=smoke", "--sample_steps=2", "--rounds=1",
           "--baselines=eager")
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


def test_fit_exponent():
  sys.path.insert(0, TOOLS)
  from bench_common import fit_exponent
  xs = [64, 256, 1024]
  assert abs(fit_exponent(xs, [3.0 * x ** 1.5 for x in xs]) - 1.5) < 1e-12
  assert abs(fit_exponent(xs, [7.0] * 3)) < 1e-12


@pytest.mark.slow
def test_bench_unified_smoke():
  r = _run("bench_unified.py", "--models=metaquery", "--sizes=smoke", "--steps=1", "--baselines=eager",
           "--remat=none,looped")
  row = r["rows"]["metaquery_smoke_16"]
  t = row["step_s"]
  assert t["jax"] > 0 and t["torch"] > 0
  assert set(row["variant_step_s"]) == {"none", "looped"} and row["variant_step_s"]["none"] == t["jax"]
  assert abs(row["speedup"]["torch"] - t["torch"] / t["jax"]) < 1e-9
  for side in ("jax", "torch"):
    assert 0 < row["mfu"][side] <= 1
    assert row["peak_bytes"][side] > 0
  # Model FLOPs: 3x the trainable parts' forward, 2x the frozen LLM the gradient passes through (to the
  # query rows), 1x the frozen DC-AE; trainable + frozen = total.
  parts, flops = row["parts"], row["model_flops"]
  assert {k: p["role"] for k, p in parts.items()} == {
      "llm": "frozen_grad", "connector": "trainable", "vae": "frozen", "dit": "trainable"}
  assert all(p["forward"] > 0 for p in parts.values())
  factor = {"trainable": 3, "frozen_grad": 2, "frozen": 1}
  assert abs(flops["total"] - sum(factor[p["role"]] * p["forward"] for p in parts.values())) < 1
  assert abs(flops["total"] - flops["trainable"] - flops["frozen"]) < 1
  assert abs(row["mfu"]["jax"] / row["mfu"]["torch"] - row["speedup"]["torch"]) < 1e-6
  # The same composition on both sides: the same trainable / frozen parameter counts within 2%.
  jp, tp = row["params"]["jax"], row["params"]["torch"]
  for k in ("trainable", "frozen"):
    assert abs(jp[k] / tp[k] - 1) < 0.02, (k, jp, tp)


@pytest.mark.slow
def test_bench_t2i_smoke():
  r = _run("bench_t2i.py", "--models=next", "--sizes=smoke", "--batches=1", "--sample_steps=2", "--rounds=1")
  row = r["rows"]["next_smoke_b1"]
  assert row["pixels_match_shape"] and row["image_side"] == 32
  for side in ("jax_stages", "torch"):
    stages, total = row[side]["stages_s"], row[side]["total_s"]
    assert list(stages) == ["image_tokens", "prompt", "dit", "decode"]
    assert all(v > 0 for v in stages.values())
    # One round: the stages sum to the round's wall time up to the glue between them.
    assert sum(stages.values()) <= total <= 1.1 * sum(stages.values()) + 0.005
    assert abs(row[side]["images_s"] - 1 / total) < 1e-9
  assert abs(row["ratio"] - row["torch"]["total_s"] / row["jax"]["total_s"]) < 1e-9
