r"""Ahead-of-time memory plan for a big run, on this CPU: no accelerator, nothing allocated at full size.

    python tools/plan.py --config=configs/blip3o_8b.py --devices=256 --mesh=data:1,fsdp:256,tensor:1 --hbm_gb=80
    python tools/plan.py --config=configs/blip3o_8b.py:tiny --devices=8 --mesh=data:1,fsdp:8,tensor:1 --json

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
  out = {}
  for part in text.split(","):
    name, _, size = part.partition(":")
    out[name.strip()] = int(size)
  return out


def _bytes_per_device(tree) -> int:
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def batch_spec(config, mesh):
  """Abstract global batch of train.py's ShapesWorld task layout, sharded over the batch axes."""
  import jax
  import jax.numpy as jnp

  from jaxmodels import sharding
  m, d = config.model, config.data
  b = d.batch_size
  und_size = m.und_encoder.image_size if m.get("und_encoder") else 32
  gen_size = m.gen_encoder.image_size if m.get("gen_encoder") else m.get("gen_image_size", 32)
  shapes = dict(und_image=((b, und_size, und_size, 3), jnp.float32),
                und_ids=((b, d.get("und_len", 48)), jnp.int32), und_mask=((b, d.get("und_len", 48)), jnp.int32),
                und_loss_mask=((b, d.get("und_len", 48)), jnp.int32),
                gen_image=((b, gen_size, gen_size, 3), jnp.float32),
                gen_ids=((b, d.get("gen_len", 16)), jnp.int32), gen_mask=((b, d.get("gen_len", 16)), jnp.int32))
  return {k: jax.ShapeDtypeStruct(s, t, sharding=sharding.batch_sharding(mesh, len(s)))
          for k, (s, t) in shapes.items()}


def plan(config, hbm_gb: float | None = None) -> dict:
  """Lowers and compiles train.py's step for `config.mesh` over the visible devices; returns bytes."""
  import jax
  from flax import nnx

  from jaxmodels import sharding
  from jaxmodels.trainer import make_train_step
  from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory
  mesh, rules = mesh_and_rules(config)
  make_state, lr = train_state_factory(config)
  abstract_ts = nnx.eval_shape(make_state)
  _, state = nnx.split(abstract_ts)
  shardings = sharding.state_shardings(state, mesh, rules)
  target = sharding.abstract_state(state, shardings)
  step_fn = make_train_step(abstract_ts, accum_steps=config.train.accum_steps, lr_schedule=lr,
                            state_shardings=shardings)
  batch = batch_spec(config, mesh)
  rng = jax.eval_shape(lambda: jax.random.key(0))
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
  if "fits" in r:
    lines.append(f"  fits {r['hbm_bytes'] / GiB:.0f} GiB HBM: {'yes' if r['fits'] else 'NO'}")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="configs/x.py[:arg]")
  p.add_argument("--devices", type=int, required=True, help="number of (fake) devices")
  p.add_argument("--mesh", default=None, help="e.g. data:1,fsdp:256,tensor:1 (default: the config's)")
  p.add_argument("--hbm_gb", type=float, default=None, help="HBM per device, GiB")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  a = p.parse_args(argv)
  if "jax" in sys.modules:
    raise SystemExit("error: tools/plan.py must set the device count before JAX starts (run it as a script)")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={a.devices}").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  from jaxmodels.errors import run_cli

  def go():
    config = load_config(a.config)
    if a.mesh:
      config.mesh = parse_mesh(a.mesh)
    result = plan(config, a.hbm_gb)
    result["config"] = a.config
    print(json.dumps(result) if a.json else format_table(result))
    return result

  run_cli(go)


if __name__ == "__main__":
  main()
