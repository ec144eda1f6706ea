"""The paper-shaped unified models of the benchmark tools, on both sides (bench_unified.py: the train
step; bench_t2i.py: text-to-image end to end).

jaxmodels: `model_setup(kind, size_of(size))` builds the `UnifiedConfig` of BLIP3-o, MetaQuery,
BLIP3o-NEXT or LaTtE-Flow as `configs/paper_common.py` builds the paper's `:tiny` variant, with every
part resized to `SIZES[size]`, and returns the config's `optim.frozen` regexes with it.

PyTorch: `TorchUnified(cfg, frozen, device)` builds the same parts at the same sizes: each module
comes from our config through the `jaxmodels.hf` family's `config_to_hf` (so widths, depths, heads,
biases and norms agree), and the parts carry the jaxmodels parameter paths, so the same regexes
freeze the same parts on both sides. Where no transformers / diffusers class exists the part is
written here in torch.nn: our SimVQ quantiser, the connector's projection, and the LaTtE-Flow head
(`torch_latte`).
"""
from __future__ import annotations

import math
import re

from absl import app

# ------------------------------------------------------------------------------------------------
# jaxmodels: config.model dicts as the paper configs write them, resized
# ------------------------------------------------------------------------------------------------
# llm: (width, layers, heads, kv heads, FFN, vocab); dit: (width, layers); vit: (width, layers, heads)
# of the frozen target encoder (blip3o) / tokenizer (next); vae: DC-AE block widths (f8: 4 stages);
# tokens: the DiT's image tokens per example; queries: N; connector: MetaQuery's encoder depth.
SIZES = {
    "smoke": dict(llm=(64, 2, 4, 2, 128, 512), dit=(64, 1), vit=(32, 1, 2), vae=(8, 16, 32, 32),
                  latent_channels=8, prompt=8, queries=8, connector=1, codebook=64, tokens=16, batch=2),
    "small": dict(llm=(256, 4, 4, 2, 704, 8192), dit=(256, 4), vit=(256, 2, 4), vae=(16, 32, 64, 64),
                  latent_channels=16, prompt=32, queries=64, connector=2, codebook=1024, tokens=64, batch=4),
    "medium": dict(llm=(512, 8, 8, 2, 1408, 16384), dit=(512, 8), vit=(384, 4, 6), vae=(32, 64, 128, 128),
                   latent_channels=16, prompt=64, queries=64, connector=4, codebook=4096, tokens=256,
                   batch=4),
    # GPU rows: a Qwen2.5-1.5B-shaped LLM, ~1B DiT, CLIP-L-sized ViT, 1024 image tokens.
    "accelerator": dict(llm=(1536, 28, 12, 2, 8960, 151936), dit=(1536, 24), vit=(1024, 24, 16),
                        vae=(64, 128, 256, 512), latent_channels=32, prompt=128, queries=64, connector=24,
                        codebook=65536, tokens=1024, batch=16),
}
GEN_POOL = 2          # blip3o: a×a pooling of the target ViT's patch grid (the paper: 4 over 32×32)
VIT_PATCH = 4         # blip3o's target ViT patch; next's tokenizer sees the DC-AE's input at patch 8
VAE_FACTOR = 8        # the resized DC-AEs compress 8× (4 stages)


def size_of(size: str, tokens: int | None = None) -> dict:
  """SIZES[size] with `tokens` (a square) in place of its own, and the derived sides."""
  s = dict(SIZES[size])
  if tokens:
    s["tokens"] = tokens
  grid = int(round(math.sqrt(s["tokens"])))
  if grid * grid != s["tokens"]:
    raise app.UsageError(f"--tokens={s['tokens']}: image tokens must be a square")
  s["grid"] = grid
  return s


def _llm(preset: str, s: dict, vocab: int, dtype: str, attention: str) -> dict:
  d, layers, heads, kv, ffn, _ = s["llm"]
  return dict(preset=preset, vocab_size=vocab, hidden_size=d, intermediate_size=ffn, num_layers=layers,
              num_heads=heads, num_kv_heads=kv, head_dim=d // heads, max_position_embeddings=8192,
              scan_layers=True, remat="none", dtype=dtype, attention_impl=attention)


