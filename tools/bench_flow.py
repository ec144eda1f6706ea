"""Flow sampling speed: (a) LaTtE-Flow layerwise experts vs the same head at full depth, (b) the SANA
and Lumina-Next DiTs vs diffusers (PyTorch eager) on identical weights.

    python tools/bench_flow.py --latte_sizes=small --dit_sizes=tiny,small --rounds=5 [--json]
    python tools/bench_flow.py --latte_sizes=smoke --dit_sizes=smoke --sample_steps=2 --rounds=1 --json
    python tools/bench_flow.py --dit_sizes=small,base --dtype=bfloat16     # on a GPU

(a) A `LatteFlow` head with L layers in K groups samples `--sample_steps` Euler steps (σ from 1 to 0,
every group owns steps); each step runs only the group owning σ, i.e. M = L/K layers. The baseline is
the same parameters in a `LatteFlow` with one group, which runs all L layers every step. Reports the
wall speedup (full / LaTtE, target ≥ 0.8·K) and the layer-evaluation ratio, counted twice: from the
sampler's jaxpr (trip counts of the innermost scans, i.e. steps × layers per step) and at run time
(a host callback in `LatteLayer.__call__`, in a separate untimed run).

(b) `--sample_steps` Euler steps of the transformer alone (no text encoder, no VAE): a diffusers model
is built at a tiny/small size, saved with `save_pretrained` and imported with `jaxmodels.hf`; both
sides start from the same noise and caption. jaxmodels runs the whole loop jitted (`flow.sample`, one
`lax.scan`); diffusers runs its forward in a Python loop under `torch.no_grad()`, eager and (`--baselines`
compile) with the transformer through `torch.compile` (inductor; compiled before the rounds; a failure
is reported as `torch_compile_error`). Reports steps/s for
both, the ratio (target ≥ 1.5×) and the max |Δ| of the final latents (a parity check), and each
side's GFLOP/s and MFU against the machine's matmul peak measured in the same run (FLOPs of one step:
XLA's count for one model evaluation), hence `ratio_bound`, the ratio a sampler at the peak would
reach (a ceiling for the target on a compute-bound size). `--dtype`
sets both sides' weights and compute (bf16: the weights are rounded once, identically, on both sides);
where PyTorch sees a GPU, diffusers runs there.

All timings: warm-up first, then A/B alternating rounds in one process, medians.
"""
from __future__ import annotations

from bench_common import (DTYPES, alternate, emit, latte_sampler, latte_setup, load_average,  # noqa: I001
                          machine, matmul_peak_gflops, torch_device, torch_dtype, torch_sync)

from absl import app, flags

