"""Text-to-image end to end (prompt -> LLM -> connector -> DiT sampling -> decoder -> pixels):
jaxmodels vs the same composition in PyTorch (transformers + diffusers), images per second and where
the time goes.

    python tools/bench_t2i.py --sizes=small --batches=1,8 --rounds=3 [--json]
    python tools/bench_t2i.py --sizes=smoke --batches=1 --sample_steps=2 --rounds=1 --json   # a test
    python tools/bench_t2i.py --sizes=small,accelerator --batches=1,8 --dtype=bfloat16       # on a GPU

Models (`--models`; built as bench_unified.py builds them, from the paper configs' `:tiny` model
dicts resized to `bench_unified.SIZES`):

  metaquery  MetaQuery-B-shaped: Qwen2 over [prompt; <boi> N queries <eoi>] -> connector -> SANA with
             CFG against the empty caption's condition (one more LLM pass) -> DC-AE decoder.
  next       BLIP3o-NEXT-shaped: Qwen3 draws the n image tokens autoregressively with the KV cache
             (top-k / top-p over the image vocabulary; jaxmodels `generate`, transformers `generate`),
             re-reads [prompt; tokens] teacher-forced -> connector -> SANA (zero-null CFG) -> DC-AE.
  latte      LaTtE-Flow: Qwen2's per-layer prompt states -> the LaTtE-Flow head (each step runs the
             group owning σ; zero-null CFG) -> DC-AE. The head has no diffusers class: the PyTorch side
             is a torch.nn transcription (bench_unified_models.torch_latte).

`--sample_steps` Euler steps with guidance `--guidance` (the DiT runs on the doubled batch). Rows per
model, size and batch: jaxmodels as one compiled program (`jaxmodels.unified.sampling.sample_images`,
what the evaluations and the server run) and as its stages, each compiled alone and timed between
device syncs (`jax_stages`); PyTorch as the same stages, eager under `torch.no_grad()` (the sampling
loop in Python, as diffusers' pipelines). Stage times are medians over the rounds; `total_s` of a
staged side is the median of its rounds' wall times, so the stages sum to it up to the glue between
them. images/s = batch / total. ratio = PyTorch total / jaxmodels one-program total (target ≥ 2× at
batch 1). Weights are random on both sides (same shapes); sampled pixels are not compared.
"""
from __future__ import annotations

from bench_common import (DTYPES, alternate, emit, load_average, machine, torch_device,  # noqa: I001
                          torch_dtype, torch_sync)
from bench_unified_models import SIZES, TorchUnified, model_setup, size_of

import statistics
import sys
import time

from absl import app, flags

MODELS = ("metaquery", "next", "latte")

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models ({', '.join(MODELS)}).")
_SIZES = flags.DEFINE_list("sizes", ["small"], f"Sizes ({', '.join(SIZES)}).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Images per call.")
_STEPS = flags.DEFINE_integer("sample_steps", 30, "Euler steps per image.")
_GUIDANCE = flags.DEFINE_float("guidance", 3.0, "CFG scale (1.0: no guidance, the DiT on the batch alone).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed A/B rounds (medians reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Compute dtype (parameters stay f32).")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla", "cudnn"],
                               "jaxmodels attention implementation (cudnn: fused, GPU only).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


class Stages:
  """Runs named stages in order, each timed to a device sync; keeps every round's stage times."""

  def __init__(self, sync):
    self.sync, self.times, self.totals = sync, {}, []

  def run(self, stages):
    """stages: [(name, fn(value) -> value)]; the first fn gets None. Returns the last value."""
    value, start = None, time.perf_counter()
    for name, fn in stages:
      t = time.perf_counter()
      value = self.sync(fn(value))
      self.times.setdefault(name, []).append(time.perf_counter() - t)
    self.totals.append(time.perf_counter() - start)
    return value

  def summary(self, batch: int) -> dict:
    total = statistics.median(self.totals)
    return {"stages_s": {k: statistics.median(v) for k, v in self.times.items()}, "total_s": total,
            "images_s": batch / total}