def _sana(s: dict, dtype: str, attention: str, **kw) -> dict:
  w, layers = s["dit"]
  return dict(type="sana", in_channels=s["latent_channels"], out_channels=s["latent_channels"],
              num_attention_heads=w // 32, attention_head_dim=32, num_layers=layers,
              num_cross_attention_heads=w // 32, cross_attention_head_dim=32, cross_attention_dim=w,
              caption_channels=w, mlp_ratio=2.5, sample_size=s["grid"], scan_layers=True, dtype=dtype,
              attention_impl=attention, **kw)


def _vae(s: dict, dtype: str) -> dict:
  from configs import paper_common
  return dict(paper_common.TINY_VAE, latent_channels=s["latent_channels"],
              encoder_block_out_channels=s["vae"], decoder_block_out_channels=s["vae"], dtype=dtype)


def _layer_stacks(d, remat: str, scan: bool):
  """Sets every layer stack's (`scan_layers` key) remat policy and scan choice in a model dict."""
  if isinstance(d, dict):
    if "scan_layers" in d:
      d.update(scan_layers=scan, remat=remat)
    for v in d.values():
      _layer_stacks(v, remat, scan)
  return d


def model_setup(kind: str, s: dict, dtype: str = "float32", attention: str = "einsum", *,
                remat: str = "none", scan: bool = True):
  """(UnifiedConfig, frozen regexes) of model `kind` at size dict `s` (`size_of`): the paper config's
  `:tiny` model dict (configs/paper_common.py) with every part resized. Every layer stack (LLM, ViTs,
  DiT) takes the `remat` policy and `scan` (a lax.scan over stacked layers, as the paper configs
  build them; False: unrolled)."""
  from configs import paper_common
  from jaxmodels.unified.build import unified_config
  d_llm, _, _, _, _, vocab = s["llm"]
  w, layers = s["dit"]
  vw, vl, vh = s["vit"]
  if kind == "blip3o":
    c = paper_common.blip3o(llm="qwen2.5-7b", caption_dim=d_llm, ffn="4864", tiny=True)
    side = s["grid"] * GEN_POOL * VIT_PATCH
    model = dict(
        c.model.to_dict(), llm=_llm("qwen2.5-7b", s, vocab, dtype, attention), und_encoder=None,
        gen_encoder=dict(model_type="clip_vision_model", hidden_size=vw, intermediate_size=4 * vw,
                         num_layers=vl, num_heads=vh, image_size=side, patch_size=VIT_PATCH,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, use_head=False, scan_layers=True,
                         dtype=dtype, attention_impl=attention),
        dit=dict(type="lumina", sample_size=s["grid"], patch_size=1, in_channels=vw, hidden_size=w,
                 num_layers=layers, num_heads=w // 64, num_kv_heads=w // 64, multiple_of=16,
                 learn_sigma=False, qk_norm=True, cross_attention_dim=d_llm, caption_projection=True,
                 use_pad_token=False, time_convention="sigma_1000", scan_layers=True, dtype=dtype,
                 attention_impl=attention),
        gen_pool=GEN_POOL, num_queries=s["queries"], image_token_id=vocab - 1)
  elif kind == "metaquery":
    c = paper_common.metaquery(llm="qwen2-0.5b", tiny=True)
    model = dict(
        c.model.to_dict(), llm=_llm("qwen2-0.5b", s, vocab, dtype, attention), und_encoder=None,
        dit=_sana(s, dtype, attention), vae=_vae(s, dtype), num_queries=s["queries"],
        connector_layers=s["connector"], latent_size=s["grid"], latent_channels=s["latent_channels"],
        gen_image_size=s["grid"] * VAE_FACTOR, image_token_id=vocab - 1)
  elif kind == "next":
    c = paper_common.blip3o_next(llm="qwen3-1.7b", tiny=True)
    side = s["grid"] * VAE_FACTOR
    model = c.model.to_dict()
    model.update(
        llm=_llm("qwen3-1.7b", s, vocab + s["codebook"] + 5, dtype, attention), image_vocab_offset=vocab,
        image_tokenizer=dict(model["image_tokenizer"], codebook_size=s["codebook"], scale=1, encoder=dict(
            preset="siglip-so400m-patch14-384", hidden_size=vw, intermediate_size=4 * vw, num_layers=vl,
            num_heads=vh, image_size=side, patch_size=VAE_FACTOR, use_head=False, scan_layers=True,
            dtype=dtype, attention_impl=attention)),
        dit=_sana(s, dtype, attention, qk_norm="rms_norm_across_heads"), vae=_vae(s, dtype),
        latent_size=s["grid"], latent_channels=s["latent_channels"], gen_image_size=side,
        image_token_id=vocab - 1)
  elif kind == "latte":        # text-to-image only (bench_t2i.py): K groups of the LLM's depth
    c = paper_common.latte_flow(tiny=True)
    llm_layers = s["llm"][1]
    model = dict(
        c.model.to_dict(), llm=_llm("qwen2-1.5b", s, vocab, dtype, attention), und_encoder=None,
        dit=dict(type="latte", hidden_size=w, num_layers=llm_layers, num_groups=4 if llm_layers % 4 == 0 else 2,
                 num_heads=w // 64, intermediate_size=s["llm"][4], context_dim=d_llm,
                 in_channels=s["latent_channels"], sample_size=s["grid"], dtype=dtype),
        vae=_vae(s, dtype), latent_size=s["grid"], latent_channels=s["latent_channels"],
        gen_image_size=s["grid"] * VAE_FACTOR, image_token_id=vocab - 1)
  else:
    raise app.UsageError(f"unknown model {kind!r} (known: blip3o, metaquery, next, latte)")
  return unified_config(_layer_stacks(model, remat, scan)), tuple(c.optim.frozen)


