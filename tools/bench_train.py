"""One training step (forward + backward + AdamW) of a decoder LM: jaxmodels vs PyTorch eager.

    python tools/bench_train.py --sizes=small,large --steps=5 [--remat=dots,none] [--json]
    python tools/bench_train.py --sizes=smoke --steps=2 --json          # seconds; used by a test
    python tools/bench_train.py --sizes=small,large,xl --dtype=bfloat16 --attention=cudnn   # on a GPU

Same architecture (Llama-style: RMSNorm, RoPE, SwiGLU, untied head), shapes, precision and optimizer
on both sides (f32; or `--dtype=bfloat16`: f32 parameters and AdamW state with bf16 compute, i.e.
PyTorch under `torch.autocast`); where PyTorch sees a GPU, its side runs there (synchronised per
step); runs alternate (A/B) after a warm-up, in one process; reports median step times, the
speedup (torch time / jax time) against each `--baselines` entry (eager; compile: the same module
through `torch.compile`, inductor, compiled before the rounds; a failure to compile is reported as
`torch_compile_error`), achieved GFLOP/s from `jaxmodels.flops`, the machine's matmul peak
measured in the same run, and MFU = achieved / peak. `--remat` lists layer-stack rematerialisation
policies (`REMAT_POLICIES`; the library default is "none"): each is a jaxmodels variant in the same
A/B rounds (`remat_step_s`); the first one gives the headline row. On the CPU "dots" (save the
projections' outputs, recompute the rest in the backward pass) measured fastest (BENCHMARKS.md).
"""
from __future__ import annotations

from bench_common import (DTYPES, SIZES, alternate, emit, lm_train_step, machine,  # noqa: I001
                          matmul_peak_gflops, torch_device, torch_dtype, torch_sync)

import sys

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["small", "large"], "Sizes to run (small, large, smoke).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per side (median reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Compute dtype (parameters stay f32).")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla", "cudnn"],
                               "jaxmodels attention implementation (cudnn: fused, GPU only).")
_REMAT = flags.DEFINE_list("remat", ["none"], "jaxmodels layer-stack remat policies (REMAT_POLICIES); "
                           "the first is the headline row, all run in the same A/B rounds.")
_BASELINES = flags.DEFINE_list("baselines", ["eager", "compile"], "PyTorch baselines: eager, compile "
                                "(torch.compile of the model; its compile time is not timed).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def bench(size: str, steps: int, dtype: str = "float32", attention: str = "einsum",
          remat: tuple[str, ...] = ("none",), baselines: tuple[str, ...] = ("eager",)) -> dict:
  import jax
  import numpy as np
  import torch
  import transformers

  from jaxmodels.flops import train_flops_per_token

  s = SIZES[size]
  jax_steps = {}
  for policy in remat:
    step, state, batch, cfg = lm_train_step(s, dtype=dtype, attention_impl=attention, remat=policy)
    holder = {"state": step(state, batch, jax.random.key(0))[0]}

    def jax_step(step=step, holder=holder):
      holder["state"], _ = step(holder["state"], batch, jax.random.key(1))
      jax.block_until_ready(holder["state"])     # the whole update, not just the loss
    jax_steps[f"jax:{policy}"] = jax_step
  ids = np.asarray(batch["ids"]).astype(np.int64)

  torch.manual_seed(0)
  tcfg = transformers.LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                                  intermediate_size=s["intermediate_size"],
                                  num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                                  num_key_value_heads=s["num_heads"], max_position_embeddings=s["seq_len"],
                                  tie_word_embeddings=False)
  device = torch_device()
  tmodel = transformers.LlamaForCausalLM(tcfg).to(device)
  opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, weight_decay=0.0)
  tids = torch.tensor(ids, device=device)

  def make_torch_step(model):
    def torch_step():
      with torch.autocast(device, dtype=torch_dtype(dtype), enabled=dtype != "float32"):
        loss = model(tids, labels=tids).loss
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      torch_sync()
    return torch_step

  torch_steps, compile_error = {}, None
  if "eager" in baselines:
    torch_steps["torch"] = make_torch_step(tmodel)
  if "compile" in baselines:         # the same module and optimizer, its forward compiled by inductor
    compiled = make_torch_step(torch.compile(tmodel, dynamic=False))
    try:
      compiled()
      torch_steps["torch_compile"] = compiled
    except Exception as e:           # noqa: BLE001  (e.g. no C++ toolchain for inductor)
      compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  t = alternate({**jax_steps, **torch_steps}, steps)      # warm-up, then A/B rounds
  tj = t[f"jax:{remat[0]}"]
  flops = train_flops_per_token(cfg, s["seq_len"] - 1) * s["batch"] * (s["seq_len"] - 1)
  r = {"jax_step_s": tj, "jax_gflops": flops / tj / 1e9, "remat": remat[0],
       "remat_step_s": {policy: t[f"jax:{policy}"] for policy in remat}}
  if "torch" in t:
    r.update(torch_step_s=t["torch"], speedup=t["torch"] / tj, torch_gflops=flops / t["torch"] / 1e9)
  if "torch_compile" in t:
    r.update(torch_compile_step_s=t["torch_compile"], speedup_compile=t["torch_compile"] / tj,
             torch_compile_gflops=flops / t["torch_compile"] / 1e9)
  if compile_error:
    r["torch_compile_error"] = compile_error
  return r


