"""Generic HF-tensor <-> NNX-parameter mapping, shared by every model family.

A family describes its checkpoint layout as a `KeyMap`: for each of our parameter paths in the
*loop* layout (layer blocks at `(..., "blocks", i, ...)`), the HF tensor name and how to convert it.
Scanned stacks (`BlockStack(scan=True)`, params [L, ...]) are handled here by stacking per-layer
tensors, so families never think about scan.

Conversions (HF -> ours; the inverse is used by save):
  "linear": torch Linear weight [out, in] -> kernel [*in_shape, *out_shape]  (n_in = len(in_shape))
  "conv":   Conv2d weight [O, I, kh, kw] -> [kh, kw, I, O]
  "copy":   same values reshaped to our shape (norms, embeddings)
  "bias":   a 1-D HF bias reshaped to ours (e.g. [N*H] -> [N, H])
A `rows=(start, stop)` slice reads part of a fused HF tensor (Phi-3's qkv_proj, gate_up_proj).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.layers.block import BlockStack

Path = tuple


@dataclasses.dataclass(frozen=True)
class Source:
  key: str
  kind: str = "copy"           # "linear" | "conv" | "copy" | "bias"
  n_in: int = 1                # for "linear": leading input dims of our kernel
  rows: tuple[int, int] | None = None


KeyMap = dict[Path, Source]


def to_ours(hf: np.ndarray, src: Source, shape: tuple[int, ...]) -> np.ndarray:
  if src.rows is not None:
    hf = hf[src.rows[0]:src.rows[1]]
  if src.kind == "linear":
    if hf.ndim != 2 or hf.size != math.prod(shape):
      return None
    return np.asarray(hf).T.reshape(shape)
  if src.kind == "conv":
    out = np.transpose(np.asarray(hf), (2, 3, 1, 0))
    return out if out.shape == tuple(shape) else None
  if hf.size != math.prod(shape):
    return None
  return np.asarray(hf).reshape(shape)


def to_hf(ours: np.ndarray, src: Source) -> np.ndarray:
  if src.kind == "linear":
    n_in = math.prod(ours.shape[:src.n_in])
    return ours.reshape(n_in, -1).T
  if src.kind == "conv":
    return np.transpose(ours, (3, 2, 0, 1))
  if src.kind == "bias":
    return ours.reshape(-1)
  return ours


def _scan_stacks(model: nnx.Module) -> dict[Path, int]:
  """Path of every scanned block stack's `blocks` -> number of layers."""
  return {tuple(path) + ("blocks",): node.num_layers for path, node in nnx.iter_graph(model)
          if isinstance(node, BlockStack) and node.scan}


def _expand(path: Path, stacks: dict[Path, int]) -> tuple[Path, int] | None:
  for prefix, n in stacks.items():
    if path[:len(prefix)] == prefix:
      return prefix, n
  return None


def load_into(make_model: Callable[[], nnx.Module], keymap: KeyMap, reader, dtype,
              key_aliases: tuple[tuple[str, str], ...] = ()) -> nnx.Module:
  """Builds the model abstractly, fills every parameter from `reader`, returns the real model.

  `key_aliases` lists (prefix, replacement) pairs tried when a tensor name is absent, e.g.
  ("vision_model.", "") for towers saved on their own by transformers 5.
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, state = nnx.split(abstract)
  stacks = _scan_stacks(abstract)

  def fetch(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if path not in keymap:
      raise CheckpointFormatError(f"no checkpoint mapping for parameter {'.'.join(map(str, path))}")
    src = keymap[path]
    key = src.key
    for prefix, repl in key_aliases:
      alias = repl + key[len(prefix):]
      if key not in reader and key.startswith(prefix) and alias in reader:
        key = alias
    if key not in reader:
      raise CheckpointFormatError(
          f"{reader.path}: tensor {key!r} not found in the checkpoint (needed for parameter "
          f"{'.'.join(map(str, path))})")
    hf = reader.get(key)
    out = to_ours(hf, src, shape)
    if out is None:
      where = reader.file_of(key) if hasattr(reader, "file_of") else reader.path
      raise CheckpointFormatError(
          f"{where}: tensor {key!r} has shape {tuple(hf.shape)}"
          f"{'' if src.rows is None else f' (rows {src.rows[0]}:{src.rows[1]})'}, which does not fit "
          f"parameter {'.'.join(map(str, path))} of shape {tuple(shape)}")
    return out

  leaves = []
  for path, var in nnx.to_flat_state(state):
    shape = tuple(var.get_value().shape)
    stack = _expand(path, stacks)
    if stack is None:
      value = fetch(path, shape)
    else:
      prefix, n = stack
      value = np.stack([fetch(prefix + (i,) + path[len(prefix):], shape[1:]) for i in range(n)])
    leaves.append((path, var.replace(jnp.asarray(value, dtype=dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def export(model: nnx.Module, keymap: KeyMap, dtype=None) -> dict[str, np.ndarray]:
  """Our parameters as HF-named tensors (fused tensors re-assembled from their row slices)."""
  stacks = _scan_stacks(model)
  parts: dict[str, list] = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(jax.device_get(var.get_value()))
    if dtype is not None:
      value = value.astype(dtype)
    stack = _expand(path, stacks)
    items = [(path, value)] if stack is None else [
        (stack[0] + (i,) + path[len(stack[0]):], value[i]) for i in range(stack[1])]
    for p, v in items:
      if p not in keymap:
        raise CheckpointFormatError(f"no checkpoint mapping for parameter {'.'.join(map(str, p))}")
      src = keymap[p]
      parts.setdefault(src.key, []).append((src.rows, to_hf(v, src)))
  out = {}
  for key, pieces in parts.items():
    if len(pieces) == 1 and pieces[0][0] is None:
      out[key] = pieces[0][1]
    else:
      out[key] = np.concatenate([v for _, v in sorted(pieces, key=lambda p: p[0][0])], axis=0)
  return out
