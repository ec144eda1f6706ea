"""Lumina-Next DiTs: diffusers `LuminaNextDiT2DModel` and BLIP3-o's `NextDiTCrossAttn`.

* diffusers directories (config.json with `_class_name: "LuminaNextDiT2DModel"`, weights in
  `diffusion_pytorch_model.safetensors`): the upstream model; exported back the same way so that
  `diffusers.LuminaNextDiT2DModel.from_pretrained` loads it.
* `model_type: "nextdit-crossattn"` (BLIP3-o's transformers `PretrainedConfig`): the DiT with a
  caption projection. Its tensors are those of the wrapped diffusers-style model under `model.`
  (un-prefixed names are accepted too). Its config does not record the SwiGLU width; we read
  `ffn_hidden_size` when present (our exports write it) and otherwise use the diffusers rule
  (4864 for width 1792), which a `ffn_hidden_size=` override to `from_pretrained` can change.
"""
from __future__ import annotations

from jaxmodels.errors import ConfigError
from jaxmodels.flow.lumina import LuminaConfig, LuminaNextDiT, lumina_ffn_hidden_size
from jaxmodels.hf.keymap import KeyMap, Source

DIFFUSERS_CLASS = "LuminaNextDiT2DModel"
BLIP3O_TYPE = "nextdit-crossattn"
MODEL_TYPES = (DIFFUSERS_CLASS, BLIP3O_TYPE)

_DIFFUSERS_DEFAULTS = dict(  # LuminaNextDiT2DModel.__init__ defaults (diffusers 0.42)
    sample_size=128, patch_size=2, in_channels=4, hidden_size=2304, num_layers=32,
    num_attention_heads=32, num_kv_heads=None, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5,
    learn_sigma=True, qk_norm=True, cross_attention_dim=2048, scaling_factor=1.0)
_BLIP3O_DEFAULTS = dict(  # NextDiTCrossAttnConfig defaults
    input_size=8, patch_size=1, in_channels=1792, dim=1792, n_layers=24, n_heads=28, n_kv_heads=28,
    multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5, latent_embedding_size=3584,
    learn_sigma=False, qk_norm=True)


def _is_blip3o(d: dict) -> bool:
  return d.get("model_type") == BLIP3O_TYPE


def config_from_hf(d: dict, **overrides) -> LuminaConfig:
  if _is_blip3o(d):
    v = {**_BLIP3O_DEFAULTS, **{k: d[k] for k in _BLIP3O_DEFAULTS if k in d}}
    kw = dict(sample_size=v["input_size"], patch_size=v["patch_size"], in_channels=v["in_channels"],
              hidden_size=v["dim"], num_layers=v["n_layers"], num_heads=v["n_heads"],
              num_kv_heads=v["n_kv_heads"], multiple_of=v["multiple_of"],
              ffn_dim_multiplier=v["ffn_dim_multiplier"], ffn_hidden_size=d.get("ffn_hidden_size"),
              norm_eps=v["norm_eps"], learn_sigma=bool(v["learn_sigma"]), qk_norm=bool(v["qk_norm"]),
              cross_attention_dim=v["latent_embedding_size"], caption_projection=True,
              use_pad_token=False, time_convention="sigma_1000")
  else:
    v = {**_DIFFUSERS_DEFAULTS, **{k: d[k] for k in _DIFFUSERS_DEFAULTS if k in d}}
    kw = dict(sample_size=v["sample_size"], patch_size=v["patch_size"], in_channels=v["in_channels"],
              hidden_size=v["hidden_size"], num_layers=v["num_layers"],
              num_heads=v["num_attention_heads"], num_kv_heads=v["num_kv_heads"],
              multiple_of=v["multiple_of"], ffn_dim_multiplier=v["ffn_dim_multiplier"],
              norm_eps=v["norm_eps"], learn_sigma=bool(v["learn_sigma"]), qk_norm=bool(v["qk_norm"]),
              cross_attention_dim=v["cross_attention_dim"], scaling_factor=float(v["scaling_factor"]),
              caption_projection=False, use_pad_token=True, time_convention="data_level")
  kw.update(overrides)
  return LuminaConfig(**kw)


def _rule_width(c: LuminaConfig) -> int:
  return lumina_ffn_hidden_size(c.hidden_size, c.multiple_of, c.ffn_dim_multiplier)


