"""Shared pieces of the benchmark tools: sizes, dtypes, devices, timing, the machine's peaks, output,
the LaTtE-Flow benchmark head, and per-kernel summaries of profiler traces.

Every tool runs where JAX's default backend is: on a CPU machine both sides (jaxmodels and PyTorch) run
on the CPU; where PyTorch sees a CUDA device (a GPU machine), the PyTorch side runs there too, with its
asynchronous work synchronised before each clock read.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The two decoder sizes of issue 9 (f32).
SIZES = {
    "large": dict(hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816, vocab_size=32000,
                  seq_len=512, batch=4),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=704, vocab_size=8192,
                  seq_len=256, batch=16),
    "smoke": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, vocab_size=256,
                  seq_len=32, batch=2),
    # Accelerator size (~0.95B parameters, Llama-3.2-1B-like widths): the two sizes leave a GPU
    # mostly idle (launch-bound), so the GPU rows add this one to read MFU where the chip is busy.
    "xl": dict(hidden_size=2048, num_layers=16, num_heads=16, intermediate_size=5632, vocab_size=32000,
               seq_len=2048, batch=4),
}
DTYPES = ("float32", "bfloat16")


def torch_device() -> str:
  """"cuda" where PyTorch sees a GPU, else "cpu"."""
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync():
  """Waits for PyTorch's queued device work (a no-op on the CPU)."""
  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def torch_dtype(name: str):
  import torch
  return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def machine() -> dict:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  from jaxmodels import host_malloc
  # The glibc malloc settings in effect (jaxmodels/host_malloc.py): they move CPU step times by 15-29%.
  malloc = {k: os.environ[k] for k in host_malloc.MALLOC_ENV if k in os.environ}
  return {"cpu": cpu, "cores": os.cpu_count(), "jax_backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d"),
          "malloc": malloc or "glibc defaults"}


