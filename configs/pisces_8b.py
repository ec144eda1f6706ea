"""Pisces 8B (spec §1): decoupled encoders — SigLIP-so400m/14-384 for understanding (729 tokens, its
own projector) and a CLIP-style generation encoder pooled 4×4 (64 tokens) — one shared Llama-3.1-8B,
joint training of the understanding and generation losses.

    python train.py --config=configs/pisces_8b.py --workdir=runs/pisces_8b
    python train.py --config=configs/pisces_8b.py:tiny --workdir=/tmp/pisces_tiny

UNCONFIRMED in the spec, chosen here (all config fields): the generation encoder is CLIP ViT-L/14 run
at 448 px (32×32 patches -> 4×4 pooling -> 64 tokens, by analogy with BLIP3-o by the same authors);
the generation target is those pooled features, produced by a Lumina-style DiT (BLIP3-o's
NextDiT-CrossAttn shape with in/out channels = 1024) conditioned on 64 query states through the DiT's
caption projection; classifier-free guidance uses a zero null condition.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False)
  return paper_common.pisces(tiny=a.tiny)