_LATTE = flags.DEFINE_list("latte_sizes", ["small"], "LaTtE-Flow sizes (small, smoke); empty: skip.")
_DIT = flags.DEFINE_list("dit_sizes", ["tiny", "small"], "DiT sizes (tiny, small, smoke); empty: skip.")
_MODELS = flags.DEFINE_list("dits", ["sana", "lumina"], "DiTs to compare with diffusers.")
_STEPS = flags.DEFINE_integer("sample_steps", 30, "Euler steps per sample.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed A/B rounds (median reported).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default). "
                                      "On a loaded 2-core machine 2 OpenMP threads stall on every op.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "DiT weight and compute dtype (both sides).")
_BASELINES = flags.DEFINE_list("baselines", ["eager", "compile"], "diffusers baselines: eager, compile "
                                "(torch.compile of the transformer; its compile time is not timed).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")

# DiTs: width, depth, latent side (tokens = (latent / patch)²), caption length.
DIT_SIZES = {
    "base": dict(width=1152, heads=16, layers=12, latent=32, ctx_len=64, batch=4),   # accelerator size
    "small": dict(width=256, heads=8, layers=4, latent=16, ctx_len=32, batch=2),
    "tiny": dict(width=64, heads=4, layers=2, latent=8, ctx_len=16, batch=2),
    "smoke": dict(width=32, heads=2, layers=1, latent=4, ctx_len=4, batch=1),
}


# ------------------------------------------------------------------------------------------------
# (a) LaTtE-Flow
# ------------------------------------------------------------------------------------------------
def _subjaxprs(eqn):
  """(sub-jaxpr, is_branch) pairs of an equation (scan/while bodies, cond branches, pjit, ...)."""
  out = []
  for name, v in eqn.params.items():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      inner = getattr(item, "jaxpr", item)
      if hasattr(inner, "eqns"):
        out.append((inner, name == "branches"))
  return out


def layer_evaluations(jaxpr, mult: int = 1) -> int:
  """Executions of innermost-scan bodies: Σ over scans with no scan inside of (their length × the
  lengths of the scans around them). For a sampler over a layer-stack scan: steps × layers per step.
  cond branches count as their maximum."""
  total, branches = 0, []
  for eqn in jaxpr.eqns:
    subs = _subjaxprs(eqn)
    if eqn.primitive.name == "scan":
      length = eqn.params["length"]
      inner = sum(layer_evaluations(j, mult * length) for j, _ in subs)
      total += inner if inner else mult * length
      continue
    branches += [layer_evaluations(j, mult) for j, b in subs if b]
    total += sum(layer_evaluations(j, mult) for j, b in subs if not b)
  return total + (max(branches) if branches else 0)


def _runtime_layer_count(module, steps: int, inputs) -> int:
  """Runs the sampler once with a host callback in every `LatteLayer` call; returns the call count."""
  import jax

  from jaxmodels.unified import latte_flow
  count = [0]
  original = latte_flow.LatteLayer.__call__

  def counted(self, x, *args):
    jax.debug.callback(lambda _: count.__setitem__(0, count[0] + 1), x[0, 0, 0])
    return original(self, x, *args)

  latte_flow.LatteLayer.__call__ = counted
  try:
    run, state = latte_sampler(module, steps)
    jax.block_until_ready(run(state, *inputs))
    jax.effects_barrier()
  finally:
    latte_flow.LatteLayer.__call__ = original
  return count[0]


def bench_latte(size: str, steps: int, rounds: int) -> dict:
  import jax

  latte, full, inputs = latte_setup(size)
  cfg, big_l = latte.config, latte.config.num_layers
  run_l, st_l = latte_sampler(latte, steps)
  run_f, st_f = latte_sampler(full, steps)
  evals_l = layer_evaluations(jax.make_jaxpr(run_l)(st_l, *inputs).jaxpr)
  evals_f = layer_evaluations(jax.make_jaxpr(run_f)(st_f, *inputs).jaxpr)
  counted_l = _runtime_layer_count(latte, steps, inputs)
  counted_f = _runtime_layer_count(full, steps, inputs)
  t = alternate({"latte": lambda: run_l(st_l, *inputs).block_until_ready(),
                 "full": lambda: run_f(st_f, *inputs).block_until_ready()}, rounds)
  return {"num_layers": big_l, "num_groups": cfg.num_groups, "group_size": cfg.group_size,
          "sample_steps": steps, "latte_s": t["latte"], "full_s": t["full"],
          "speedup": t["full"] / t["latte"], "target_speedup": 0.8 * cfg.num_groups,
          "layer_evals_latte": evals_l, "layer_evals_full": evals_f, "layer_eval_ratio": evals_f / evals_l,
          "counted_latte": counted_l, "counted_full": counted_f}


# ------------------------------------------------------------------------------------------------
# (b) SANA / Lumina-Next vs diffusers
# ------------------------------------------------------------------------------------------------
def _diffusers_model(kind: str, s: dict):
  """A random diffusers transformer (eval mode) and its kwargs for one Euler step."""
  import diffusers
  import torch
  torch.manual_seed(0)
  w, h = s["width"], s["heads"]
  if kind == "sana":
    return diffusers.SanaTransformer2DModel(
        in_channels=8, out_channels=8, num_attention_heads=h, attention_head_dim=w // h,
        num_layers=s["layers"], num_cross_attention_heads=h, cross_attention_head_dim=w // h,
        cross_attention_dim=w, caption_channels=w, sample_size=s["latent"]).eval()
  model = diffusers.LuminaNextDiT2DModel(
      sample_size=2 * s["latent"], patch_size=2, in_channels=4, hidden_size=w, num_layers=s["layers"],
      num_attention_heads=h, num_kv_heads=max(1, h // 2), multiple_of=16, cross_attention_dim=w).eval()
  with torch.no_grad():                          # torch.empty pad token; open the zero-init cross gates
    model.pad_token.zero_()
    for layer in model.layers:
      layer.gate.normal_()
  return model


def bench_dit(kind: str, size: str, steps: int, rounds: int, dtype: str = "float32",
              baselines: tuple[str, ...] = ("eager",)) -> dict:
  import tempfile

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx

  from jaxmodels import flow, hf

  s = DIT_SIZES[size]
  tmodel = _diffusers_model(kind, s)
  with tempfile.TemporaryDirectory() as d:
    tmodel.save_pretrained(d)
    ours = hf.from_pretrained(d, dtype=jnp.dtype(dtype))
  device = torch_device()
  tmodel = tmodel.to(device, torch_dtype(dtype))
  side, ch = (s["latent"], 8) if kind == "sana" else (2 * s["latent"], 4)
  rs = np.random.RandomState(0)
  x0 = rs.randn(s["batch"], side, side, ch).astype(np.float32)
  cap = rs.randn(s["batch"], s["ctx_len"], s["width"]).astype(np.float32)
  mask = np.ones((s["batch"], s["ctx_len"]), np.int64)
  mask[0, s["ctx_len"] // 2:] = 0                # one padded caption
  grid = np.asarray(flow.inference_sigmas(steps), np.float64)

  graphdef, state = nnx.split(ours)

  def velocity(state, x, t, cap, mask):
    m = nnx.merge(graphdef, state)
    if kind == "sana":
      return m(x, t, cap, mask)                                  # t = 1000·σ
    return m.velocity(x, t / flow.NUM_TRAIN_TIMESTEPS, cap, mask)

  @jax.jit
  def run_jax(state, x, cap, mask):
    return flow.sample(lambda x, t: velocity(state, x, t, cap, mask), x, num_steps=steps)

  jdt = jnp.dtype(dtype)
  jx, jcap, jmask = jnp.asarray(x0, jdt), jnp.asarray(cap, jdt), jnp.asarray(mask)
  # FLOPs of one model evaluation (one sampler step), as XLA counts them in the unoptimised HLO:
  # the same architecture and shapes run on both sides, so one count serves both.
  from jaxmodels.trainer.metrics import step_flops
  flops = step_flops(jax.jit(velocity), state, jx, jnp.full((s["batch"],), 500.0, jdt), jcap, jmask)
  tdt = torch_dtype(dtype)
  tx = torch.tensor(x0).permute(0, 3, 1, 2).contiguous().to(device, tdt)
  tcap, tmask = torch.tensor(cap).to(device, tdt), torch.tensor(mask).to(device)
  rope = None
  if kind == "lumina":
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
    rope = get_2d_rotary_pos_embed_lumina(tmodel.head_dim, 384, 384).to(device)

  def run_torch(model):
    x = tx
    with torch.no_grad():
      for i in range(steps):
        sigma, dsigma = float(grid[i]), float(grid[i + 1] - grid[i])
        if kind == "sana":
          t = torch.full((s["batch"],), 1000.0 * sigma, device=device)
          v = model(x, tcap, t, encoder_attention_mask=tmask).sample
        else:                                    # Lumina: t = 1 − σ, v = −output (learned σ dropped)
          t = torch.full((s["batch"],), 1.0 - sigma, device=device)
          v = -model(x, t, tcap, tmask, rope, cross_attention_kwargs={}).sample[:, :ch]
        x = x + dsigma * v
    torch_sync()
    return x

  out = {}

  def jax_fn():
    out["jax"] = run_jax(state, jx, jcap, jmask).block_until_ready()

  fns, compile_error = {"jax": jax_fn}, None
  if "eager" in baselines:
    fns["torch"] = lambda: out.__setitem__("torch", run_torch(tmodel))
  if "compile" in baselines:         # the same module's forward compiled by inductor
    compiled = torch.compile(tmodel, dynamic=False)
    try:
      run_torch(compiled)
      fns["torch_compile"] = lambda: out.__setitem__("torch_compile", run_torch(compiled))
    except Exception as e:           # noqa: BLE001  (e.g. no C++ toolchain for inductor)
      compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  t = alternate(fns, rounds)
  r = {"tokens": (side // (1 if kind == "sana" else 2)) ** 2, "sample_steps": steps,
       "jax_steps_s": steps / t["jax"], "flops_per_step": flops, "jax_gflops": flops * steps / t["jax"] / 1e9,
       "sample_std": float(np.std(np.asarray(out["jax"], np.float32))), "dtype": dtype,
       "params": sum(p.numel() for p in tmodel.parameters())}
  for name, ratio in (("torch", "ratio"), ("torch_compile", "ratio_compile")):
    if name in t:
      diff = float(np.abs(np.asarray(out["jax"], np.float32)
                          - out[name].permute(0, 2, 3, 1).float().cpu().numpy()).max())
      r.update({f"{name}_steps_s": steps / t[name], ratio: t[name] / t["jax"],
                "max_abs_diff" if name == "torch" else "max_abs_diff_compile": diff,
                f"{name}_gflops": flops * steps / t[name] / 1e9})
  if compile_error:
    r["torch_compile_error"] = compile_error
  return r


def main(argv):
  del argv
  import torch
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  result = {"machine": machine(), "load_average": load_average(), "torch_threads": torch.get_num_threads(),
            "dtype": _DTYPE.value, "latte": {}, "dit": {}}
  rows = [f"machine: {result['machine']} (load {result['load_average']:.1f}, torch threads "
          f"{result['torch_threads']})"]
  for size in _LATTE.value:
    r = bench_latte(size, _STEPS.value, _ROUNDS.value)
    result["latte"][size] = r
    rows.append(f"latte {size} (L={r['num_layers']}, K={r['num_groups']}, {r['sample_steps']} steps): "
                f"{r['latte_s']:.3f}s vs full depth {r['full_s']:.3f}s | speedup {r['speedup']:.2f}x "
                f"(target {r['target_speedup']:.1f}x) | layer evals {r['layer_evals_full']}/"
                f"{r['layer_evals_latte']} = {r['layer_eval_ratio']:.2f} (counted {r['counted_full']}/"
                f"{r['counted_latte']})")
  if _DIT.value and _MODELS.value:
    peak = result["matmul_gflops"] = matmul_peak_gflops(dtype=_DTYPE.value)
    rows.append(f"matmul peak ({peak['dtype']}, n={peak['n']}): {peak['peak']:.0f} GFLOP/s")
  for kind in _MODELS.value:
    for size in _DIT.value:
      r = bench_dit(kind, size, _STEPS.value, _ROUNDS.value, _DTYPE.value, tuple(_BASELINES.value))
      line = (f"{kind} {size} ({r['params'] / 1e6:.2f}M params, {r['tokens']} tokens): jax "
              f"{r['jax_steps_s']:.1f} steps/s (MFU {r['jax_gflops'] / peak['peak']:.2f})")
      for name, label, ratio, diff in (("jax", "", None, None), ("torch", "diffusers", "ratio", "max_abs_diff"),
                                       ("torch_compile", "diffusers+compile", "ratio_compile",
                                        "max_abs_diff_compile")):
        if f"{name}_gflops" in r:
          r[f"{name}_mfu"] = r[f"{name}_gflops"] / peak["peak"]
          if ratio:
            line += (f" | {label} {r[f'{name}_steps_s']:.1f} steps/s (MFU {r[f'{name}_mfu']:.2f}) ratio "
                     f"{r[ratio]:.2f}x, max |diff| {r[diff]:.1e}")
      if "torch_gflops" in r:   # a sampler at the measured matmul peak would reach ratio_bound over diffusers
        r["ratio_bound"] = peak["peak"] / r["torch_gflops"]
        line += f" | at the peak: {r['ratio_bound']:.2f}x"
      if "torch_compile_error" in r:
        line += f" | torch.compile failed: {r['torch_compile_error']}"
      result["dit"][f"{kind}_{size}"] = r
      rows.append(line)
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