def config_to_hf(c: LuminaConfig) -> dict:
  if c.caption_projection:
    if c.use_pad_token:
      raise ConfigError("LuminaConfig.use_pad_token=True cannot be expressed by BLIP3-o's "
                        f"{BLIP3O_TYPE!r} (it has no pad_token)")
    return dict(model_type=BLIP3O_TYPE, architectures=["NextDiTCrossAttn"], input_size=c.sample_size,
                patch_size=c.patch_size, in_channels=c.in_channels, dim=c.hidden_size,
                n_layers=c.num_layers, n_heads=c.num_heads, n_kv_heads=c.resolved_num_kv_heads,
                multiple_of=c.multiple_of, ffn_dim_multiplier=c.ffn_dim_multiplier, norm_eps=c.norm_eps,
                latent_embedding_size=c.cross_attention_dim, learn_sigma=c.learn_sigma,
                qk_norm=c.qk_norm, ffn_hidden_size=c.resolved_ffn_hidden_size, dtype=c.param_dtype)
  if not c.use_pad_token:
    raise ConfigError(f"LuminaConfig.use_pad_token=False cannot be expressed by diffusers' "
                      f"{DIFFUSERS_CLASS} (it always has pad_token)")
  if c.resolved_ffn_hidden_size != _rule_width(c):
    raise ConfigError(f"LuminaConfig.ffn_hidden_size={c.ffn_hidden_size} cannot be expressed by "
                      f"diffusers' {DIFFUSERS_CLASS}, which derives {_rule_width(c)} from hidden_size, "
                      "multiple_of and ffn_dim_multiplier")
  if c.rope_theta != 10000.0:
    raise ConfigError(f"LuminaConfig.rope_theta={c.rope_theta} cannot be expressed by diffusers "
                      "(its Lumina RoPE base is fixed at 10000)")
  return dict(_class_name=DIFFUSERS_CLASS, _diffusers_version="0.42.1", sample_size=c.sample_size,
              patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=c.hidden_size,
              num_layers=c.num_layers, num_attention_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
              multiple_of=c.multiple_of, ffn_dim_multiplier=c.ffn_dim_multiplier, norm_eps=c.norm_eps,
              learn_sigma=c.learn_sigma, qk_norm=c.qk_norm, cross_attention_dim=c.cross_attention_dim,
              scaling_factor=c.scaling_factor)


def _linear(m: KeyMap, ours: tuple, hf: str, *, bias: bool = False, n_in: int = 1):
  m[ours + ("kernel",)] = Source(hf + ".weight", "linear", n_in=n_in)
  if bias:
    m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def _norm(m: KeyMap, ours: tuple, hf: str, *, bias: bool = False):
  m[ours + ("scale",)] = Source(hf + ".weight", "bias")   # "bias" kind: flat [N·H] <-> [N, H]
  if bias:
    m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def keymap(c: LuminaConfig) -> KeyMap:
  pre = "model." if c.caption_projection else ""
  m: KeyMap = {}
  _linear(m, ("patch_embedder",), pre + "patch_embedder.proj", bias=True, n_in=3)
  if c.use_pad_token:
    m[("pad_token",)] = Source(pre + "pad_token")
  if c.caption_projection:
    for name in ("linear_1", "linear_2"):
      _linear(m, ("caption_projection", name), pre + f"caption_projection.{name}", bias=True)
  tce, hf_tce = ("time_caption_embed",), pre + "time_caption_embed."
  for name in ("linear_1", "linear_2"):
    _linear(m, tce + ("timestep_embedder", name), hf_tce + f"timestep_embedder.{name}", bias=True)
  _norm(m, tce + ("caption_norm",), hf_tce + "caption_embedder.0", bias=True)
  _linear(m, tce + ("caption_linear",), hf_tce + "caption_embedder.1", bias=True)
  for i in range(c.num_layers):
    ours, hf = ("layers", "blocks", i), f"{pre}layers.{i}."
    m[ours + ("gate",)] = Source(hf + "gate")
    for attn in ("attn1", "attn2"):
      for p in ("q", "k", "v"):
        _linear(m, ours + (attn, f"to_{p}"), f"{hf}{attn}.to_{p}")
      if c.qk_norm:
        _norm(m, ours + (attn, "norm_q"), f"{hf}{attn}.norm_q", bias=True)
        _norm(m, ours + (attn, "norm_k"), f"{hf}{attn}.norm_k", bias=True)
    _linear(m, ours + ("attn2", "to_out"), hf + "attn2.to_out.0", n_in=2)
    for ours_name, hf_name in (("gate", "linear_1"), ("up", "linear_3"), ("down", "linear_2")):
      _linear(m, ours + ("feed_forward", ours_name), f"{hf}feed_forward.{hf_name}")
    _linear(m, ours + ("norm1", "linear"), hf + "norm1.linear", bias=True)
    _norm(m, ours + ("norm1", "norm"), hf + "norm1.norm")
    for name in ("ffn_norm1", "norm2", "ffn_norm2", "norm1_context"):
      _norm(m, ours + (name,), hf + name)
  for name in ("linear_1", "linear_2"):
    _linear(m, ("norm_out", name), pre + f"norm_out.{name}", bias=True)
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("lumina", MODEL_TYPES, LuminaNextDiT, config_from_hf, config_to_hf, keymap,
                weights_name="diffusion_pytorch_model.safetensors", key_aliases=(("model.", ""),))


FAMILY = _family()
