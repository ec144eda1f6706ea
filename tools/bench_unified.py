"""The unified-model train step of the papers: jaxmodels vs the same composition in PyTorch
(transformers + diffusers modules), eager and `torch.compile`.

    python tools/bench_unified.py --sizes=small,medium --steps=5 [--json]
    python tools/bench_unified.py --sizes=small --tokens=64,256,1024 --steps=3      # cost growth
    python tools/bench_unified.py --sizes=small --remat=none,dots,unrolled --profile  # where the time goes
    python tools/bench_unified.py --sizes=smoke --steps=1 --baselines=eager --json   # used by a test
    python tools/bench_unified.py --sizes=small,accelerator --dtype=bfloat16 --attention=cudnn  # on a GPU

Models (`--models`), each built as `configs/paper_common.py` builds the paper's `:tiny` variant and then
resized (`SIZES`), and the generation step the paper trains (no understanding batch):

  blip3o     BLIP3-o stage 2: frozen Qwen2.5-style LLM over [prompt; N learnable queries] -> Lumina-Next
             DiT with BLIP3-o's caption projection, flow matching on pooled features of a frozen ViT
             (trainable: queries + DiT; the gradient reaches the queries through the frozen LLM).
             PyTorch: Qwen2Model + nn.Parameter queries + PixArtAlphaTextProjection +
             LuminaNextDiT2DModel, targets from CLIPVisionModel. EVA-CLIP (the paper's target encoder)
             has no transformers class, so both sides use a CLIP-style ViT of the size's width.
  metaquery  MetaQuery: frozen Qwen2-style LLM over [prompt; <boi> N vocab queries <eoi>] (only the query
             rows train) -> bidirectional connector + projection -> SANA on DC-AE latents, empty-caption
             CFG null (an LLM pass per step). PyTorch: Qwen2Model, the connector from transformers'
             Qwen2DecoderLayer with causal masking off (our layers also L2-normalise q/k: elementwise),
             SanaTransformer2DModel, AutoencoderDC.
  next       BLIP3o-NEXT: trainable Qwen3 over [prompt; <im_start> <S> image tokens] with CE, the
             image-token states -> Linear-GELU-Linear-RMSNorm -> SANA (frozen but its caption
             projection) on DC-AE latents; codes from a frozen SigLIP + SimVQ tokenizer.
             PyTorch: Qwen3ForCausalLM, SiglipVisionModel + the SimVQ quantiser (torch.nn),
             SanaTransformer2DModel, AutoencoderDC.

Both sides: the same widths and depths (the PyTorch modules are built from our configs through the
`jaxmodels.hf` families' `config_to_hf`), the same frozen / trainable split (the configs' `optim.frozen`
regexes, applied to both sides' parameter paths), AdamW, f32 on the CPU; `--dtype=bfloat16`: f32
parameters and optimizer state with bf16 compute (PyTorch under `torch.autocast`). Parameter counts of
both sides are reported (`params`), as a check that the compositions match.

Reported per row: median step times in A/B rounds after a warm-up (bench_common.alternate; compile
time excluded), speedup = torch time / jax time for each baseline, model FLOPs and MFU against the
matmul peak measured in the same run, and peak memory. Model FLOPs: each part's forward FLOPs as XLA
counts them on that part alone, times 3 for a trainable part (forward + activation + weight
gradients), 2 for a frozen part the gradient passes through (forward + activation gradients: the
LLM in blip3o / metaquery, the SANA body in next), 1 for a frozen part without gradient (target
encoders, the DC-AE, the tokenizer); reported per part and as trainable / frozen / total, with XLA's
count of the whole compiled step beside them. Peak memory: jaxmodels from the compiled step's
memory analysis (arguments + outputs − donated + temporaries); PyTorch on a GPU from
`max_memory_allocated`, on the CPU as the bytes of parameters, optimizer state and batch plus the
allocator's peak during one step (`torch.profiler`, profile_memory).

`--remat=none,dots,unrolled,looped` adds jaxmodels variants to the same A/B rounds: every layer stack
(LLM, ViTs, DiT) scanned with that remat policy (short stacks traced unrolled on the CPU, the library
default: `layers.block.scan_unroll`), unrolled (no scan), or "looped" (scanned, remat none, every scan
kept as a loop: `block.scan_unroll_limit(0)`) (`variant_step_s`, `variant_peak_bytes`); the first is
the headline row. `--profile` times each part alone as the step runs it (`jax_part_s`).

`--tokens=64,256,1024` runs each size at those DiT sequence lengths (image tokens per example; the
image side follows) and fits t ∝ tokensᵏ per side (least squares in log-log). Attention is named in
the output: jaxmodels "einsum" (materialised softmax; "cudnn" fused on a GPU), SANA's self-attention
linear on both sides; PyTorch F.scaled_dot_product_attention (transformers "sdpa", diffusers'
AttnProcessor2_0).
"""
from __future__ import annotations

