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
  r = _run("bench_train.py", "--sizes=smoke", "--steps=1")
  smoke = r["sizes"]["smoke"]
  assert smoke["jax_step_s"] > 0 and smoke["torch_step_s"] > 0 and 0 < smoke["jax_mfu"] < 1.5
  assert r["matmul_gflops"]["peak"] > 0


@pytest.mark.slow
def test_bench_decode_smoke():
  r = _run("bench_decode.py", "--sizes=smoke", "--batches=1", "--new_tokens=4", "--repeats=1")
  run = r["runs"]["smoke_b1"]
  assert run["jax_tok_s"] > 0 and run["torch_tok_s"] > 0 and r["copy_bandwidth_gbs"] > 0