# ------------------------------------------------------------------------------------------------
# jaxmodels: the whole program, and its stages compiled one by one
# ------------------------------------------------------------------------------------------------
def jax_stages(model, ids, mask, rng, steps: int, guidance: float):
  """[(stage, fn)] of `UnifiedModel.generate_image` (guided, no editing inputs), each stage a
  `jax.jit` of its own over the model's split state: image-token sampling (next), the prompt pass(es)
  with the connector, DiT sampling, decoding."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxmodels import flow
  from jaxmodels.unified import latent_codec
  c = model.config
  graphdef, state = nnx.split(model)
  k_tok, k_x = jax.random.split(rng)
  x_init = jax.random.normal(k_x, (ids.shape[0], c.target_side, c.target_side, c.target_channels))
  cmask = mask.astype(jnp.int32) if c.queries == "none" else None

  def staged(fn):
    compiled = jax.jit(lambda st, x: fn(nnx.merge(graphdef, st), x))
    return lambda x: compiled(state, x)

  def prompt(m, codes):
    cond = m.image_token_condition(ids, mask, codes) if codes is not None else m.condition(ids, mask)
    null = (m.null_condition(cond) if c.cfg_null == "empty_caption" and c.queries != "none"
            else jnp.zeros_like(cond))
    return cond, null

  def dit(m, conds):
    def velocity(x, t, cond_):
      return m.velocity(x, t / flow.NUM_TRAIN_TIMESTEPS, *cond_)
    cond, null = conds
    vfn = (flow.cfg_velocity_fn(velocity, (cond, cmask), (null, cmask), guidance) if guidance != 1.0
           else lambda x, t: velocity(x, t, (cond, cmask)))
    return flow.sample(vfn, x_init, num_steps=steps)

  out = ([("image_tokens", staged(lambda m, _: m.sample_image_tokens(ids, mask, k_tok)))]
         if c.queries == "image_tokens" else [])
  return out + [("prompt", staged(prompt)), ("dit", staged(dit)),
                ("decode", staged(lambda m, x: latent_codec.decode(m.vae, x, c)))]


# ------------------------------------------------------------------------------------------------
# PyTorch: the same stages, eager
# ------------------------------------------------------------------------------------------------
def _image_vocab_processor(lo: int, hi: int):
  """A transformers LogitsProcessor keeping only ids in [lo, hi) (the image codebook)."""
  import torch
  from transformers import LogitsProcessor

  class ImageVocab(LogitsProcessor):
    def __call__(self, input_ids, scores):
      keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
      keep[lo:hi] = True
      return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)

  return ImageVocab()


def torch_stages(comp: TorchUnified, ids, steps: int, guidance: float, dtype: str):
  """[(stage, fn)] of the PyTorch composition (see the module docstring)."""
  import torch
  import transformers

  from jaxmodels import flow
  c, device, m = comp.cfg, comp.device, comp.module
  b = ids.shape[0]
  grid = [float(v) for v in flow.inference_sigmas(steps)]
  gen = torch.Generator(device).manual_seed(0)
  x_init = torch.randn((b, c.target_channels, c.target_side, c.target_side), generator=gen, device=device)
  autocast = lambda: torch.autocast(device, dtype=torch_dtype(dtype), enabled=dtype != "float32")  # noqa: E731

  def tokens(_):
    t = c.image_tokenizer
    n = (t.encoder.grid_size // t.scale) ** 2
    o = c.image_vocab_offset + t.codebook_size
    prefix = torch.cat([ids, torch.tensor([[o + t.num_scale_tokens, o + t.scale - 1]], device=device).expand(b, -1)], 1)
    config = transformers.GenerationConfig(
        max_new_tokens=n, do_sample=True, top_k=min(c.image_top_k, t.codebook_size), top_p=c.image_top_p,
        temperature=1.0, eos_token_id=None, pad_token_id=c.image_vocab_offset)
    lo = c.image_vocab_offset
    with autocast():
      out = m.llm.generate(prefix, attention_mask=torch.ones_like(prefix), generation_config=config,
                           logits_processor=[_image_vocab_processor(lo, lo + t.codebook_size)])
    return out[:, prefix.shape[1]:] - lo

  def prompt(codes):
    with autocast():
      if codes is not None:
        cond = comp.connect(comp.image_token_hidden(ids, codes)[1][:, -(codes.shape[1] + 1):])
      else:
        cond = comp.condition(ids)
      null = comp.null_condition(cond) if c.queries != "none" else torch.zeros_like(cond[:1])
    return cond, null

  def dit(conds):
    cond, null = conds
    both = torch.cat([null.expand_as(cond), cond]) if guidance != 1.0 else cond
    x = x_init
    with autocast():
      for i in range(steps):
        sigma, dsigma = grid[i], grid[i + 1] - grid[i]
        xs = torch.cat([x, x]) if guidance != 1.0 else x
        v = comp.velocity(xs, torch.full((xs.shape[0],), sigma, device=device), both).float()
        if guidance != 1.0:
          v_null, v_cond = v.chunk(2)
          v = v_null + guidance * (v_cond - v_null)
        x = x + dsigma * v
    return x

  def decode(x):
    with autocast():
      return m.vae.decode(x / c.vae.scaling_factor).sample.float().clamp(-1, 1)

  out = [("image_tokens", tokens)] if c.queries == "image_tokens" else []
  return out + [("prompt", prompt), ("dit", dit), ("decode", decode)]


# ------------------------------------------------------------------------------------------------
# One row
# ------------------------------------------------------------------------------------------------
def bench(kind: str, size: str, batch: int, steps: int, guidance: float, rounds: int,
          dtype: str = "float32", attention: str = "einsum") -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx

  from jaxmodels.unified.model import UnifiedModel
  from jaxmodels.unified.sampling import sample_images

  s = size_of(size)
  cfg, frozen = model_setup(kind, s, dtype, attention)
  ids = np.random.RandomState(0).randint(0, (cfg.image_vocab_offset or cfg.llm.vocab_size) - 1,
                                         (batch, s["prompt"])).astype(np.int32)
  model = UnifiedModel(cfg, rngs=nnx.Rngs(0))
  jids, jmask, rng = jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), jax.random.key(0)
  jax_staged, torch_staged = Stages(jax.block_until_ready), Stages(lambda v: (torch_sync(), v)[1])
  j_stages = jax_stages(model, jids, jmask, rng, steps, guidance)
  device = torch_device()
  comp = TorchUnified(cfg, frozen, device)
  comp.module.eval()
  t_stages = torch_stages(comp, torch.tensor(ids, dtype=torch.long, device=device), steps, guidance, dtype)
  out = {}

  def fused():
    out["jax"] = sample_images(model, jids, jmask, rng, steps, guidance).block_until_ready()

  def torch_run():
    with torch.no_grad():
      out["torch"] = torch_staged.run(t_stages)

  fused()                                        # warm-up (compilation), not kept
  jax_staged.run(j_stages)
  torch_run()
  for staged in (jax_staged, torch_staged):
    staged.times.clear()
    staged.totals.clear()
  t = alternate({"jax": fused, "jax_stages": lambda: jax_staged.run(j_stages), "torch": torch_run}, rounds,
                warmup=False)
  row = {"model": kind, "size": size, "batch": batch, "sample_steps": steps, "guidance": guidance,
         "tokens": s["tokens"], "image_side": int(out["jax"].shape[1]),
         "jax": {"total_s": t["jax"], "images_s": batch / t["jax"]},
         "jax_stages": jax_staged.summary(batch), "torch": torch_staged.summary(batch)}
  row["ratio"] = row["torch"]["total_s"] / row["jax"]["total_s"]
  row["pixels_match_shape"] = tuple(out["jax"].shape) == tuple(out["torch"].permute(0, 2, 3, 1).shape)
  return row


def _row_line(r: dict) -> str:
  def stages(side):
    return ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r[side]["stages_s"].items())
  return (f"{r['model']} {r['size']} batch {r['batch']} ({r['sample_steps']} steps, {r['image_side']} px): "
          f"jax {r['jax']['images_s']:.2f} img/s ({r['jax']['total_s'] * 1e3:.0f} ms; stages "
          f"{stages('jax_stages')} ms) | torch {r['torch']['images_s']:.2f} img/s "
          f"({r['torch']['total_s'] * 1e3:.0f} ms; stages {stages('torch')} ms) | ratio {r['ratio']:.2f}x")


def main(argv):
  del argv
  import torch
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  for kind in _MODELS.value:
    if kind not in MODELS:
      raise app.UsageError(f"--models: unknown model {kind!r} (known: {', '.join(MODELS)})")
  result = {"machine": machine(), "load_average": load_average(), "torch_threads": torch.get_num_threads(),
            "dtype": _DTYPE.value, "rows": {}}
  rows = [f"machine: {result['machine']} (load {result['load_average']:.1f})"]
  for kind in _MODELS.value:
    for size in _SIZES.value:
      for b in map(int, _BATCHES.value):
        r = bench(kind, size, b, _STEPS.value, _GUIDANCE.value, _ROUNDS.value, _DTYPE.value, _ATTENTION.value)
        result["rows"][f"{kind}_{size}_b{b}"] = r
        rows.append(_row_line(r))
        print(rows[-1], file=sys.stderr)
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
