r"""Ahead-of-time memory plan for a big run, on this CPU: no accelerator, nothing allocated at full size.

    python tools/plan.py --config=configs/blip3o_8b.py --devices=256 --mesh=data:1,fsdp:256,tensor:1 --hbm_gb=80 \
        --batch_size=256
    python tools/plan.py --config=configs/blip3o_8b.py:tiny --devices=8 --mesh=data:1,fsdp:8,tensor:1 --json
    python tools/plan.py --config=configs/blip3o_8b.py --devices=256 --mesh=data:2,sequence:4,fsdp:32 --no_compile

`--mesh` may name any axes (`sharding.make_mesh`: e.g. a `sequence` axis for the config's rules, or
`dcn_data` for several slices); the ones not given are 1 (data, fsdp, tensor) and one size may be -1.

Builds `--devices` fake CPU devices (XLA's host-platform device count, set before JAX starts), the
config's mesh over them and the real train step of train.py (`make_train_step` with the config's
optimizer, accumulation and shardings). The state and the batch are `jax.ShapeDtypeStruct`s carrying
their NamedShardings (from `nnx.eval_shape`), so the step is lowered and compiled (SPMD-partitioned)
without materialising a parameter. Prints per-device bytes of the parameters, the optimizer state,
the EMA copy, the batch and the compiled step's temporaries (`compiled.memory_analysis()`), and whether
their sum fits `--hbm_gb`. XLA:CPU's scheduler and fusion differ from TPU/GPU ones, so the temporaries
are an estimate (usually within tens of percent); the parameter and optimizer bytes are exact.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GiB = 1024 ** 3


def load_config(spec: str):
  """`configs/x.py[:arg]` -> the ConfigDict of its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("plan_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def parse_mesh(text: str) -> dict[str, int]:
  """"data:2,fsdp:-1" -> {"data": 2, "fsdp": -1} (any axis names; see `sharding.make_mesh`)."""
  out = {}
  for part in text.split(","):
    name, _, size = part.partition(":")
    try:
      out[name.strip()] = int(size)
    except ValueError:
      raise SystemExit(f"error: --mesh={text}: {part!r} is not axis:size") from None
  return out


def _bytes_per_device(tree) -> int:
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _image_size(cfg, default: int = 32) -> int:
  """The first `image_size` found in a (nested) config dataclass, else `default`."""
  import dataclasses
  if cfg is None or not dataclasses.is_dataclass(cfg):
    return default
  if isinstance(getattr(cfg, "image_size", None), int):
    return cfg.image_size
  for f in dataclasses.fields(cfg):
    found = _image_size(getattr(cfg, f.name), 0)
    if found:
      return found
  return default


def batch_spec(config, mesh, model, rules=None):
  """Abstract global batch in train.py's task layout for `model` (a UnifiedModel),
  each array's batch dim split by the rules' `act_batch` (`sharding.batch_sharding`). Sequence
  lengths: `config.data.und_len` (else `max_length`, else the image tokens + 256 text tokens) and
  `config.data.gen_len` (else 128). Generation images at the side the data layer resizes to; the
  ShapesWorld extras when the config asks for them: `und_labels` [B, g, g, 2] (`data.dense_labels`)
  and `gen_cond_image` (`data.edit_fraction`)."""
  import jax
  import jax.numpy as jnp

  from jaxmodels import sharding
  c, d = model.config, config.data
  b = d.batch_size
  und_len = d.get("und_len") or d.get("max_length") or model.num_image_tokens + 256
  gen_len = d.get("gen_len") or 128
  und_size = _image_size(c.und_encoder) if c.und_encoder is not None else _image_size(c.image_tokenizer)
  shapes = dict(und_image=((b, und_size, und_size, 3), jnp.float32), und_ids=((b, und_len), jnp.int32),
                und_mask=((b, und_len), jnp.int32), und_loss_mask=((b, und_len), jnp.int32))
  if c.generates:                                              # else understanding only (Florence-VL)
    patch = getattr(c.und_encoder, "patch_size", None)
    if d.get("dense_labels") and patch:
      shapes["und_labels"] = ((b, und_size // patch, und_size // patch, 2), jnp.int32)
    precomputed = c.gen_target == "latents" and c.vae is None
    if precomputed:                        # latents from the data; image-token models still read images
      shapes["gen_latents"] = ((b, c.latent_size, c.latent_size, c.latent_channels), jnp.float32)
    size = (c.gen_image_size if c.gen_target in ("pixels", "latents") else
            _image_size(getattr(c, "autoencoder", None), und_size) if c.gen_target == "autoencoder" else
            _image_size(c.gen_encoder) if c.gen_encoder is not None else
            _image_size(c.image_tokenizer, und_size))
    if not precomputed or c.image_tokenizer is not None:
      shapes["gen_image"] = ((b, size, size, 3), jnp.float32)
    if d.get("edit_fraction"):
      shapes["gen_cond_image"] = ((b, und_size, und_size, 3), jnp.float32)
    shapes.update(gen_ids=((b, gen_len), jnp.int32), gen_mask=((b, gen_len), jnp.int32))
  return {k: jax.ShapeDtypeStruct(s, t, sharding=sharding.batch_sharding(mesh, len(s), rules))
          for k, (s, t) in shapes.items()}


def plan(config, hbm_gb: float | None = None, *, compile_step: bool = True) -> dict:
  """Lowers and compiles train.py's step for `config.mesh` over the visible devices; returns bytes.
  `compile_step=False` stops before lowering: exact parameter / optimizer / EMA / batch bytes, no
  temporaries (`temp_bytes` None; `fits` then only says whether the state alone fits)."""
  import time

  import jax
  from flax import nnx

  from jaxmodels import sharding
  from jaxmodels.trainer import make_train_step
  from jaxmodels.trainer.setup import is_grpo_run, mesh_and_rules, train_state_factory
  mesh, rules = mesh_and_rules(config)
  rl = is_grpo_run(config)          # GRPO: policy + frozen reference, the update on one rollout batch
  if rl:
    from jaxmodels.trainer.grpo import grpo_batch_spec, grpo_state_factory
    make_state, lr = grpo_state_factory(config)
  else:
    make_state, lr = train_state_factory(config)
  abstract_ts = nnx.eval_shape(make_state)
  _, state = nnx.split(abstract_ts)
  shardings = sharding.state_shardings(state, mesh, rules)
  target = sharding.abstract_state(state, shardings)
  step_fn = make_train_step(abstract_ts, accum_steps=config.train.accum_steps, lr_schedule=lr,
                            state_shardings=shardings)
  batch = (grpo_batch_spec(config, mesh, abstract_ts.model, rules) if rl
           else batch_spec(config, mesh, abstract_ts.model, rules))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  t0 = time.time()
  mem = None
  if compile_step:
    with sharding.use_mesh(mesh, rules):
      compiled = step_fn.lower(target, batch, rng).compile()
    mem = compiled.memory_analysis()
  parts = {name: _bytes_per_device(target[name]) if name in target else 0
           for name in ("model", "optimizer", "ema")}
  out = {
      "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "params_bytes": parts["model"], "optimizer_bytes": parts["optimizer"], "ema_bytes": parts["ema"],
      "batch_bytes": _bytes_per_device(batch),
      "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else None,
      "argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0)) if mem is not None else None,
      "output_bytes": int(getattr(mem, "output_size_in_bytes", 0)) if mem is not None else None,
      "alias_bytes": int(getattr(mem, "alias_size_in_bytes", 0)) if mem is not None else None,
      "param_count": sharding.param_count(state["model"]),
      "batch_shapes": {k: list(v.shape) for k, v in batch.items()},
      "compile_seconds": round(time.time() - t0, 1) if compile_step else None,
  }
  # Live at the step's peak: the (donated, aliased) state + batch + temporaries + non-aliased outputs.
  temp = out["temp_bytes"] or 0
  total = parts["model"] + parts["optimizer"] + parts["ema"] + out["batch_bytes"] + temp
  if out["output_bytes"] is not None and out["alias_bytes"] is not None:
    total += max(out["output_bytes"] - out["alias_bytes"], 0)
  out["total_bytes"] = total
  if hbm_gb is not None:
    out["hbm_bytes"] = int(hbm_gb * GiB)
    out["fits"] = total <= out["hbm_bytes"]
  return out


def format_table(r: dict) -> str:
  rows = [("parameters", r["params_bytes"]), ("optimizer state", r["optimizer_bytes"]),
          ("EMA", r["ema_bytes"]), ("batch", r["batch_bytes"]), ("step temporaries", r["temp_bytes"] or 0),
          ("total", r["total_bytes"])]
  lines = [f"{r['devices']} devices, mesh {r['mesh']}, {r['param_count'] / 1e6:.1f}M parameters; "
           f"per device:"]
  lines += [f"  {name:<18}{b / GiB:12.4f} GiB  ({b:,} bytes)" for name, b in rows]
  if r["temp_bytes"] is None:
    lines.append("  (step not compiled: --no_compile; temporaries not included)")
  if "fits" in r:
    lines.append(f"  fits {r['hbm_bytes'] / GiB:.0f} GiB HBM: {'yes' if r['fits'] else 'NO'}")
  return "\n".join(lines)


def stand_in_prompt_ids(config) -> None:
  """Florence-VL configs read their DBFusion prompt ids from a local Florence-2 tokenizer; a plan
  needs only their lengths, so without a tokenizer each prompt gets 12 stand-in ids."""
  model = config.model
  if model.get("type") != "florence_vl":
    return
  fusion = model.get("dbfusion") or {}
  if fusion.get("prompt_ids") is None and not fusion.get("tokenizer"):
    model.dbfusion.prompt_ids = tuple((0,) + (5,) * 10 + (2,) for _ in fusion.get("prompts", ()))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="configs/x.py[:arg]")
  p.add_argument("--devices", type=int, required=True, help="number of (fake) devices")
  p.add_argument("--mesh", default=None, help="e.g. data:1,fsdp:256,tensor:1 (default: the config's)")
  p.add_argument("--hbm_gb", type=float, default=None, help="HBM per device, GiB")
  p.add_argument("--batch_size", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--no_compile", action="store_true",
                 help="state bytes only (exact), without compiling the step (no temporaries)")
  p.add_argument("--fast_compile", action="store_true",
                 help="skip LLVM optimisation of the (never run) CPU executable: same memory analysis, "
                      "shorter compile (--xla_backend_optimization_level=0)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  a = p.parse_args(argv)
  if "jax" in sys.modules:
    raise SystemExit("error: tools/plan.py must set the device count before JAX starts (run it as a script)")
  # Buffer assignment (hence memory_analysis) is done on the optimised HLO before LLVM code generation,
  # which takes most of a big step's compile time and whose result a plan never runs.
  extra = " --xla_backend_optimization_level=0" if a.fast_compile else ""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={a.devices}{extra}").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  from jaxmodels.errors import run_cli

  def go():
    config = load_config(a.config)
    if a.mesh:
      config.mesh = parse_mesh(a.mesh)
    if a.batch_size:
      config.data.batch_size = a.batch_size
    stand_in_prompt_ids(config)
    result = plan(config, a.hbm_gb, compile_step=not a.no_compile)
    result["config"] = a.config
    print(json.dumps(result) if a.json else format_table(result))
    return result

  run_cli(go)


if __name__ == "__main__":
  main()
