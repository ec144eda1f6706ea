"""tools/profile_kernels.py: the per-kernel summary of a profiler trace (hand-built traces whose
numbers follow by hand), and a smoke run of the tool on the CPU."""
import gzip
import json
import os
import sys

import pytest

from test_bench_smoke import TOOLS, _run

sys.path.insert(0, TOOLS)
from bench_common import kernel_table, load_trace  # noqa: E402


def _meta(pid, name):
  return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}


def _ev(pid, name, ts, dur, module="jit_m", op=None, tid=1):
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur,
          "args": {"hlo_module": module, "hlo_op": op or name}}


def test_device_kernels_of_the_module_per_step():
  trace = {"traceEvents": [
      _meta(1, "/device:GPU:0 (Compute)"), _meta(7, "/host:CPU"),
      _ev(1, "gemm_a", 0, 10, op="command_buffer_3"), _ev(1, "reduce_b", 10, 2, op="command_buffer_3"),
      _ev(1, "gemm_a", 20, 10, op="command_buffer_3"), _ev(1, "reduce_b", 30, 2, op="command_buffer_3"),
      _ev(1, "other", 40, 99, module="jit_other"),           # another program: not counted
      _ev(7, "host_side", 0, 50),                           # host lane of the same module: not counted
  ]}
  t = kernel_table(trace, "jit_m", steps=2)
  assert t["on_device"] and t["kernels"] == 4 and t["kernels_per_step"] == 2
  assert t["busy_us_per_step"] == 12 and t["span_us_per_step"] == 16 and t["busy_ratio"] == 24 / 32
  assert [r["name"] for r in t["top"]] == ["gemm_a", "reduce_b"]
  top = t["top"][0]
  assert (top["per_step"], top["us_each"], top["us_per_step"], top["hlo_op"]) == (1, 10, 10, "command_buffer_3")
  assert sum(r["share"] for r in t["top"]) == pytest.approx(1.0)
  assert len(kernel_table(trace, "jit_m", steps=2, top=1)["top"]) == 1


def test_cpu_thunks_without_their_loop_containers():
  trace = {"traceEvents": [
      _meta(7, "/host:CPU"),
      _ev(7, "while.3", 0, 100),                            # spans the two thunks it runs
      _ev(7, "dot.1", 0, 30, tid=2), _ev(7, "fusion.2", 10, 60, tid=3),   # overlapping threads
      {"ph": "X", "pid": 7, "tid": 1, "name": "py_fn", "ts": 90, "dur": 5,
       "args": {"hlo_module": "jit_m"}},                    # no HLO op: not an XLA thunk
  ]}
  t = kernel_table(trace, "jit_m", steps=1)
  assert not t["on_device"] and t["kernels"] == 2 and t["busy_us_per_step"] == 90
  assert t["span_us_per_step"] == 70 and t["busy_ratio"] == pytest.approx(90 / 70)   # threads overlap
  with pytest.raises(ValueError, match="'jit_missing'.*jit_m"):
    kernel_table(trace, "jit_missing", steps=1)


def test_load_trace_reads_the_newest_perfetto_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="perfetto_trace"):
    load_trace(str(tmp_path))
  for i, run in enumerate(("2026_01_01", "2026_01_02")):
    d = tmp_path / "plugins" / "profile" / run
    d.mkdir(parents=True)
    with gzip.open(d / "perfetto_trace.json.gz", "wt") as f:
      json.dump({"traceEvents": [], "run": i}, f)
    os.utime(d / "perfetto_trace.json.gz", (1000 + i, 1000 + i))
  assert load_trace(str(tmp_path))["run"] == 1


@pytest.mark.slow
def test_profile_kernels_smoke(tmp_path):
  r = _run("profile_kernels.py", "--target=decode", "--size=smoke", "--steps=4", "--top=5",
           f"--trace_dir={tmp_path}")
  assert r["module"] == "jit__generate" and not r["on_device"] and r["steps"] == 4
  assert r["kernels_per_step"] > 5 and 0 < len(r["top"]) <= 5 and r["busy_us_per_step"] > 0
  assert load_trace(str(tmp_path))["traceEvents"]


@pytest.mark.slow
def test_profile_kernels_gpu_target():
  # --gpu_target compiles decoding for an H100 without a GPU. Where the jax CUDA plugin is installed the
  # census lists one decoding step's kernels; where it is not (CI), the tool says so in one line.
  import importlib.util
  import subprocess
  args = [sys.executable, os.path.join(TOOLS, "profile_kernels.py"), "--target=decode", "--size=smoke",
          "--steps=4", "--dtype=bfloat16", "--gpu_target=h100", "--json"]
  env = {**os.environ, "XLA_FLAGS": "", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"}
  out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=TOOLS)
  if importlib.util.find_spec("jax_plugins") is None or not any(
      importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13)):
    assert out.returncode != 0
    assert "no compile-only CUDA device" in out.stderr and "Traceback" not in out.stderr
    return
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(out.stdout[out.stdout.index("{"):])
  assert r["gpu_target"] == "h100" and r["kernels_per_step"] > 10
  assert any(k.startswith("fusion:") for k in r["by_kind"])