def image_side(cfg) -> int:
  """Side of the batch's gen_image: the target ViT's input (blip3o) or the DC-AE's."""
  return cfg.gen_encoder.image_size if cfg.gen_target == "gen_encoder" else cfg.output_image_size


def make_batch(cfg, s: dict) -> dict:
  """numpy batch {gen_ids [B, T], gen_mask [B, T], gen_image [B, S, S, 3] in [-1, 1]}: full prompts
  (no padding) with ids below the image placeholder."""
  import numpy as np
  rs = np.random.RandomState(0)
  b, t, side = s["batch"], s["prompt"], image_side(cfg)
  high = cfg.image_vocab_offset or cfg.llm.vocab_size
  return {"gen_ids": rs.randint(0, high - 1, (b, t)).astype(np.int32),
          "gen_mask": np.ones((b, t), np.int32),
          "gen_image": rs.uniform(-1, 1, (b, side, side, 3)).astype(np.float32)}


# ------------------------------------------------------------------------------------------------
# PyTorch: the same composition from transformers + diffusers modules
# ------------------------------------------------------------------------------------------------
def _hf_dict(d: dict) -> dict:
  """A `config_to_hf` dict without the keys a config class does not take."""
  return {k: v for k, v in d.items() if k not in ("architectures", "dtype", "scan_layers")}


def torch_llm(c):
  """The transformers `*ForCausalLM` model of our LLMConfig (through llm_family.config_to_hf): the
  base model at `.model`, the head at `.lm_head` (tied or not, as ours)."""
  import transformers

  from jaxmodels.hf import llm_family
  d = _hf_dict(llm_family.config_to_hf(c))
  cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  return transformers.AutoModelForCausalLM.from_config(cfg)


def torch_vision(c):
  """transformers CLIP / SigLIP vision tower of our VisionConfig."""
  import transformers

  from jaxmodels.hf import vision_family
  d = _hf_dict(vision_family.config_to_hf(c))
  d.pop("model_type")
  if c.is_clip:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**d))
  d.setdefault("vision_use_head", c.use_head)
  return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**d))


def torch_sana(c):
  import diffusers

  from jaxmodels.hf import sana_family
  return diffusers.SanaTransformer2DModel.from_config(_hf_dict(sana_family.config_to_hf(c)))


def torch_dcae(c):
  import diffusers

  from jaxmodels.hf import dcae_family
  return diffusers.AutoencoderDC.from_config(_hf_dict(dcae_family.config_to_hf(c)))


def torch_lumina(c):
  """diffusers LuminaNextDiT2DModel at our LuminaConfig's sizes; with `caption_projection` (BLIP3-o)
  its cross-attention reads the projected caption (the DiT's width), as NextDiT-CrossAttn does."""
  import diffusers
  import torch
  model = diffusers.LuminaNextDiT2DModel(
      sample_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
      hidden_size=c.hidden_size, num_layers=c.num_layers, num_attention_heads=c.num_heads,
      num_kv_heads=c.resolved_num_kv_heads, multiple_of=c.multiple_of,
      ffn_dim_multiplier=c.ffn_dim_multiplier, norm_eps=c.norm_eps, learn_sigma=c.learn_sigma,
      qk_norm=c.qk_norm, cross_attention_dim=c.hidden_size if c.caption_projection else c.cross_attention_dim)
  with torch.no_grad():
    model.pad_token.zero_()                      # torch.empty, unused by the forward
  return model


