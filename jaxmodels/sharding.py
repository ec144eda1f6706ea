"""Meshes, logical-axis rules and helpers to place models and batches on them.

Parameters carry logical axis names (see `jaxmodels.layers.linear.param`); an *ordered* rules table
maps each logical name to mesh axes. For each array dimension the first rule whose mesh axes are all
still unused (and divide the dimension) wins, so e.g. `embed -> fsdp` shards the embedding dim of a
kernel while `mlp -> tensor` shards its hidden dim. Unlisted names are replicated.

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = create_sharded(lambda: LLM(cfg, rngs=nnx.Rngs(0)), mesh)   # params born sharded
    with use_mesh(mesh):                                               # activations constrained
      logits = jax.jit(lambda m, x: m(x))(model, ids)
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("jaxmodels_rules", default=DEFAULT_RULES)


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> jax.sharding.Mesh:
  """Mesh over `devices` (default all) with axes (data, fsdp, tensor); one size may be -1 (fill)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": 1, "fsdp": -1, "tensor": 1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = [shape.get(a, 1) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int] | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules: Rules | None = None) -> P:
  """Maps logical axis names to a PartitionSpec (mesh axes used at most once, sizes must divide)."""
  if axes is None:
    return P()
  rules = _RULES.get() if rules is None else rules
  table: dict[str, list] = {}
  for name, target in rules:
    table.setdefault(name, []).append(target)
  used: set[str] = set()
  out = []
  for dim, name in enumerate(axes):
    choice = None
    for target in table.get(name, []) if name is not None else []:
      if target is None:
        break
      t = (target,) if isinstance(target, str) else tuple(target)
      if mesh is not None:
        t = tuple(a for a in t if a in mesh.shape and mesh.shape[a] > 1)
      if not t or used & set(t):
        continue
      if mesh is not None and shape is not None and shape[dim] % math.prod(mesh.shape[a] for a in t):
        continue
      choice = t if len(t) > 1 else t[0]
      used.update(t)
      break
    out.append(choice)
  return P(*out)


def _axes_of(x) -> tuple | None:
  meta = x.get_metadata() if isinstance(x, nnx.Variable) else {}
  return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def rules_for_path(path: Sequence[Any], rules) -> Rules | None:
  """Per-tower rules (MaxDiffusion style): `rules` may map a tower name to its own table, e.g.
  {"dit": [...], "default": [...]}; the first path element that names a tower picks its table."""
  if rules is None or not isinstance(rules, Mapping):
    return rules
  for part in path:
    if str(part) in rules:
      return rules[str(part)]
  return rules.get("default")


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules=None):
  """`state` with every array replaced by its NamedSharding (from the Variable's logical axes).

  `rules`: one table for everything, or a {tower: table, "default": table} mapping (`rules_for_path`).
  The result has the state's pytree structure, so it serves as jit in/out_shardings and, zipped with
  the state, as an abstract restore target (see `abstract_state`).
  """
  def one(path, v):
    value = v.get_value() if isinstance(v, nnx.Variable) else v
    table = rules_for_path([getattr(k, "key", getattr(k, "name", k)) for k in path], rules)
    spec = NamedSharding(mesh, logical_to_spec(_axes_of(v), getattr(value, "shape", None), mesh, table))
    return v.replace(spec) if isinstance(v, nnx.Variable) else spec
  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_state(state, shardings):
  """ShapeDtypeStructs of `state` carrying `shardings` (a `state_shardings` result)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def create_sharded(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                   rules: Rules | None = None) -> nnx.Module:
  """Builds `make_model()` with every parameter created directly in its sharded layout."""
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  def init():
    return nnx.split(make_model())[1]

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def shard_module(model: nnx.Module, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> nnx.Module:
  """Moves an existing model's parameters to their sharded layout (e.g. after loading on host)."""
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, state_shardings(state, mesh, rules))
  return nnx.merge(graphdef, state)


def activation_rules(rules) -> Rules | None:
  """The table activations and batches follow: `rules` itself, or for per-tower tables
  ({tower: table, "default": table}) the "default" one (DEFAULT_RULES without it): activations and
  batches cross towers, so they take the model-wide table."""
  if rules is None or not isinstance(rules, Mapping):
    return None if rules is None else tuple(rules)
  default = rules.get("default")
  return DEFAULT_RULES if default is None else tuple(default)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules=None):
  """Sets the mesh (for activation constraints) and, optionally, the logical rules: one table, or
  per-tower tables whose "default" one the activations follow (`activation_rules`)."""
  table = activation_rules(rules)
  token = _RULES.set(table) if table is not None else None
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    if token is not None:
      _RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or x.ndim != len(axes):
    return x
  spec = logical_to_spec(axes, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, rules=None) -> NamedSharding:
  """Sharding for a batch array [B, ...]: B over the axes of `act_batch` in `rules` (one table or
  per-tower tables, see `activation_rules`; None: the table `use_mesh` set, else DEFAULT_RULES), the
  rest replicated."""
  spec = logical_to_spec(("act_batch",) + (None,) * (ndim - 1), None, mesh, activation_rules(rules))
  return NamedSharding(mesh, spec)


def param_count(model_or_state) -> int:
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
