"""Shared pieces of the benchmark tools: sizes, timing, the machine's matmul peak, output."""
from __future__ import annotations

import json
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
}


def machine() -> dict:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "jax_backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d")}


def median_time(fn, steps: int) -> float:
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
  """Best of a jitted JAX and a torch f32 n×n matmul, in GFLOP/s."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  a = np.random.RandomState(0).standard_normal((n, n)).astype(np.float32)
  ja = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  mm(ja).block_until_ready()
  t_jax = median_time(lambda: mm(ja).block_until_ready(), repeats)
  ta = torch.from_numpy(a)
  ta @ ta
  t_torch = median_time(lambda: ta @ ta, repeats)
  flops = 2 * n ** 3
  return {"jax": flops / t_jax / 1e9, "torch": flops / t_torch / 1e9,
          "peak": max(flops / t_jax, flops / t_torch) / 1e9}


def emit(result: dict, as_json: bool, table_rows: list[str]):
  if as_json:
    print(json.dumps(result, indent=2))
  else:
    print("\n".join(table_rows))


def alternate(fns: dict, rounds: int, warmup: bool = True) -> dict:
  """Median seconds per call of each zero-argument fn in `fns` ({name: fn}), measured side by side:
  one warm-up call each, then `rounds` rounds that call every fn once in turn (A, B, A, B, ...)."""
  if warmup:
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def load_average() -> float:
  """1-minute load average (0.0 where the OS does not report it)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return 0.0


def lm_train_step(s: dict, *, num_layers: int | None = None, scan_layers: bool = True):
  """The decoder-LM train step of bench_train.py (Llama-style, f32, next-token loss, AdamW) for the
  size dict `s` (a SIZES entry; `num_layers` overrides its depth). Returns the jitted, not yet
  compiled `step(state, batch, rng) -> (state, metrics)`, its state, a batch {"ids": [B, T]} and the
  LLMConfig."""
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from jaxmodels.llm import LLM, LLMConfig
  from jaxmodels.trainer import TrainState, make_optimizer, make_train_step

  cfg = LLMConfig(model_type="llama", vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                  intermediate_size=s["intermediate_size"], num_layers=num_layers or s["num_layers"],
                  num_heads=s["num_heads"], num_kv_heads=s["num_heads"], rope_theta=10000.0,
                  scan_layers=scan_layers)

  class LM(LLM):
    def loss(self, batch, rng):
      logits = self(batch["ids"][:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["ids"][:, 1:]).mean(), {}

  tx, _ = make_optimizer(dict(lr=1e-4, weight_decay=0.0, clip_norm=None), 1000)
  ts = TrainState(LM(cfg, rngs=nnx.Rngs(0)), tx)
  ids = np.random.RandomState(0).randint(0, s["vocab_size"], (s["batch"], s["seq_len"]))
  return make_train_step(ts), nnx.split(ts)[1], {"ids": jnp.asarray(ids)}, cfg