from bench_common import (DTYPES, alternate, emit, fit_exponent, load_average, machine,  # noqa: I001
                          matmul_peak_gflops, torch_device, torch_dtype, torch_sync)
from bench_unified_models import (SIZES, TorchUnified, image_side, make_batch, model_setup,  # noqa: I001
                                  size_of, state_tensors, torch_batch, torch_memory_bytes)

import sys

from absl import app, flags

MODELS = ("blip3o", "metaquery", "next")
BASELINES = ("eager", "compile")

FLOP_FACTOR = {"trainable": 3, "frozen_grad": 2, "frozen": 1}

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models to run ({', '.join(MODELS)}).")
_SIZES = flags.DEFINE_list("sizes", ["small", "medium"], f"Sizes ({', '.join(SIZES)}).")
_TOKENS = flags.DEFINE_list("tokens", [], "DiT image tokens per example (squares); empty: each size's own. "
                            "Several: the cost-growth sweep with a fitted exponent.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed A/B rounds (median reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Compute dtype (parameters stay f32).")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla", "cudnn"],
                               "jaxmodels attention implementation (cudnn: fused, GPU only).")
_BASELINES = flags.DEFINE_list("baselines", list(BASELINES), "PyTorch baselines: eager, compile.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
_PROFILE = flags.DEFINE_bool("profile", False, "Also time each part alone (jaxmodels): where the step's time "
                             "goes (`jax_part_s`; `rest`: the step minus the parts, i.e. loss glue + AdamW).")
_REMAT = flags.DEFINE_list("remat", ["none"], "jaxmodels variants: the layer stacks' remat policy "
                           "(REMAT_POLICIES), 'unrolled' (no scan, no remat) or 'looped' (scan loops kept); the first is the headline "
                           "row, all run in the same A/B rounds (`variant_step_s`).")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure peak memory (an untimed profiled step per side).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def _forward_flops(model, fn, *args) -> float:
  """XLA's FLOP count of `fn(model, *args)` (args: arrays or ShapeDtypeStructs), lowered alone, every
  layer stack counted in full (`trainer.metrics.step_flops`)."""
  import jax
  from flax import nnx
  from jaxmodels.trainer.metrics import step_flops
  graphdef, state = nnx.split(model)
  return step_flops(jax.jit(lambda st, *a: fn(nnx.merge(graphdef, st), *a)), state, *args)


def step_parts(model, batch: dict) -> dict:
  """{part: {"calls": [(fn(model, *args), arg specs)], "role", "module", "minus": calls}} of one train
  step's parts (see the module docstring), at the shapes the step gives each part: `role` trainable |
  frozen_grad | frozen, `module` the model attribute holding its parameters, `minus` calls whose
  FLOPs belong to another part (next's caption projection, trainable inside the frozen DiT)."""
  import jax
  import jax.numpy as jnp
  from jaxmodels.unified.patch_tokens import positions_of
  c = model.config
  b, t = batch["gen_ids"].shape
  d = c.llm.hidden_size
  act = jnp.dtype(c.llm.dtype)
  spec = lambda *shape, dt=jnp.float32: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
  image = spec(*batch["gen_image"].shape)
  side, ch = c.target_side, c.target_channels
  cond_dim = c.dit.caption_channels if type(c.dit).__name__ == "SanaConfig" else c.dit.cross_attention_dim

  def llm(m, e, mask):
    return m.llm.forward(None, positions_of(mask), mask, inputs_embeds=e).hidden

  def llm_call(rows, length):
    return (llm, (spec(rows, length, d, dt=act), spec(rows, length, dt=jnp.int32)))

  def dit_call(n):
    return (lambda m, x, s_, cond: m.velocity(x, s_, cond), (spec(b, side, side, ch), spec(b), spec(b, n, cond_dim)))

  def connector_call(rows, n):
    return (lambda m, h: m.connector(h), (spec(rows, n, d, dt=act),))

  target = (lambda m, x: m.target(x), (image,))
  part = lambda role, module, *calls, minus=(): dict(calls=list(calls), role=role, module=module,  # noqa: E731
                                                     minus=list(minus))
  if c.queries == "learnable":         # blip3o
    n = c.num_queries
    return {"llm": part("frozen_grad", "llm", llm_call(b, t + n)),
            "gen_encoder": part("frozen", "gen_encoder", target),
            "dit": part("trainable", "dit", dit_call(n))}
  if c.queries == "vocab":             # metaquery: the batch's pass and the empty-caption null's
    n = c.num_queries
    return {"llm": part("frozen_grad", "llm", llm_call(b, t + n + 2), llm_call(1, n + 2)),
            "connector": part("trainable", "connector", connector_call(b, n), connector_call(1, n)),
            "vae": part("frozen", "vae", target),
            "dit": part("trainable", "dit", dit_call(n))}
  n = model.image_tokenizer.grid_size(c.image_tokenizer.scale) ** 2          # next
  length = t + 2 + n
  lm = (lambda m, ids, mask: m.llm.logits(m.llm.forward(ids, positions_of(mask), mask).hidden[:, :-1]),
        (spec(b, length, dt=jnp.int32), spec(b, length, dt=jnp.int32)))
  caption = (lambda m, y: m.dit.caption_norm(m.dit.caption_projection(y)), (spec(b, n + 1, cond_dim),))
  return {"image_tokenizer": part("frozen", "image_tokenizer", (lambda m, x: m.image_codes(x), (image,))),
          "vae": part("frozen", "vae", target),
          "llm": part("trainable", "llm", lm),
          "connector": part("trainable", "connector", connector_call(b, n + 1)),
          "dit": part("frozen_grad", "dit", dit_call(n + 1), minus=[caption]),
          "dit_caption": part("trainable", "dit", caption)}


def part_flops(model, parts: dict) -> dict:
  """{part: {"forward": FLOPs, "role"}} of `step_parts`: XLA's count of each call lowered alone."""
  count = lambda calls: sum(_forward_flops(model, fn, *args) for fn, args in calls)  # noqa: E731
  return {k: {"forward": count(p["calls"]) - count(p["minus"]), "role": p["role"]} for k, p in parts.items()}


def _concrete(x):
  """An input for a ShapeDtypeStruct: ones for int masks / ids, random normal for floats."""
  import jax
  import jax.numpy as jnp
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.ones(x.shape, x.dtype)
  return jax.random.normal(jax.random.key(0), x.shape, jnp.float32).astype(x.dtype)


def part_times(model, parts: dict, rounds: int = 3) -> dict:
  """Seconds of each part alone, compiled alone, doing what the step does with it: the forward
  (frozen), forward + gradient to its float inputs (frozen_grad), forward + gradients to its
  inputs and its module's parameters (trainable). Medians of `rounds` runs, after a warm-up."""
  import statistics
  import time

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxmodels.trainer.train_state import get_submodule
  graphdef, state = nnx.split(model)
  out = {}
  for name, p in parts.items():
    runs = []
    for fn, specs in p["calls"]:
      args = [_concrete(a) for a in specs]
      floats = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating)]
      params = nnx.state(get_submodule(model, p["module"]), nnx.Param) if p["role"] == "trainable" else None

      def run(state, params, args, fn=fn, floats=floats, module=p["module"], role=p["role"]):
        def f(params, fargs):
          m = nnx.merge(graphdef, state, copy=True)
          if params is not None:
            nnx.update(get_submodule(m, module), params)
          full = list(args)
          for i, a in zip(floats, fargs):
            full[i] = a
          return fn(m, *full)
        fargs = [args[i] for i in floats]
        if role == "frozen":
          return f(params, fargs)
        out_, vjp = jax.vjp(f, params, fargs)
        return out_, vjp(jax.tree.map(jnp.ones_like, out_))

      compiled = jax.jit(run)
      runs.append(lambda compiled=compiled, params=params, args=args: jax.block_until_ready(
          compiled(state, params, args)))
    for r in runs:
      r()
    times = []
    for _ in range(rounds):
      t = time.perf_counter()
      for r in runs:
        r()
      times.append(time.perf_counter() - t)
    out[name] = statistics.median(times)
  return out