def _cond_projection(d_in: int, d_out: int):
  """Linear -> GELU(tanh) -> Linear -> RMSNorm: our CondProjection in torch.nn."""
  import torch
  nn = torch.nn
  return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(approximate="tanh"), nn.Linear(d_out, d_out),
                       nn.RMSNorm(d_out, eps=1e-5))


def torch_connector(cfg):
  """(encoder or None, projection) of our Connector kind: MetaQuery's "transformer" encoder as
  transformers Qwen2 decoder layers with causal masking off (head 64, SwiGLU 4·D, q/k/v biases),
  then the projection; "mlp_norm": the projection alone."""
  import transformers

  from jaxmodels.unified.config import dit_cond_dim
  d = cfg.llm.hidden_size
  encoder = None
  if cfg.connector == "transformer":
    heads = max(d // 64, 1)
    encoder = transformers.Qwen2Model(transformers.Qwen2Config(
        vocab_size=1, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=cfg.connector_layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=64, rope_theta=10000.0))
    for layer in encoder.layers:
      layer.self_attn.is_causal = False
  return encoder, _cond_projection(d, dit_cond_dim(cfg.dit))


def torch_simvq(tok):
  """Our SimVQTokenizer's parameters in torch (encoder, encode_task_layer, bottleneck, codebook,
  codebook_proj); `simvq_encode` quantises."""
  import torch
  nn = torch.nn
  m = nn.Module()
  d = tok.encoder.hidden_size
  m.encoder = torch_vision(tok.encoder)
  m.encode_task_layer = nn.Linear(d, d)
  m.bottleneck = nn.Linear(d, tok.code_dim)
  m.codebook = nn.Parameter(torch.randn(tok.codebook_size, tok.code_dim) * tok.code_dim ** -0.5)
  m.codebook_proj = nn.Linear(tok.code_dim, tok.code_dim, bias=False)
  return m


def simvq_encode(m, pixels):
  """pixels [B, 3, H, W] -> codes [B, n]: SigLIP hidden_states[-2] -> tanh(Linear) -> Linear -> the
  nearest L2-normalised code (scale 1)."""
  import torch.nn.functional as F
  h = m.encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
  z = F.normalize(m.bottleneck(m.encode_task_layer(h).tanh()), dim=-1)
  cb = F.normalize(m.codebook_proj(m.codebook), dim=-1)
  return (z @ cb.t()).argmax(-1)


def torch_latte(c):
  """Our LaTtE-Flow head (jaxmodels/unified/latte_flow.py) in torch.nn: no diffusers class has its
  layerwise groups or TCRA. Same parameters and products per layer: joint attention over [context
  projections of the LLM layer's states; image tokens] with the logits materialised (TCRA adds the
  gated previous layer's logits), adaLN-zero, SwiGLU; diffusers' timestep embedding."""
  import numpy as np
  import torch
  import torch.nn.functional as F
  from diffusers.models.embeddings import TimestepEmbedding, Timesteps

  from jaxmodels.flow.sana import sincos_pos_embed
  nn = torch.nn
  d, h, hd = c.hidden_size, c.num_heads, c.head_dim

  class Layer(nn.Module):
    def __init__(self):
      super().__init__()
      self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
      self.ctx_k, self.ctx_v = nn.Linear(c.context_dim, d), nn.Linear(c.context_dim, d)
      self.gate, self.up = (nn.Linear(d, c.intermediate_size, bias=False) for _ in range(2))
      self.down = nn.Linear(c.intermediate_size, d, bias=False)
      self.ada, self.tcra_gate = nn.Linear(d, 6 * d), nn.Linear(d, h)

    def forward(self, x, temb, ctx, keep, prev):
      b, n = x.shape[:2]
      b1, s1, g1, b2, s2, g2 = self.ada(F.silu(temb))[:, None].chunk(6, -1)
      y = F.layer_norm(x, (d,), eps=1e-6) * (1 + s1) + b1
      heads = lambda t: t.view(b, -1, h, hd).transpose(1, 2)  # noqa: E731
      q = heads(self.q(y))
      k = heads(torch.cat([self.ctx_k(ctx), self.k(y)], 1))
      v = heads(torch.cat([self.ctx_v(ctx), self.v(y)], 1))
      logits = (q @ k.transpose(-1, -2)).float() * hd ** -0.5
      if c.residual_attention and prev is not None:
        logits = logits + torch.tanh(self.tcra_gate(temb).float())[:, :, None, None] * prev
      probs = logits.masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min).softmax(-1)
      a = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, d)
      x = x + g1 * self.o(a)
      y = F.layer_norm(x, (d,), eps=1e-6) * (1 + s2) + b2
      return x + g2 * self.down(F.silu(self.gate(y)) * self.up(y)), logits

  class Latte(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed = nn.Linear(c.patch_size ** 2 * c.in_channels, d)
      self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
      self.time_embed = TimestepEmbedding(256, d)
      self.layers = nn.ModuleList(Layer() for _ in range(c.num_layers))
      self.norm_out, self.proj_out = nn.Linear(d, 2 * d), nn.Linear(d, c.patch_size ** 2 * c.in_channels)

    def forward(self, x, sigma, context, mask):
      """x [B, C, H, W] (patch 1), σ [B] (one value, as in sampling), context [B, L, T, Dc], mask
      [B, T] -> v [B, C, H, W]: the M layers of the group owning σ."""
      b, ch, hh, ww = x.shape
      tokens = self.patch_embed(x.flatten(2).transpose(1, 2))
      pos = np.asarray(sincos_pos_embed(d, hh, ww, c.sample_size, 1.0))
      tokens = tokens + torch.from_numpy(pos).to(tokens)
      temb = self.time_embed(self.time_proj(1000.0 * sigma).to(tokens.dtype))
      k = min(max(int((1.0 - float(sigma[0])) * c.num_groups), 0), c.num_groups - 1)
      k = k if c.noisiest_group == "first" else c.num_groups - 1 - k
      keep = torch.cat([mask.bool(), torch.ones(b, tokens.shape[1], dtype=torch.bool, device=x.device)], 1)
      prev = None
      for i in range(k * c.group_size, (k + 1) * c.group_size):
        tokens, prev = self.layers[i](tokens, temb, context[:, i].to(tokens.dtype), keep, prev)
      shift, scale = self.norm_out(F.silu(temb))[:, None].chunk(2, -1)
      out = self.proj_out(F.layer_norm(tokens, (d,), eps=1e-6) * (1 + scale) + shift)
      return out.transpose(1, 2).reshape(b, ch, hh, ww)

  return Latte()


def _torch_parts(cfg) -> dict:
  """The torch modules of a UnifiedConfig under the jaxmodels part names."""
  import torch
  c, parts = cfg, {}
  parts["llm"] = torch_llm(c.llm)       # with its head, as ours (unused without the CE of next)
  if c.image_tokenizer is not None:
    parts["image_tokenizer"] = torch_simvq(c.image_tokenizer)
  if c.queries == "learnable":                   # BLIP3-o initialises its queries with randn
    parts["queries"] = torch.nn.Parameter(torch.randn(c.num_queries, c.llm.hidden_size))
  elif c.queries == "vocab":                     # <img0..N-1>, <boi>, <eoi>
    parts["query_embed"] = torch.nn.Parameter(0.02 * torch.randn(c.num_queries + 2, c.llm.hidden_size))
  if c.gen_encoder is not None:
    parts["gen_encoder"] = torch_vision(c.gen_encoder)
  if c.vae is not None:
    parts["vae"] = torch_dcae(c.vae)
  if c.connector != "identity":
    encoder, proj = torch_connector(c)
    parts["connector"] = torch.nn.ModuleDict({"proj": proj, **({"encoder": encoder} if encoder else {})})
  kind = type(c.dit).__name__
  parts["dit"] = (torch_sana(c.dit) if kind == "SanaConfig" else torch_latte(c.dit) if kind == "LatteConfig"
                  else torch_lumina(c.dit))
  if kind == "LuminaConfig" and c.dit.caption_projection:
    from diffusers.models.embeddings import PixArtAlphaTextProjection
    parts["dit_caption_projection"] = PixArtAlphaTextProjection(c.dit.cross_attention_dim, c.dit.hidden_size)
  return parts


class TorchUnified:
  """The unified composition in PyTorch (see the module docstring). `module` holds every part under
  the jaxmodels names; the methods mirror `UnifiedModel`'s generation path at the same shapes:
  condition / null_condition, image_token_hidden, connect, target, velocity, loss."""

  def __init__(self, cfg, frozen, device: str):
    import torch
    self.cfg, self.device = cfg, device
    torch.manual_seed(0)
    m = torch.nn.Module()
    for name, part in _torch_parts(cfg).items():
      setattr(m, name, part)
    self.module = m.to(device)
    patterns = [re.compile(p) for p in frozen]
    # BLIP3-o's caption projection sits inside the DiT in jaxmodels (dit/caption_projection).
    path = lambda name: name.replace("dit_caption_projection.", "dit.caption_projection.").replace(".", "/")  # noqa: E731
    for name, p in self.module.named_parameters():
      p.requires_grad_(not any(r.fullmatch(path(name)) for r in patterns))
    self.rope = None
    if type(cfg.dit).__name__ == "LuminaConfig":
      from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
      self.rope = get_2d_rotary_pos_embed_lumina(cfg.dit.head_dim, 384, 384).to(device)

  def params(self) -> dict:
    """{"trainable", "frozen"} parameter counts."""
    trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in self.module.parameters()) - trainable}

  def _arange(self, n):
    import torch
    return torch.arange(n, device=self.device)

  # -------------------------------------------------------------- conditions
  def connect(self, h):
    """Connector: [B, N, D] -> [B, N, C] (identity for BLIP3-o)."""
    m = self.module
    if self.cfg.connector == "identity":
      return h
    if "encoder" in m.connector:
      enc = m.connector["encoder"]
      pos = self._arange(h.shape[1])[None].expand(h.shape[0], -1)
      rope = enc.rotary_emb(h, pos)
      for layer in enc.layers:
        h = layer(h, attention_mask=None, position_embeddings=rope, position_ids=pos)
    return m.connector["proj"](h)

  def _hidden(self, embeds, **kw):
    return self.module.llm.model(inputs_embeds=embeds, **kw)

  def condition(self, ids):
    """ids [B, T] (full prompts) -> DiT condition [B, N, C] (learnable / vocab queries), or the LLM's
    per-layer prompt states [B, L, T, D] (queries "none": LaTtE-Flow)."""
    import torch
    c, m = self.cfg, self.module
    b = ids.shape[0]
    prompt = m.llm.get_input_embeddings()(ids)
    if c.queries == "none":
      return torch.stack(self._hidden(prompt, output_hidden_states=True).hidden_states[1:], 1)
    n = c.num_queries
    if c.queries == "learnable":
      suffix = m.queries
    else:                                        # <boi> <img0..N-1> <eoi>
      suffix = m.query_embed[torch.cat([self._arange(1) + n, self._arange(n), self._arange(1) + n + 1])]
    embeds = torch.cat([prompt, suffix[None].expand(b, -1, -1).to(prompt.dtype)], 1)
    hidden = self._hidden(embeds).last_hidden_state
    hidden = hidden[:, -n:] if c.queries == "learnable" else hidden[:, -(n + 1):-1]
    return self.connect(hidden)

  def null_condition(self, cond):
    """CFG null [1, ...]: zeros, or the empty caption's condition (MetaQuery)."""
    import torch
    if self.cfg.cfg_null == "zeros" or self.cfg.queries == "none":
      return torch.zeros_like(cond[:1])
    return self.condition(torch.zeros((1, 0), dtype=torch.long, device=self.device))

  def image_token_hidden(self, ids, codes):
    """Teacher-forced pass over [prompt, <im_start>, <S>, codes] -> (sequence, final hidden states)."""
    import torch
    c, t = self.cfg, self.cfg.image_tokenizer
    o = c.image_vocab_offset + t.codebook_size
    prefix = torch.tensor([o + t.num_scale_tokens, o + t.scale - 1], device=self.device)
    seq = torch.cat([ids, prefix[None].expand(ids.shape[0], -1), codes + c.image_vocab_offset], 1)
    return seq, self.module.llm.model(input_ids=seq).last_hidden_state

  # -------------------------------------------------------------- flow
  def target(self, pixels):
    """Clean flow target [B, C, h, w]: pooled ViT features (BLIP3-o) or scaled DC-AE latents."""
    import torch.nn.functional as F
    c, m = self.cfg, self.module
    if c.gen_target == "gen_encoder":
      h = m.gen_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
      g = int(round(h.shape[1] ** 0.5))
      return F.avg_pool2d(h.transpose(1, 2).reshape(h.shape[0], -1, g, g), c.gen_pool)
    return m.vae.encode(pixels).latent * c.vae.scaling_factor

  def velocity(self, x, sigma, cond):
    """x [B, C, h, w], σ [B], cond [B, N, C'] (LaTtE: [B, L, T, D]) -> v [B, C, h, w]."""
    import torch
    c, m = self.cfg, self.module
    if type(c.dit).__name__ == "LatteConfig":
      return m.dit(x, sigma, cond, torch.ones(cond.shape[:1] + cond.shape[2:3], device=self.device))
    mask = torch.ones(cond.shape[:2], dtype=torch.long, device=self.device)
    if self.rope is not None:
      if hasattr(m, "dit_caption_projection"):
        cond = m.dit_caption_projection(cond)
      return m.dit(x, 1000.0 * sigma, cond, mask, self.rope, cross_attention_kwargs={}).sample
    return m.dit(x, cond, 1000.0 * sigma * c.dit.timestep_scale, encoder_attention_mask=mask).sample

  def loss(self, batch):
    """`UnifiedModel.loss` of a generation batch {gen_ids [B, T], gen_image [B, 3, H, W]}."""
    import torch
    import torch.nn.functional as F
    c = self.cfg
    ids, pixels = batch["gen_ids"], batch["gen_image"]
    b = ids.shape[0]
    with torch.no_grad():
      x0 = self.target(pixels).float()
    ce = None
    if c.queries == "image_tokens":
      with torch.no_grad():
        codes = simvq_encode(self.module.image_tokenizer, pixels)
      seq, hidden = self.image_token_hidden(ids, codes)
      logits = self.module.llm.lm_head(hidden[:, :-1]).float()
      weight = torch.ones_like(seq[:, 1:], dtype=torch.float32)
      weight[:, ids.shape[1] - 1:ids.shape[1] + 1] = 0.0     # <im_start>, <S> are given
      nll = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], reduction="none")
      ce = (nll * weight).sum() / weight.sum()
      cond = self.connect(hidden[:, -(codes.shape[1] + 1):])
    else:
      cond = self.condition(ids)
    drop = torch.rand(b, device=self.device) < c.cond_dropout
    cond = torch.where(drop[:, None, None], self.null_condition(cond).to(cond.dtype), cond)
    noise = torch.randn_like(x0)
    sigma = torch.rand(b, device=self.device)
    s = sigma[:, None, None, None]
    v = self.velocity((1 - s) * x0 + s * noise, sigma, cond).float()
    loss = F.mse_loss(v, noise - x0)
    return loss if ce is None else ce + c.flow_weight * loss


