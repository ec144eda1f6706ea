"""One training step (forward + backward + AdamW) of a decoder LM: jaxmodels vs PyTorch eager.

    python tools/bench_train.py --sizes=small,large --steps=5 [--json]
    python tools/bench_train.py --sizes=smoke --steps=2 --json          # seconds; used by a test

Same architecture (Llama-style: RMSNorm, RoPE, SwiGLU, untied head), shapes, f32 and optimizer on
both sides; runs alternate (A/B) after a warm-up, in one process; reports median step times, the
speedup (torch time / jax time), achieved GFLOP/s from `jaxmodels.flops`, the machine's matmul peak
measured in the same run, and MFU = achieved / peak.
"""
from __future__ import annotations

from bench_common import SIZES, emit, lm_train_step, machine, matmul_peak_gflops, median_time  # noqa: I001

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["small", "large"], "Sizes to run (small, large, smoke).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per side (median reported).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def bench(size: str, steps: int) -> dict:
  import jax
  import numpy as np
  import torch
  import transformers

  from jaxmodels.flops import train_flops_per_token

  s = SIZES[size]
  step, state, batch, cfg = lm_train_step(s)
  ids = np.asarray(batch["ids"]).astype(np.int64)
  holder = {"state": step(state, batch, jax.random.key(0))[0]}

  def jax_step():
    holder["state"], m = step(holder["state"], batch, jax.random.key(1))
    m["loss"].block_until_ready()

  torch.manual_seed(0)
  tcfg = transformers.LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                                  intermediate_size=s["intermediate_size"],
                                  num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                                  num_key_value_heads=s["num_heads"], max_position_embeddings=s["seq_len"],
                                  tie_word_embeddings=False)
  tmodel = transformers.LlamaForCausalLM(tcfg)
  opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, weight_decay=0.0)
  tids = torch.tensor(ids)

  def torch_step():
    loss = tmodel(tids, labels=tids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  jax_step(), torch_step()                     # warm-up
  t_jax, t_torch = [], []
  for _ in range(steps):                       # alternate A/B
    t_jax.append(median_time(jax_step, 1))
    t_torch.append(median_time(torch_step, 1))
  import statistics
  tj, tt = statistics.median(t_jax), statistics.median(t_torch)
  flops = train_flops_per_token(cfg, s["seq_len"] - 1) * s["batch"] * (s["seq_len"] - 1)
  return {"jax_step_s": tj, "torch_step_s": tt, "speedup": tt / tj,
          "jax_gflops": flops / tj / 1e9, "torch_gflops": flops / tt / 1e9}


def main(argv):
  del argv
  peak = matmul_peak_gflops()
  result = {"machine": machine(), "matmul_gflops": peak, "sizes": {}}
  rows = [f"machine: {result['machine']}", f"matmul peak: {peak['peak']:.0f} GFLOP/s "
          f"(jax {peak['jax']:.0f}, torch {peak['torch']:.0f})"]
  for size in _SIZES.value:
    r = bench(size, _STEPS.value)
    r["jax_mfu"] = r["jax_gflops"] / peak["peak"]
    r["torch_mfu"] = r["torch_gflops"] / peak["peak"]
    result["sizes"][size] = r
    rows.append(f"{size}: jax {r['jax_step_s']:.3f}s ({r['jax_gflops']:.0f} GFLOP/s, MFU {r['jax_mfu']:.2f}) | "
                f"torch {r['torch_step_s']:.3f}s ({r['torch_gflops']:.0f} GFLOP/s, MFU {r['torch_mfu']:.2f}) | "
                f"speedup {r['speedup']:.2f}x")
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  app.run(main)