def model_flops(parts: dict) -> dict:
  """Model FLOPs of one step from `part_flops`: per role and in total."""
  out = {"trainable": 0.0, "frozen": 0.0}
  for p in parts.values():
    out["trainable" if p["role"] == "trainable" else "frozen"] += FLOP_FACTOR[p["role"]] * p["forward"]
  out["total"] = out["trainable"] + out["frozen"]
  return out


def jax_train_step(cfg, frozen, batch: dict):
  """(compiled step, state holder, device batch, the model) of the unified train step (AdamW, the
  configs' frozen regexes); the step is compiled ahead of time so its cost and memory analyses
  describe the program that runs."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxmodels.trainer import TrainState, make_optimizer, make_train_step
  from jaxmodels.trainer.optim import trainable_filter
  from jaxmodels.unified.model import UnifiedModel

  model = UnifiedModel(cfg, rngs=nnx.Rngs(0))
  tx, _ = make_optimizer(dict(lr=1e-4, weight_decay=0.0, clip_norm=None, warmup_steps=0), 1000)
  ts = TrainState(model, tx, wrt=trainable_filter(frozen=frozen))
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  state = nnx.split(ts)[1]
  compiled = make_train_step(ts).lower(state, jbatch, jax.random.key(0)).compile()
  return compiled, {"state": state}, jbatch, model


def jax_memory_bytes(compiled) -> int | None:
  """Peak bytes of a compiled program: arguments + outputs − donated (aliased) + temporaries."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)
  except Exception:   # noqa: BLE001  (not every backend reports it)
    return None


