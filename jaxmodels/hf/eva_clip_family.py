"""EVA-CLIP vision towers from the official EVA-CLIP state dict in safetensors, and our own export layout.

Official tensor names (the `visual.` part of an EVA-CLIP checkpoint, e.g. EVA02_CLIP_E_psz14_plus_s9B;
any prefix in front of them is found and dropped) -> `EvaClipVisionTransformer` parameters:

  patch_embed.proj.weight [D, 3, p, p], .bias   patch_embed.kernel [p, p, 3, D], .bias
  cls_token [1, 1, D]                           class_embedding
  pos_embed [1, 1 + g², D]                      position_embedding (another grid is resized, below)
  blocks.{i}.norm1 / norm2 .weight, .bias       layers.blocks.{i}.norm1 / norm2 .scale, .bias
  blocks.{i}.attn.qkv.weight [3·D, D]           attn.q / k / v kernels (rows 0:D, D:2D, 2D:3D)
  blocks.{i}.attn.q_bias, .v_bias [D]           attn.q.bias, attn.v.bias             (qkv_bias="qv")
  blocks.{i}.attn.qkv.bias [3·D]                attn.q / k / v biases                (qkv_bias="qkv")
  blocks.{i}.attn.proj .weight, .bias           attn.o
  blocks.{i}.mlp.fc1 / fc2 .weight, .bias       mlp.fc1 / fc2
  not read: norm, head (the final LayerNorm and CLIP projection), the text tower, logit_scale

    tower = load_eva_clip("/ckpts/EVA02_CLIP_E_psz14_plus_s9B.safetensors")  # EVA-CLIP-E/14-plus, 448 px
    tower = load_eva_clip(path, presets.eva_clip_preset("eva-clip-e-14-plus", image_size=224))
    jaxmodels.hf.save_pretrained(tower, "/ckpts/eva-clip-e-14-plus-448")     # config.json + safetensors
    tower = jaxmodels.hf.from_pretrained("/ckpts/eva-clip-e-14-plus-448")    # e.g. config.init.hf.gen_encoder

`load_eva_clip` reads a `.safetensors` file or a directory (model.safetensors or a sharded index;
its config.json when there is one and no config is given). It picks the q/k/v bias layout from the file
(`EvaClipConfig.qkv_bias`) and resizes a position table of another grid to the tower's as the official
`resize_eva_pos_embed` does: bicubic (torch's, A = −0.75, align_corners=False), class position kept.
Tensors of EVA-CLIP variants the tower does not model (rotary positions, sub-LN, SwiGLU, layer scale,
relative position bias) are refused by name. PyTorch pickles (.pt / .pth / .bin) are refused, never
unpickled. Exported checkpoints hold the official names without a prefix (what BLIP3-o's
`EVAVisionTransformer.load_state_dict` takes) and a config.json of model_type "eva_clip_vision" whose
other keys are the official vision_cfg names (plus intermediate_size, qkv_bias as a layout).
"""
from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.hf import keymap as keymap_lib
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.hf.safetensors_io import SafetensorsReader, read_config
from jaxmodels.hf.vision_family import _layer_norm, _mlp
from jaxmodels.vision.eva_clip import QKV_BIAS, EvaClipConfig, EvaClipVisionTransformer

MODEL_TYPES = ("eva_clip_vision",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
CONVERT_HINT = ("convert it to safetensors outside jaxmodels, e.g. python -c \"import torch, "
                "safetensors.torch as st; sd = torch.load('IN.pt', map_location='cpu', weights_only=True); "
                "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items()}, "
                "'OUT.safetensors')\"")
_ANCHOR = "patch_embed.proj.weight"
# Tensor-name pieces of EVA-CLIP variants this tower does not model -> what they are.
_UNSUPPORTED_TENSORS = (
    ("rope.", "rotary position embedding (EVA02-B/L)"),
    ("attn.q_proj.", "separate q/k/v projections (sub-LN, EVA02-B/L)"),
    ("inner_attn_ln", "sub-LN inside attention (EVA02-B/L)"),
    ("ffn_ln", "sub-LN inside the MLP (EVA02-B/L)"),
    ("mlp.w1", "a SwiGLU MLP"),
    ("mlp.w3", "a SwiGLU MLP"),
    ("gamma_1", "layer scale"),
    ("relative_position_bias", "relative position bias"),
)
# Official vision_cfg keys a config.json may set that the tower does not model, and their off values.
_UNSUPPORTED_CONFIG = {"rope": (False, None), "naiveswiglu": (False, None), "subln": (False, None),
                       "ls_init_value": (None, 0, 0.0), "use_rel_pos_bias": (False, None)}


def config_from_hf(d: dict, **overrides) -> EvaClipConfig:
  """Our config.json, or an official model config's `vision_cfg` (with model_type added), ->
  EvaClipConfig. Official CLIPVisionCfg defaults for omitted keys; width and layers are required."""
  v = dict(d.get("vision_cfg") or d)
  for key, off in _UNSUPPORTED_CONFIG.items():
    if v.get(key) not in off:
      raise ConfigError(f"config.json: {key}={v[key]!r} is not supported by the EVA-CLIP tower")
  width = int(v["width"])
  bias = v.get("qkv_bias", True)
  if not isinstance(bias, str):
    bias = "qv" if bias else "none"            # the official boolean: q_bias + v_bias, or none
  kw = dict(hidden_size=width, num_layers=int(v["layers"]), num_heads=width // int(v.get("head_width", 64)),
            intermediate_size=int(v.get("intermediate_size") or int(width * float(v.get("mlp_ratio", 4.0)))),
            image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)),
            layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)), hidden_act=v.get("hidden_act", "gelu"),
            postnorm=bool(v.get("postnorm", False)), qkv_bias=bias)
  kw.update(overrides)
  return EvaClipConfig(**kw)