def median_time(fn, steps: int) -> float:
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak_gflops(n: int | None = None, repeats: int = 5, dtype: str = "float32") -> dict:
  """Best of a jitted JAX and a torch n×n matmul in `dtype`, in GFLOP/s, on each side's device
  (n defaults to 2048 on a CPU and 8192 on an accelerator, where smaller products do not fill it).
  On an accelerator each timing is the mean over 10 back-to-back products (launch gaps amortised)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  on_accel = jax.default_backend() != "cpu"
  n = n or (8192 if on_accel else 2048)
  inner = 10 if on_accel else 1
  a = np.random.RandomState(0).standard_normal((n, n)).astype(np.float32)
  ja = jnp.asarray(a, jnp.dtype(dtype))
  mm = jax.jit(lambda x: x @ x)
  mm(ja).block_until_ready()

  def jax_run():
    for _ in range(inner):
      out = mm(ja)
    out.block_until_ready()

  t_jax = median_time(jax_run, repeats) / inner
  ta = torch.from_numpy(a).to(torch_device(), torch_dtype(dtype))
  ta @ ta

  def torch_run():
    for _ in range(inner):
      ta @ ta
    torch_sync()

  torch_sync()
  t_torch = median_time(torch_run, repeats) / inner
  flops = 2 * n ** 3
  return {"n": n, "dtype": dtype, "jax": flops / t_jax / 1e9, "torch": flops / t_torch / 1e9,
          "peak": max(flops / t_jax, flops / t_torch) / 1e9}


def copy_bandwidth_gbs(nbytes: int = 512 << 20) -> float:
  """Memory copy bandwidth in GB/s, counting bytes read plus written: a numpy copy on a CPU machine,
  a device-to-device copy (PyTorch, 2 GiB) where PyTorch sees a GPU."""
  import numpy as np
  if torch_device() == "cuda":
    import torch
    nbytes = max(nbytes, 2 << 30)
    a = torch.ones(nbytes // 4, device="cuda")
    b = torch.empty_like(a)

    def copy():
      for _ in range(10):
        b.copy_(a)
      torch_sync()

    copy()
    return 2 * nbytes * 10 / median_time(copy, 5) / 1e9
  a = np.ones(nbytes // 4, np.float32)
  b = np.empty_like(a)
  t = median_time(lambda: np.copyto(b, a), 5)
  return 2 * nbytes / t / 1e9        # read + write


def emit(result: dict, as_json: bool, table_rows: list[str]):
  if as_json:
    print(json.dumps(result, indent=2))
  else:
    print("\n".join(table_rows))


SETTLE_S = 0.3


def alternate(fns: dict, rounds: int, warmup: bool = True, settle_s: float = SETTLE_S) -> dict:
  """Median seconds per call of each zero-argument fn in `fns` ({name: fn}), measured side by side:
  one warm-up call each, then `rounds` rounds that call every fn once in turn (A, B, A, B, ...).

  Each timed call starts after `settle_s` idle seconds: PyTorch's OpenMP workers keep spinning for a
  while after an op returns, and on a small CPU they then take cores from whatever runs next (2 cores,
  Lumina-Next small: JAX 25.4 steps/s right after a torch call vs 31.5 with torch's threads passive;
  torch itself is slower with passive threads, 18.1 -> 14.9, so the fair measurement lets each side
  start on a quiet machine rather than changing torch's wait policy)."""
  if warmup:
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      if settle_s:
        time.sleep(settle_s)
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def fit_exponent(xs, ys) -> float:
  """k of y ≈ a·xᵏ, by least squares in log-log (how a cost grows with a size)."""
  lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
  mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
  return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def load_average() -> float:
  """1-minute load average (0.0 where the OS does not report it)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return 0.0


def lm_config(s: dict, **overrides):
  """The Llama-style `LLMConfig` of the size dict `s` (a SIZES entry); `overrides` are LLMConfig
  fields (depth, dtype, scan, remat, attention)."""
  from jaxmodels.llm import LLMConfig
  fields = dict(model_type="llama", vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                intermediate_size=s["intermediate_size"], num_layers=s["num_layers"],
                num_heads=s["num_heads"], num_kv_heads=s["num_heads"], rope_theta=10000.0)
  return LLMConfig(**{**fields, **overrides})


def lm_train_step(s: dict, *, num_layers: int | None = None, scan_layers: bool = True,
                  dtype: str = "float32", attention_impl: str = "einsum", remat: str = "none"):
  """The decoder-LM train step of bench_train.py (Llama-style, next-token loss, AdamW) for the size
  dict `s` (a SIZES entry; `num_layers` overrides its depth). Parameters and optimizer state are f32;
  `dtype` is the compute dtype (bfloat16: mixed precision, as PyTorch's autocast); `remat` the layer
  stack's rematerialisation policy (`jaxmodels.layers.block.REMAT_POLICIES`). Returns the jitted,
  not yet compiled `step(state, batch, rng) -> (state, metrics)`, its state, a batch {"ids": [B, T]}
  and the LLMConfig."""
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from jaxmodels.llm import LLM
  from jaxmodels.trainer import TrainState, make_optimizer, make_train_step

  cfg = lm_config(s, num_layers=num_layers or s["num_layers"], scan_layers=scan_layers, dtype=dtype,
                  attention_impl=attention_impl, remat=remat)

  class LM(LLM):
    def loss(self, batch, rng):
      logits = self(batch["ids"][:, :-1]).astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["ids"][:, 1:]).mean(), {}

  tx, _ = make_optimizer(dict(lr=1e-4, weight_decay=0.0, clip_norm=None, warmup_steps=0), 1000)
  ts = TrainState(LM(cfg, rngs=nnx.Rngs(0)), tx)
  ids = np.random.RandomState(0).randint(0, s["vocab_size"], (s["batch"], s["seq_len"]))
  return make_train_step(ts), nnx.split(ts)[1], {"ids": jnp.asarray(ids)}, cfg


# LaTtE-Flow heads: image tokens = latent², caption states [B, L, ctx_len, context_dim].
LATTE_SIZES = {
    "small": dict(hidden_size=256, num_layers=8, num_groups=4, num_heads=4, intermediate_size=704,
                  context_dim=256, in_channels=4, latent=16, ctx_len=32, batch=2),
    "smoke": dict(hidden_size=32, num_layers=4, num_groups=2, num_heads=2, intermediate_size=64,
                  context_dim=32, in_channels=4, latent=4, ctx_len=4, batch=1),
}


def latte_setup(size: str, **config_overrides):
  """(LaTtE-Flow head of LATTE_SIZES[size] with K groups, the same parameters in one group of all L
  layers, sampler inputs (x [B,h,w,C], ctx [B,L,T,Dc], mask [B,T])). The parameters are perturbed
  to open the zero-initialised adaLN / TCRA gates."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxmodels.unified.latte_flow import LatteConfig, LatteFlow

  s = LATTE_SIZES[size]
  cfg = LatteConfig(hidden_size=s["hidden_size"], num_layers=s["num_layers"], num_groups=s["num_groups"],
                    num_heads=s["num_heads"], intermediate_size=s["intermediate_size"],
                    context_dim=s["context_dim"], in_channels=s["in_channels"], patch_size=1,
                    sample_size=s["latent"], **config_overrides)
  latte = LatteFlow(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(latte, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(latte, jax.tree.unflatten(
      treedef, [p + 0.02 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]))
  full = LatteFlow(cfg.replace(num_groups=1), rngs=nnx.Rngs(0))
  nnx.update(full, nnx.state(latte))             # the same parameters, one group of all L layers

  b, big_l = s["batch"], s["num_layers"]
  k1, k2 = jax.random.split(jax.random.key(2))
  x = jax.random.normal(k1, (b, s["latent"], s["latent"], s["in_channels"]), jnp.float32)
  ctx = jax.random.normal(k2, (b, big_l, s["ctx_len"], s["context_dim"]), jnp.float32)
  mask = jnp.ones((b, s["ctx_len"]), bool)
  return latte, full, (x, ctx, mask)


def latte_sampler(module, steps: int):
  """Jitted `run(state, x [B,h,w,C], ctx [B,L,T,Dc], mask [B,T]) -> x₀` and the module's state."""
  import jax
  from flax import nnx

  from jaxmodels import flow
  graphdef, state = nnx.split(module)

  @jax.jit
  def run(state, x, ctx, mask):
    m = nnx.merge(graphdef, state)
    return flow.sample(lambda x, t: m.velocity(x, t / flow.NUM_TRAIN_TIMESTEPS, ctx, mask), x,
                       num_steps=steps)
  return run, state


def kernel_table(trace: dict, module: str, steps: int, top: int = 20) -> dict:
  """Summarises the events of HLO module `module` (e.g. "jit__generate") in a perfetto trace dict.

  Device lanes (processes named "/device:...") are used where the trace has events of the module
  there (GPU kernels); otherwise every event that names the module and an HLO op (CPU thunks; not
  the while / conditional / call thunks that contain others). Rows group by kernel name; per-step
  figures divide by `steps`."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
             and str(e.get("args", {}).get("name", "")).startswith("/device:")}
  mine = [e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == module]
  on_device = [e for e in mine if e["pid"] in devices]
  # CPU: a while / conditional / call thunk spans the thunks it runs; count those, not the container.
  kernels = on_device or [e for e in mine if e["args"].get("hlo_op") and
                          e["args"]["hlo_op"].split(".")[0] not in ("while", "conditional", "call")]
  if not kernels:
    found = sorted({e.get("args", {}).get("hlo_module") for e in events if e.get("ph") == "X"} - {None})
    raise ValueError(f"no events of HLO module {module!r} in the trace (modules: {found})")
  busy = sum(e["dur"] for e in kernels)
  span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
  rows = collections.defaultdict(lambda: [0, 0.0, ""])
  for e in kernels:
    row = rows[e["name"]]
    row[0] += 1
    row[1] += e["dur"]
    row[2] = e["args"].get("hlo_op", "")
  ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])
  return {"module": module, "steps": steps, "on_device": bool(on_device), "kernels": len(kernels),
          "kernels_per_step": len(kernels) / steps, "busy_us_per_step": busy / steps,
          "span_us_per_step": span / steps, "busy_ratio": busy / span if span else 0.0,
          "distinct_kernels": len(rows),
          "top": [{"name": name, "hlo_op": op, "per_step": n / steps, "us_each": t / n,
                   "us_per_step": t / steps, "share": t / busy} for name, (n, t, op) in ranked[:top]]}


def load_trace(trace_dir: str) -> dict:
  """The newest perfetto_trace.json.gz under `trace_dir` (jax.profiler's layout), parsed."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    return json.load(f)