def main(argv):
  del argv
  import torch
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  from jaxmodels.layers.block import REMAT_POLICIES
  if not _REMAT.value or set(_REMAT.value) - set(REMAT_POLICIES):
    raise app.UsageError(f"--remat={','.join(_REMAT.value)}: expected one or more of {sorted(REMAT_POLICIES)}")
  peak = matmul_peak_gflops(dtype=_DTYPE.value)
  result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "dtype": _DTYPE.value,
            "attention": _ATTENTION.value,
            "remat": _REMAT.value, "matmul_gflops": peak, "sizes": {}}
  rows = [f"machine: {result['machine']}", f"matmul peak ({peak['dtype']}, n={peak['n']}): "
          f"{peak['peak']:.0f} GFLOP/s (jax {peak['jax']:.0f}, torch {peak['torch']:.0f})"]
  for size in _SIZES.value:
    try:
      r = bench(size, _STEPS.value, _DTYPE.value, _ATTENTION.value, _REMAT.value, tuple(_BASELINES.value))
      r["attention"] = _ATTENTION.value
    except Exception as e:                     # noqa: BLE001  (e.g. cudnn rejects a shape or this backend)
      if _ATTENTION.value == "xla":
        raise
      print(f"{size}: attention={_ATTENTION.value} failed ({type(e).__name__}: {str(e)[:200]}); using xla",
            file=sys.stderr)
      r = bench(size, _STEPS.value, _DTYPE.value, "xla", _REMAT.value, tuple(_BASELINES.value))
      r["attention"] = "xla"
    line = (f"{size} ({r['attention']} attention): jax {r['jax_step_s']:.3f}s "
            f"({r['jax_gflops']:.0f} GFLOP/s, MFU {r['jax_gflops'] / peak['peak']:.2f})")
    for side, name, ratio in (("jax", "", None), ("torch", "torch", "speedup"),
                              ("torch_compile", "torch.compile", "speedup_compile")):
      if f"{side}_gflops" in r:
        r[f"{side}_mfu"] = r[f"{side}_gflops"] / peak["peak"]
        if ratio:
          line += (f" | {name} {r[f'{side}_step_s']:.3f}s ({r[f'{side}_gflops']:.0f} GFLOP/s, MFU "
                   f"{r[f'{side}_mfu']:.2f}) speedup {r[ratio]:.2f}x")
    if "torch_compile_error" in r:
      line += f" | torch.compile failed: {r['torch_compile_error']}"
    result["sizes"][size] = r
    remat = ", ".join(f"{k} {v:.3f}s" for k, v in r["remat_step_s"].items())
    rows.append(line + f" (remat {remat})")
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