def torch_batch(batch: dict, device: str) -> dict:
  """A numpy generation batch (`make_batch`) as torch tensors, images NCHW."""
  import torch
  return {"gen_ids": torch.tensor(batch["gen_ids"], dtype=torch.long, device=device),
          "gen_image": torch.tensor(batch["gen_image"], device=device).permute(0, 3, 1, 2).contiguous()}


def state_tensors(module, opt, batch) -> list:
  """The persistent tensors of a torch train step: parameters, batch, optimizer state."""
  out = list(module.parameters()) + list(batch.values())
  for st in opt.state.values():
    out += [v for v in st.values() if hasattr(v, "numel")]
  return out


def torch_memory_bytes(fn, tensors) -> int:
  """Peak bytes of one call of `fn`: on a GPU PyTorch's max_memory_allocated; on the CPU the bytes of
  `tensors` (persistent state: parameters, optimizer state, batch) plus the allocator's peak during
  the call (torch.profiler with profile_memory; its count starts at zero)."""
  import json
  import os
  import tempfile

  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return int(torch.cuda.max_memory_allocated())
  persistent = sum(t.numel() * t.element_size() for t in tensors)
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    fn()
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
      events = json.load(f)["traceEvents"]
  peak = max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)
  return int(persistent + max(peak, 0))