def param_counts(model, frozen) -> dict:
  """{"trainable", "frozen"} parameter counts of a jaxmodels model under the frozen regexes."""
  import jax
  from flax import nnx

  from jaxmodels.trainer.optim import trainable_filter
  size = lambda st: sum(int(x.size) for x in jax.tree.leaves(st))  # noqa: E731
  total = size(nnx.state(model, nnx.Param))
  trainable = size(nnx.state(model, trainable_filter(frozen=frozen)))
  return {"trainable": trainable, "frozen": total - trainable}


# ------------------------------------------------------------------------------------------------
# One row
# ------------------------------------------------------------------------------------------------
def attention_names(cfg, attention: str) -> dict:
  dit = "linear self-attention + einsum cross" if type(cfg.dit).__name__ == "SanaConfig" else attention
  return {"jax": {"llm": attention, "dit": dit.replace("einsum", attention)},
          "torch": {"llm": "sdpa", "dit": ("SanaLinearAttnProcessor2_0 + sdpa cross"
                                           if type(cfg.dit).__name__ == "SanaConfig" else "sdpa")}}


def bench(kind: str, size: str, steps: int, *, tokens: int | None = None, dtype: str = "float32",
          attention: str = "einsum", baselines=BASELINES, memory: bool = True,
          peak_gflops: float | None = None, profile: bool = False, variants=("none",)) -> dict:
  """One row: model `kind` at `size` (`tokens` image tokens), jaxmodels and each PyTorch baseline in
  the same A/B rounds; MFU against `peak_gflops` (the measured matmul peak) when given."""
  import contextlib

  import jax
  import torch
  from jaxmodels.layers import block

  s = size_of(size, tokens)
  steps_by_variant, memory_by_variant = {}, {}
  for i, variant in enumerate(variants):
    unrolled = variant == "unrolled"
    remat = "none" if variant in ("unrolled", "looped") else variant
    cfg_v, frozen = model_setup(kind, s, dtype, attention, remat=remat, scan=not unrolled)
    if i == 0:
      cfg, batch = cfg_v, make_batch(cfg_v, s)
    with block.scan_unroll_limit(0) if variant == "looped" else contextlib.nullcontext():
      compiled, holder, jbatch, model_v = jax_train_step(cfg_v, frozen, batch)
    memory_by_variant[variant] = jax_memory_bytes(compiled)

    def jax_step(compiled=compiled, holder=holder, jbatch=jbatch):
      holder["state"], _ = compiled(holder["state"], jbatch, jax.random.key(1))
      jax.block_until_ready(holder["state"])
    steps_by_variant[variant] = jax_step
    if i == 0:
      model, first = model_v, compiled
  parts = step_parts(model, batch)
  flops_parts = part_flops(model, parts)
  flops = model_flops(flops_parts)
  from jaxmodels.trainer.metrics import compiled_flops
  row = {"model": kind, "size": size, "tokens": s["tokens"], "batch": s["batch"], "prompt": s["prompt"],
         "image_side": image_side(cfg), "parts": flops_parts, "model_flops": flops,
         "xla_step_flops": compiled_flops(first), "attention": attention_names(cfg, attention),
         "params": {"jax": param_counts(model, frozen)}, "remat": variants[0]}

  device = torch_device()
  comp = TorchUnified(cfg, frozen, device)
  row["params"]["torch"] = comp.params()
  tbatch = torch_batch(batch, device)
  opt = torch.optim.AdamW([p for p in comp.module.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

  def make_torch_step(loss_fn):
    def torch_step():
      with torch.autocast(device, dtype=torch_dtype(dtype), enabled=dtype != "float32"):
        loss = loss_fn(tbatch)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      torch_sync()
    return torch_step

  fns = {"jax": steps_by_variant[variants[0]],
         **{f"jax:{v}": steps_by_variant[v] for v in variants[1:]}}
  if "eager" in baselines:
    fns["torch"] = make_torch_step(comp.loss)
  if "compile" in baselines:
    # Static shapes: with the default, dynamo's profile-guided dynamic shapes, kept in its cache
    # directory from runs at other sizes, made inductor fail on symbolic sizes of these models.
    compiled_step = make_torch_step(torch.compile(comp.loss, dynamic=False))
    try:
      compiled_step()                            # compiles (forward and backward graphs)
      fns["torch_compile"] = compiled_step
    except Exception as e:                       # noqa: BLE001  (e.g. no C++ toolchain for inductor)
      row["torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  if profile:     # before the steps run: they donate the state the models' arrays belong to
    row["jax_part_s"] = part_times(model, parts)
  times = alternate(fns, steps)
  row["variant_step_s"] = {v: times.pop("jax" if i == 0 else f"jax:{v}") for i, v in enumerate(variants)}
  times = {"jax": row["variant_step_s"][variants[0]], **times}
  row["step_s"] = times
  for name, t in times.items():
    if peak_gflops:
      row.setdefault("mfu", {})[name] = flops["total"] / t / 1e9 / peak_gflops
    if name != "jax":
      row.setdefault("speedup", {})[name] = t / times["jax"]
  if profile:
    row["jax_part_s"]["rest"] = times["jax"] - sum(row["jax_part_s"].values())
  if memory:
    row["peak_bytes"] = {"jax": memory_by_variant[variants[0]]}
    row["variant_peak_bytes"] = memory_by_variant
    tensors = state_tensors(comp.module, opt, tbatch)
    for name in fns:
      if name != "jax":
        row["peak_bytes"][name] = torch_memory_bytes(fns[name], tensors)
  return row


def _row_line(r: dict) -> str:
  t, sp, mfu, f = r["step_s"], r.get("speedup", {}), r["mfu"], r["model_flops"]
  mem = r.get("peak_bytes", {})
  cells = [f"jax {t['jax']:.3f}s (MFU {mfu['jax']:.2f}" + (f", {mem['jax'] / 2**20:.0f} MiB)" if mem.get("jax")
                                                            else ")")]
  for name in ("torch", "torch_compile"):
    if name in t:
      cells.append(f"{name} {t[name]:.3f}s (MFU {mfu[name]:.2f}" + (f", {mem[name] / 2**20:.0f} MiB" if name in mem
                                                                     else "") + f") speedup {sp[name]:.2f}x")
  if "torch_compile_error" in r:
    cells.append(f"torch.compile failed: {r['torch_compile_error']}")
  if len(r["variant_step_s"]) > 1:
    cells.append("jax variants " + ", ".join(f"{k} {v:.3f}s" for k, v in r["variant_step_s"].items()))
  if "jax_part_s" in r:
    cells.append("jax parts " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r["jax_part_s"].items()) + " ms")
  return (f"{r['model']} {r['size']} ({r['tokens']} tokens, batch {r['batch']}; model GFLOP/step "
          f"{f['total'] / 1e9:.1f} = trainable {f['trainable'] / 1e9:.1f} + frozen {f['frozen'] / 1e9:.1f}): "
          + " | ".join(cells))


def main(argv):
  del argv
  import torch
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  if set(_BASELINES.value) - set(BASELINES):
    raise app.UsageError(f"--baselines={','.join(_BASELINES.value)}: expected eager and/or compile")
  from jaxmodels.layers.block import REMAT_POLICIES
  if not _REMAT.value or set(_REMAT.value) - set(REMAT_POLICIES) - {"unrolled", "looped"}:
    raise app.UsageError(f"--remat={','.join(_REMAT.value)}: expected {sorted(REMAT_POLICIES)}, unrolled or looped")
  for size in _SIZES.value:
    if size not in SIZES:
      raise app.UsageError(f"--sizes: unknown size {size!r} (known: {', '.join(SIZES)})")
  peak = matmul_peak_gflops(dtype=_DTYPE.value)
  result = {"machine": machine(), "load_average": load_average(), "torch_threads": torch.get_num_threads(),
            "dtype": _DTYPE.value,
            "baselines": _BASELINES.value, "matmul_gflops": peak, "rows": {}}
  rows = [f"machine: {result['machine']} (load {result['load_average']:.1f})",
          f"matmul peak ({peak['dtype']}, n={peak['n']}): {peak['peak']:.0f} GFLOP/s"]
  tokens = [int(t) for t in _TOKENS.value] or [None]
  for kind in _MODELS.value:
    for size in _SIZES.value:
      for n in tokens:
        r = bench(kind, size, _STEPS.value, tokens=n, dtype=_DTYPE.value, attention=_ATTENTION.value,
                  baselines=tuple(_BASELINES.value), memory=_MEMORY.value, peak_gflops=peak["peak"],
                  profile=_PROFILE.value, variants=tuple(_REMAT.value))
        result["rows"][f"{kind}_{size}_{r['tokens']}"] = r
        rows.append(_row_line(r))
        print(rows[-1], file=sys.stderr)
      if len(tokens) > 1:
        sweep = [result["rows"][f"{kind}_{size}_{n}"] for n in tokens]
        fit = {name: fit_exponent(tokens, [r["step_s"][name] for r in sweep]) for name in sweep[0]["step_s"]}
        fit["model_flops"] = fit_exponent(tokens, [r["model_flops"]["total"] for r in sweep])
        result.setdefault("exponents", {})[f"{kind}_{size}"] = fit
        rows.append(f"{kind} {size}: step time ∝ tokens^k, k = "
                    + ", ".join(f"{name} {k:.2f}" for name, k in fit.items()))
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