def config_to_hf(c: EvaClipConfig) -> dict:
  return dict(model_type=MODEL_TYPES[0], width=c.hidden_size, layers=c.num_layers, head_width=c.head_dim,
              mlp_ratio=c.intermediate_size / c.hidden_size, intermediate_size=c.intermediate_size,
              image_size=c.image_size, patch_size=c.patch_size, postnorm=c.postnorm, qkv_bias=c.qkv_bias,
              layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act, dtype=c.param_dtype)


def keymap(c: EvaClipConfig, prefix: str = "") -> KeyMap:
  """Our parameter paths (loop layout) -> official tensor names, each under `prefix`."""
  p, d = prefix, c.hidden_size
  m: KeyMap = {
      ("patch_embed", "kernel"): Source(p + _ANCHOR, "conv"),
      ("patch_embed", "bias"): Source(p + "patch_embed.proj.bias", "bias"),
      ("class_embedding",): Source(p + "cls_token"),
      ("position_embedding",): Source(p + "pos_embed"),
  }
  for i in range(c.num_layers):
    ours, hf = ("layers", "blocks", i), f"{p}blocks.{i}."
    _layer_norm(m, ours + ("norm1",), hf + "norm1")
    _layer_norm(m, ours + ("norm2",), hf + "norm2")
    for j, name in enumerate(("q", "k", "v")):
      rows = (j * d, (j + 1) * d)
      m[ours + ("attn", name, "kernel")] = Source(hf + "attn.qkv.weight", "linear", rows=rows)
      if c.qkv_bias == "qkv":
        m[ours + ("attn", name, "bias")] = Source(hf + "attn.qkv.bias", "bias", rows=rows)
    if c.qkv_bias == "qv":
      m[ours + ("attn", "q", "bias")] = Source(hf + "attn.q_bias", "bias")
      m[ours + ("attn", "v", "bias")] = Source(hf + "attn.v_bias", "bias")
    m[ours + ("attn", "o", "kernel")] = Source(hf + "attn.proj.weight", "linear", n_in=2)
    m[ours + ("attn", "o", "bias")] = Source(hf + "attn.proj.bias", "bias")
    _mlp(m, ours + ("mlp",), hf + "mlp.")
  return m


