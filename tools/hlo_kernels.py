"""The kernels of a compiled program's step loop, read from its optimised HLO text, and compile-only
GPU devices — so a GPU program's kernel structure can be studied on a machine without a GPU.

    dev = gpu_target_device("h200")     # needs the jax CUDA plugin installed; no GPU, no driver
    hlo = jax.jit(f).lower(*args_placed_on(dev)).compile().as_text()
    census = loop_kernels(hlo)          # {"kernels_per_step", "by_kind", "kernels": [...]}

`gpu_target_device` builds a compile-only device from a GPU target description (`gpu_targets/*.txtpb`,
XLA's GpuTargetConfig text format; h100 and h200 are kept here). Where the CUDA libraries are absent,
set `JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1` so the plugin registers anyway; no kernel runs, and XLA's
autotuning is skipped, so GEMM configurations may differ from a real device's — the fusion structure
(what runs as its own kernel) is what this is for. `tools/profile_kernels.py --gpu_target` uses both.
"""
from __future__ import annotations

import collections
import os
import re

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")

# Instructions that are not kernels of their own (no launch): tuple plumbing, constants, views, and
# the control flow whose bodies are walked instead.
_NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
                "opt-barrier", "add-dependency", "partition-id", "replica-id", "while", "call",
                "conditional"}
_TRIVIAL_OPS = {"parameter", "bitcast", "constant", "broadcast", "convert", "reshape", "tuple",
                "get-tuple-element"}
_COMP_RE = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*?\{\n(.*?)^\}", re.M | re.S)
_INSTR_RE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")


def gpu_target_device(target: str):
  """A compile-only device for GPU target `target`: a name in gpu_targets/ (h100, h200) or a path to
  a GpuTargetConfig textproto."""
  from jax.experimental import topologies
  path = target if os.path.exists(target) else os.path.join(TARGETS_DIR, f"{target}.txtpb")
  if not os.path.exists(path):
    known = sorted(f[:-6] for f in os.listdir(TARGETS_DIR) if f.endswith(".txtpb"))
    raise ValueError(f"gpu target {target!r}: no such file, and not one of {known}")
  with open(path) as f:
    config = f.read()
  try:
    topo = topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
  except Exception as e:    # noqa: BLE001 — say what is missing in one line
    raise RuntimeError(f"gpu target {target!r}: no compile-only CUDA device ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); install the jax CUDA plugin (e.g. "
                       "jax-cuda13-plugin and jax-cuda13-pjrt at this jax's version) and set "
                       "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 where the CUDA libraries are absent") from e
  return topo.devices[0]


def _computations(hlo: str) -> dict[str, list[str]]:
  return {m.group(1): m.group(2).splitlines() for m in _COMP_RE.finditer(hlo)}


def _entry_name(hlo: str) -> str:
  m = re.search(r"^ENTRY %([\w.\-]+) ", hlo, re.M)
  if not m:
    raise ValueError("no ENTRY computation in the HLO text")
  return m.group(1)


def _attr(line: str, key: str) -> str | None:
  m = re.search(key + r"=%?([\w.\-]+)", line)
  return m.group(1) if m else None


def _trip_count(line: str) -> int | None:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
  return int(m.group(1)) if m else None


def _kernels(comps: dict, name: str, repeat: int = 1) -> list[dict]:
  """The kernel rows of computation `name` in execution order, nested loop / call bodies inlined
  (a nested loop's rows carry `repeat` = its known trip count times the enclosing one's)."""
  rows = []
  for line in comps[name]:
    m = _INSTR_RE.match(line)
    if not m:
      continue
    instr, shape, op, _ = m.groups()
    if op == "while":
      n = _trip_count(line)
      rows += _kernels(comps, _attr(line, "body"), repeat * (n or 1))
      continue
    if op == "call":
      rows += _kernels(comps, _attr(line, "to_apply"), repeat)
      continue
    if op in _NOT_KERNELS:
      continue
    kind = _attr(line, "kind") or (re.search(r'custom_call_target="([^"]+)"', line) or [None, ""])[1]
    called = _attr(line, "calls")
    ops = []
    if called in comps:
      for inner in comps[called]:
        im = _INSTR_RE.match(inner)
        if im and im.group(3) not in _TRIVIAL_OPS and im.group(3) not in ops:
          ops.append(im.group(3))
    op_name = re.search(r'op_name="([^"]+)"', line)
    rows.append({"name": instr, "op": op, "kind": kind, "shape": shape.lstrip("(").split("{")[0],
                 "ops": " ".join(ops), "source": op_name.group(1).split("/")[-1] if op_name else "",
                 "repeat": repeat})
  return rows


def loop_kernels(hlo: str) -> dict:
  """The kernels of the step loop of optimised HLO text `hlo`: of the while loops the ENTRY
  computation runs, the one whose body (nested loops inlined) has the most kernels — a decoding or
  sampling loop's one iteration. Returns {"loop_body", "trip_count" (None if XLA did not record
  it), "kernels_per_step" (nested loops counted by their trip counts), "by_kind" ({"fusion:kLoop":
  n, "custom-call:...": n, ...}), "kernels": rows in order, each {name, op, kind, shape, ops (the
  fused computation's non-trivial ops), source (the JAX op name), repeat}}."""
  comps = _computations(hlo)
  loops = []
  for line in comps[_entry_name(hlo)]:
    m = _INSTR_RE.match(line)
    if m and m.group(3) == "while":
      body = _attr(line, "body")
      loops.append((body, _trip_count(line), _kernels(comps, body)))
  if not loops:
    raise ValueError("the ENTRY computation runs no while loop")
  body, trips, rows = max(loops, key=lambda t: sum(r["repeat"] for r in t[2]))
  by_kind = collections.Counter()
  for r in rows:
    by_kind[f"{r['op']}:{r['kind']}" if r["kind"] else r["op"]] += r["repeat"]
  return {"loop_body": body, "trip_count": trips, "kernels_per_step": sum(by_kind.values()),
          "by_kind": dict(by_kind.most_common()), "kernels": rows}
