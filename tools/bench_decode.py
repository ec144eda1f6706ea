"""Greedy decoding of 128 new tokens after a 16-token prompt: jaxmodels `generate` vs transformers
`generate` on identical weights (the torch model is saved and imported through `jaxmodels.hf`).

    python tools/bench_decode.py --sizes=small,large --batches=1,8 [--json]
    python tools/bench_decode.py --sizes=smoke --batches=1 --new_tokens=8 --json     # used by a test
    python tools/bench_decode.py --sizes=small,large,xl --batches=1,8 --dtype=bfloat16   # on a GPU

Reports tokens/s for both, the ratio, and the memory-bandwidth bound for batch-1 decode (parameter
bytes per step ÷ the machine's copy bandwidth, measured in the same run). `--unfused` adds jaxmodels
with separate q/k/v and gate/up matmuls (`generate(fuse_projections=False)`) to the same A/B rounds.
`--layouts=none,small,all` adds jaxmodels with each listed kernel layout (`generate(transpose_kernels=...)`;
generate's default, "small" at batch 1 on a GPU and "none" otherwise, is the `jax` row). `--dtype=bfloat16`
stores the weights (and the KV cache) in bf16 on both sides, which halves that bound. Where PyTorch
sees a GPU, its side runs there and the bandwidth is the GPU's device-to-device copy.
"""
from __future__ import annotations

from bench_common import (DTYPES, SIZES, alternate, copy_bandwidth_gbs, emit,  # noqa: I001
                          machine, torch_device, torch_dtype, torch_sync)

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["small", "large"], "Sizes (small, large, smoke).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "New tokens per sequence.")
_PROMPT = flags.DEFINE_integer("prompt_len", 16, "Prompt length.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (median).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Weight, cache and compute dtype (both sides).")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla"], "jaxmodels attention implementation.")
_UNFUSED = flags.DEFINE_bool("unfused", False, "Also time jaxmodels with separate q/k/v and gate/up "
                             "matmuls (generate(fuse_projections=False)) in the same A/B rounds.")
_LAYOUTS = flags.DEFINE_list("layouts", [], "Also time jaxmodels with these kernel layouts (none, small, "
                              "all: generate(transpose_kernels=...)) in the same A/B rounds.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def bench(size: str, batch: int, new: int, prompt: int, repeats: int, bandwidth: float,
          dtype: str = "float32", attention: str = "einsum", unfused: bool = False,
          layouts: tuple[str, ...] = ()) -> dict:
  import functools
  import tempfile

  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from jaxmodels import hf
  from jaxmodels.generate import default_transpose_kernels, generate

  s = SIZES[size]
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                                 intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_layers"],
                                 num_attention_heads=s["num_heads"], num_key_value_heads=s["num_heads"],
                                 max_position_embeddings=prompt + new, bos_token_id=None, eos_token_id=None,
                                 pad_token_id=0, tie_word_embeddings=False)
  tmodel = transformers.LlamaForCausalLM(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    tmodel.save_pretrained(d)
    ours = hf.from_pretrained(d, dtype=jnp.dtype(dtype), scan_layers=True, attention_impl=attention)
  tmodel = tmodel.to(torch_device(), torch_dtype(dtype))
  ids = np.random.RandomState(0).randint(1, s["vocab_size"], (batch, prompt))
  tids = torch.tensor(ids, device=torch_device())

  def run_torch():
    with torch.no_grad():
      tmodel.generate(tids, attention_mask=torch.ones_like(tids), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False)
    torch_sync()

  def run_jax(fuse=True, transpose=None):
    generate(ours, ids, new, fuse_projections=fuse, transpose_kernels=transpose).block_until_ready()

  runs = {"jax": run_jax, "torch": run_torch}
  if unfused:
    runs["jax_unfused"] = lambda: run_jax(fuse=False)
  for layout in layouts:
    runs[f"jax_{layout}"] = functools.partial(run_jax, transpose=layout)
  t = alternate(runs, repeats)     # warm-up, then A/B rounds
  t_jax, t_torch = t["jax"], t["torch"]
  param_bytes = sum(p.numel() * p.element_size() for p in tmodel.parameters())
  r = {"jax_tok_s": batch * new / t_jax, "torch_tok_s": batch * new / t_torch, "ratio": t_torch / t_jax,
       "bound_ms_per_step": param_bytes / (bandwidth * 1e9) * 1e3, "jax_ms_per_step": t_jax / new * 1e3}
  if unfused:
    r.update(jax_unfused_ms_per_step=t["jax_unfused"] / new * 1e3, fusion_speedup=t["jax_unfused"] / t_jax)
  if layouts:     # ms/step per kernel layout; the default's speedup over each
    r.update(default_layout=default_transpose_kernels(batch),
             layouts={k: t[f"jax_{k}"] / new * 1e3 for k in layouts},
             layout_speedup={k: t[f"jax_{k}"] / t_jax for k in layouts})
  return r


def main(argv):
  del argv
  bw = copy_bandwidth_gbs()
  result = {"machine": machine(), "dtype": _DTYPE.value, "copy_bandwidth_gbs": bw, "runs": {}}
  rows = [f"machine: {result['machine']}", f"copy bandwidth: {bw:.1f} GB/s"]
  for size in _SIZES.value:
    for batch in map(int, _BATCHES.value):
      r = bench(size, batch, _NEW.value, _PROMPT.value, _REPEATS.value, bw, _DTYPE.value, _ATTENTION.value,
                _UNFUSED.value, tuple(_LAYOUTS.value))
      result["runs"][f"{size}_b{batch}"] = r
      rows.append(f"{size} batch {batch}: jax {r['jax_tok_s']:.0f} tok/s ({r['jax_ms_per_step']:.2f} ms/step, "
                  f"bound {r['bound_ms_per_step']:.2f}) | torch {r['torch_tok_s']:.0f} tok/s | "
                  f"ratio {r['ratio']:.2f}x" + (f" | unfused jax {r['jax_unfused_ms_per_step']:.2f} ms/step "
                                                f"(fusion {r['fusion_speedup']:.2f}x)" if _UNFUSED.value else "")
                  + "".join(f" | {k} kernels {ms:.2f} ms/step" for k, ms in r.get("layouts", {}).items()))
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