def bicubic_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of torch's `interpolate(mode="bicubic", align_corners=False)` along
  one axis (no antialias): cubic convolution with A = −0.75 around (o + ½)·in/out − ½, the four taps'
  indices clamped to the edges."""
  a = -0.75
  w = np.zeros((size_out, size_in), np.float64)
  for o in range(size_out):
    x = (o + 0.5) * size_in / size_out - 0.5
    base = math.floor(x)
    t = x - base
    taps = (((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
    for k, tap in enumerate(taps):
      w[o, min(max(base - 1 + k, 0), size_in - 1)] += tap
  return w


def resize_positions(table: np.ndarray, grid: int) -> np.ndarray:
  """An official position table [1, 1 + g0², D] -> [1, 1 + grid², D] (float32): the class position
  as it is, the g0×g0 patch positions resized bicubically (`bicubic_resize_matrix` on both axes)."""
  n, d = table.shape[-2] - 1, table.shape[-1]
  g0 = math.isqrt(n)
  patches = np.asarray(table, np.float64).reshape(-1, d)[1:].reshape(g0, g0, d)
  r = bicubic_resize_matrix(g0, grid)
  resized = np.einsum("ij,jkd,lk->ild", r, patches, r).reshape(grid * grid, d)
  cls = np.asarray(table, np.float64).reshape(-1, d)[:1]
  return np.concatenate([cls, resized]).astype(np.float32)[None]


class _FileReader(SafetensorsReader):
  """A SafetensorsReader over one .safetensors file (an official state dict needs no directory)."""

  @staticmethod
  def _find_files(path: str) -> list[str]:
    return [path]


class _PositionsResized:
  """A reader whose position table (tensor `key`) comes resized to a grid×grid patch grid."""

  def __init__(self, reader, key: str, grid: int):
    self.reader, self.key, self.grid, self.path = reader, key, grid, reader.path

  def __contains__(self, key: str) -> bool:
    return key in self.reader

  def file_of(self, key: str) -> str:
    return self.reader.file_of(key)

  def get(self, key: str) -> np.ndarray:
    value = self.reader.get(key)
    if key != self.key or value.ndim not in (2, 3) or value.shape[-2] == self.grid ** 2 + 1:
      return value
    n = value.shape[-2] - 1
    if n < 1 or math.isqrt(n) ** 2 != n:
      raise CheckpointFormatError(f"{self.reader.file_of(key)}: tensor {key!r} has shape {tuple(value.shape)}: "
                                  f"not a class position plus a square grid of patch positions")
    return resize_positions(value, self.grid)


def _refuse_pickle(file: str) -> None:
  raise CheckpointFormatError(f"{file}: a PyTorch pickle, which jaxmodels never unpickles; {CONVERT_HINT}")


def open_weights(path: str):
  """A reader over `path`: one .safetensors file, or a checkpoint directory. Pickles are refused."""
  if os.path.isdir(path):
    names = sorted(os.listdir(path))
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles and not any(".safetensors" in n for n in names):
      _refuse_pickle(os.path.join(path, pickles[0]))
    return SafetensorsReader(path)
  if path.endswith(PICKLE_SUFFIXES):
    _refuse_pickle(path)
  if not os.path.isfile(path):
    raise CheckpointFormatError(f"{path}: no such file or directory")
  with open(path, "rb") as f:
    start = f.read(9)               # safetensors: a u64 header length, then the JSON header's "{"
  if start[8:9] != b"{" and (start.startswith(b"PK\x03\x04") or start[:1] == b"\x80"):
    _refuse_pickle(path)            # a torch.save zip archive, or a bare pickle (protocol 2+)
  return _FileReader(path)


def _tower_prefix(reader) -> str:
  """The name prefix of the vision tower's tensors ("visual." in a full EVA-CLIP checkpoint, "" in a
  tower saved alone), found from its patch embedding."""
  found = sorted({k[:-len(_ANCHOR)] for k in reader.keys() if k.endswith(_ANCHOR)})
  if len(found) != 1:
    what = "no tensor" if not found else f"several tensors ({', '.join(f + _ANCHOR for f in found)})"
    raise CheckpointFormatError(f"{reader.path}: {what} named [prefix]{_ANCHOR}: cannot tell which EVA-CLIP "
                                f"vision tower to load")
  return found[0]


def _check_supported(reader, prefix: str) -> None:
  for key in reader.keys():
    if not key.startswith(prefix):
      continue
    for piece, what in _UNSUPPORTED_TENSORS:
      if piece in key[len(prefix):]:
        raise CheckpointFormatError(f"{reader.file_of(key)}: tensor {key!r}: {what} is not modelled by "
                                    f"the EVA-CLIP tower (EVA-CLIP-E/14-plus has none)")


def _bias_layout(reader, prefix: str) -> str:
  """"qkv" for one fused attn.qkv.bias, "qv" for the official q_bias / v_bias, else "none"."""
  block = prefix + "blocks.0.attn."
  if block + "qkv.bias" in reader:
    return "qkv"
  return "qv" if block + "q_bias" in reader else "none"


def load_eva_clip(path: str, config: EvaClipConfig | None = None, *, dtype=jnp.float32,
                  qkv_bias: str = "auto", resize_pos_embed: bool = True,
                  **overrides) -> EvaClipVisionTransformer:
  """An EVA-CLIP vision tower from official-named tensors in safetensors (module docstring).

  `config` gives the tower's shape (default: a directory's config.json, else `EvaClipConfig()`,
  EVA-CLIP-E/14-plus at 448 px); every tensor must fit it, else a CheckpointFormatError names the
  file, the tensor and both shapes. `qkv_bias`: "auto" (from the file) or a layout of `QKV_BIAS`.
  `resize_pos_embed=False` makes a position table of another grid an error instead. `dtype` sets the
  parameter and compute dtype; `overrides` set other config fields (e.g. scan_layers=True)."""
  reader = open_weights(path)
  prefix = _tower_prefix(reader)
  _check_supported(reader, prefix)
  if config is None:
    has_config = os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))
    config = config_from_hf(read_config(path)) if has_config else EvaClipConfig()
  if qkv_bias != "auto" and qkv_bias not in QKV_BIAS:
    raise ConfigError(f"load_eva_clip: qkv_bias must be 'auto' or one of {', '.join(QKV_BIAS)}, got {qkv_bias!r}")
  name = jnp.dtype(dtype).name
  try:
    config = config.replace(qkv_bias=_bias_layout(reader, prefix) if qkv_bias == "auto" else qkv_bias,
                            dtype=name, param_dtype=name, **overrides)
  except TypeError as e:
    raise ConfigError(f"load_eva_clip({path!r}): {e}") from None
  source = _PositionsResized(reader, prefix + "pos_embed", config.grid_size) if resize_pos_embed else reader
  return keymap_lib.load_into(lambda: EvaClipVisionTransformer(config, rngs=nnx.Rngs(0)),
                              keymap(config, prefix), source, jnp.dtype(dtype))


def _family():
  from jaxmodels.hf import Family
  return Family("eva_clip", MODEL_TYPES, EvaClipVisionTransformer, config_from_hf, config_to_hf, keymap,
                key_aliases=(("", "visual."),))


FAMILY = _family()
