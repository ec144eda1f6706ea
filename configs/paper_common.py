"""Builders shared by the paper configs: full-size parts from published presets, and `tiny` variants
with the same structure (same part types and wiring, CPU-sized widths) for tests and laptops."""
from __future__ import annotations

import ml_collections

from jaxmodels.config_utils import base_config

# Tiny variants scan their layers: one compiled block per tower keeps CPU compile times short.
TINY_LLM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, max_position_embeddings=512, scan_layers=True)
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32, patch_size=4,
                scan_layers=True)
TINY_DIT = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, in_channels=32, ffn_hidden_size=128,
                scan_layers=True)
FROZEN_BACKBONE = ["llm/.*", "und_encoder/.*", "und_projector/.*", "gen_encoder/.*"]


def _trainer(c, *, lr, warmup, steps, frozen=None, ema_decay=None):
  c.optim.lr, c.optim.warmup_steps, c.optim.frozen = lr, warmup, frozen
  c.optim.min_lr_ratio = 0.1
  c.train.total_steps = steps
  c.train.ema_decay = ema_decay
  return c


def blip3o(*, llm: str, caption_dim: int, ffn: str, tiny: bool) -> ml_collections.ConfigDict:
  """BLIP3-o stage 2 (spec §2): frozen backbone, 64 queries + NextDiT over 8×8 EVA-CLIP features."""
  c = base_config()
  if tiny:
    llm_cfg = dict(preset=llm, **TINY_LLM)
    gen = dict(preset="eva-clip-e-14-plus", **{**TINY_VIT, "patch_size": 2})   # 16×16 grid -> 4×4
    und = dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False)
    dit = dict(type="lumina", preset="blip3o", ffn=ffn, caption_dim=TINY_LLM["hidden_size"], **TINY_DIT)
    queries = 8
  else:
    llm_cfg = dict(preset=llm, scan_layers=True, remat="full", dtype="bfloat16")
    gen = dict(preset="eva-clip-e-14-plus", scan_layers=True, dtype="bfloat16")
    und = dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16")
    dit = dict(type="lumina", preset="blip3o", ffn=ffn, caption_dim=caption_dim, remat="full")
    queries = 64
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, gen_encoder=gen, dit=dit, gen_target="gen_encoder", gen_pool=4,
      num_queries=queries, connector="identity", cond_dropout=0.1, und_weight=0.0, gen_weight=1.0,
      image_token_id=TINY_LLM["vocab_size"] - 1 if tiny else 151667))
  # lr 1e-4 cosine to a 1e-5 floor, warmup ratio 0.003 (spec §2.5); backbone frozen (sequential stage).
  return _trainer(c, lr=1e-4, warmup=3 if tiny else 450, steps=1000 if tiny else 150_000,
                  frozen=FROZEN_BACKBONE, ema_decay=None)


def pisces(*, tiny: bool) -> ml_collections.ConfigDict:
  """Pisces (spec §1): decoupled understanding / generation encoders, one LLM, joint losses."""
  c = base_config()
  if tiny:
    llm_cfg = dict(preset="llama3.1-8b", **TINY_LLM, rope_scaling=None)
    und = dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False)
    gen = dict(preset="clip-vit-l-14-336", **{**TINY_VIT, "patch_size": 2})
    dit = dict(type="lumina", preset="blip3o", caption_dim=TINY_LLM["hidden_size"], **TINY_DIT)
    queries, image_token = 8, TINY_LLM["vocab_size"] - 1
  else:
    llm_cfg = dict(preset="llama3.1-8b", scan_layers=True, remat="full", dtype="bfloat16")
    und = dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16")
    gen = dict(preset="clip-vit-l-14-336", image_size=448, scan_layers=True, dtype="bfloat16")
    dit = dict(type="lumina", preset="blip3o", caption_dim=4096, in_channels=1024, remat="full")
    queries, image_token = 64, 128_011    # a reserved Llama-3 special token as <image>
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, gen_encoder=gen, dit=dit, gen_target="gen_encoder", gen_pool=4,
      num_queries=queries, connector="identity", cond_dropout=0.1, und_weight=1.0, gen_weight=1.0,
      image_token_id=image_token))
  frozen = ["gen_encoder/.*"]   # the generation encoder defines the target space: kept frozen
  return _trainer(c, lr=2e-5 if not tiny else 1e-3, warmup=3 if tiny else 2000,
                  steps=1000 if tiny else 100_000, frozen=frozen)
