"""Meshes, logical-axis rules and helpers to place models and batches on them.

Parameters carry logical axis names (see `jaxmodels.layers.linear.param`); an *ordered* rules table
maps each logical name to mesh axes. For each array dimension the first rule whose mesh axes are all
still unused (and divide the dimension) wins, so e.g. `embed -> fsdp` shards the embedding dim of a
kernel while `mlp -> tensor` shards its hidden dim. Unlisted names are replicated.

The mesh axes are data: any names, e.g. a `sequence` axis for long sequences (with a rule
`act_length -> sequence`) or a `dcn_data` axis over several slices. `data`, `fsdp` and `tensor` are
always present (size 1 unless given), so `DEFAULT_RULES` apply to every mesh.

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

from jaxmodels.errors import ConfigError

# Axes every mesh has (size 1 unless given): the default rules name them.
STANDARD_AXES = ("data", "fsdp", "tensor")
# A mesh axis named dcn_<name> spans slices (multi-slice data parallelism over the data-center
# network): on devices in several slices the mesh is built with `create_hybrid_device_mesh`.
DCN_PREFIX = "dcn_"

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
    # Convolution kernels (DC-AE, SANA's GLUMBConv, SDXL, conv stems): channels over fsdp like `embed`
    # (input channels first, else output channels: at most one of the two per kernel).
    ("conv_in", "fsdp"),
    ("conv_out", "fsdp"),
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("jaxmodels_rules", default=DEFAULT_RULES)


def mesh_axis_order(names: Sequence[str]) -> tuple[str, ...]:
  """The conventional order (outermost first) of mesh axes given without one (a config's
  `config.mesh` is a ConfigDict, which keeps its keys sorted): the `dcn_*` axes (slowest links),
  then data, fsdp, any other names alphabetically, tensor last (innermost: the fastest links, for
  the axis with the most communication). Each `dcn_*` axis sits among the others by its base name."""
  def rank(name: str):
    dcn = name.startswith(DCN_PREFIX)
    base = name[len(DCN_PREFIX):] if dcn else name
    return (not dcn, {"data": 0, "fsdp": 1, "tensor": 3}.get(base, 2), base)
  return tuple(sorted(names, key=rank))


def mesh_shape(shape: Mapping[str, int] | Sequence[tuple[str, int]] | None,
               num_devices: int) -> dict[str, int]:
  """The ordered {axis: size} a mesh over `num_devices` devices gets (see `make_mesh`): the -1 filled,
  the standard axes added with size 1.

  Raises:
    ValueError: for a bad name or size, more than one -1, or sizes that do not multiply to the
      device count.
  """
  if shape is None:
    shape = {"data": 1, "fsdp": -1, "tensor": 1}
  explicit = not hasattr(shape, "items")          # (name, size) pairs; else a mapping or ConfigDict
  pairs = [tuple(p) for p in shape] if explicit else list(shape.items())
  names = [n for n, _ in pairs]
  for name, size in pairs:
    if not isinstance(name, str) or not name.isidentifier():
      raise ValueError(f"mesh axis name {name!r}: expected an identifier such as 'data' or 'sequence'")
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"mesh axis {name}={size!r}: expected an integer >= 1, or -1 (fill)")
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axes {names} name an axis twice")
  sizes = dict(pairs)
  missing = [a for a in STANDARD_AXES if a not in sizes]
  order = missing + names if explicit else list(mesh_axis_order(names + missing))
  out = {a: sizes.get(a, 1) for a in order}
  fill = [a for a, s in out.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(pairs)}")
  known = math.prod(s for s in out.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide into mesh {dict(pairs)}")
    out[fill[0]] = num_devices // known
  if math.prod(out.values()) != num_devices:
    raise ValueError(f"mesh {out} needs {math.prod(out.values())} devices, have {num_devices}")
  return out


def _slice_count(devices) -> int:
  """How many slices `devices` span (1 where devices carry no `slice_index`, e.g. CPU, GPU)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(shape: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
              devices=None) -> jax.sharding.Mesh:
  """Mesh over `devices` (default all) with the axes of `shape`; one size may be -1 (fill).

  `shape`: {axis: size} (axes in the order of `mesh_axis_order`), or (axis, size) pairs in the
  order wanted (outermost first); None: data=1, fsdp=all, tensor=1. The standard axes
  (`STANDARD_AXES`) are added with size 1 when not given. `dcn_*` axes on devices in several slices
  take the slices (`jax.experimental.mesh_utils.create_hybrid_device_mesh`; their sizes must
  multiply to the slice count), the other axes the devices within a slice; on one slice (or CPU)
  a `dcn_*` axis is a plain axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(shape, len(devices))
  names, sizes = tuple(shape), tuple(shape.values())
  axis_types = (jax.sharding.AxisType.Auto,) * len(names)
  dcn = [n.startswith(DCN_PREFIX) for n in names]
  slices = _slice_count(devices)
  if any(dcn) and slices > 1:
    from jax.experimental import mesh_utils
    dcn_shape = [s if d else 1 for s, d in zip(sizes, dcn)]
    if math.prod(dcn_shape) != slices:
      raise ValueError(f"mesh {shape}: the {DCN_PREFIX}* axes multiply to {math.prod(dcn_shape)}, "
                       f"but the devices are in {slices} slices")
    ici_shape = [1 if d else s for s, d in zip(sizes, dcn)]
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    return jax.sharding.Mesh(grid, names, axis_types=axis_types)
  return jax.make_mesh(sizes, names, devices=devices, axis_types=axis_types)


def default_rules(axis_names: Sequence[str]) -> Rules:
  """The rules for a mesh with `axis_names` when the config gives none: `DEFAULT_RULES`, with the
  batch also split over every `dcn_*` axis (data parallel across slices, parameters replicated)."""
  dcn = tuple(a for a in axis_names if a.startswith(DCN_PREFIX))
  if not dcn:
    return DEFAULT_RULES
  return tuple((name, dcn + ((target,) if isinstance(target, str) else tuple(target or ())))
               if name == "act_batch" else (name, target) for name, target in DEFAULT_RULES)


def _table(rules, where: str) -> Rules:
  """One rules table as (logical, None | axis | (axes...)) pairs; a ConfigError names a bad rule."""
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ConfigError(f"{where}={rules!r}: expected a list of (logical name, mesh axes) rules")
  out = []
  for i, rule in enumerate(rules):
    ok = isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
    target = rule[1] if ok else None
    if ok and isinstance(target, Sequence) and not isinstance(target, str):
      target = tuple(target)
      ok = all(isinstance(a, str) for a in target)
    if not ok or not isinstance(rule[0], str) or not (target is None or isinstance(target, (str, tuple))):
      raise ConfigError(f"{where}[{i}]={rule!r}: expected (logical name, mesh axis | [mesh axes] | None)")
    out.append((rule[0], target))
  return tuple(out)


def check_rules(rules: Rules, axis_names: Sequence[str], where: str = "config.sharding_rules") -> None:
  """Raises a ConfigError naming the first rule of `rules` that names a mesh axis not in `axis_names`."""
  for i, (name, target) in enumerate(rules):
    for axis in (target,) if isinstance(target, str) else target or ():
      if axis not in axis_names:
        raise ConfigError(f"{where}[{i}]=({name!r}, {target!r}) names mesh axis {axis!r}, which the mesh "
                          f"does not have (axes: {', '.join(axis_names)}; add it to config.mesh)")


def rules_from_config(rules, axis_names: Sequence[str], where: str = "config.sharding_rules"):
  """`config.sharding_rules` checked against the mesh's axes: None/empty -> the mesh's
  `default_rules` (None where those are `DEFAULT_RULES`); one table [(logical, mesh axes), ...] ->
  a tuple of pairs; per-tower tables {tower: table, "default": table} -> a dict of them (a missing
  "default" is the mesh's default rules). A ConfigError names a malformed rule or one naming a mesh
  axis that does not exist."""
  if not rules:
    table = default_rules(axis_names)
    return None if table is DEFAULT_RULES else table
  if isinstance(rules, Mapping) or hasattr(rules, "items"):
    out = {str(tower): _table(t, f"{where}.{tower}") for tower, t in rules.items()}
    for tower, t in out.items():
      check_rules(t, axis_names, f"{where}.{tower}")
    out.setdefault("default", default_rules(axis_names))
    return out
  table = _table(rules, where)
  check_rules(table, axis_names, where)
  return table


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
