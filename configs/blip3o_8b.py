"""BLIP3-o 8B (spec §2): frozen Qwen2.5-VL-7B language model + 64 learnable queries -> Lumina-style
NextDiT-CrossAttn (1.36B with FFN 4864) generating 8×8 pooled EVA-CLIP-E features by flow matching;
sequential training (stage 2): the backbone and encoders are frozen, only queries + DiT train.

    python train.py --config=configs/blip3o_8b.py --workdir=runs/blip3o_8b
    python train.py --config=configs/blip3o_8b.py:tiny --workdir=/tmp/blip3o_tiny     # CPU-sized

Choices: Qwen2.5-VL's own vision tower is not modelled; understanding in this composition uses a
SigLIP-so400m tower as a stand-in (BLIP3-o reuses Qwen2.5-VL as is, so it never trains). The EVA-CLIP
target encoder is an EVA-CLIP-style ViT of the published size (`presets.eva-clip-e-14-plus`). The DiT
FFN width is 4864 (see `blip3o_dit_config`; `arg` ffn=7168 switches).
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, ffn="4864")
  return paper_common.blip3o(llm="qwen2.5-7b", caption_dim=3584, ffn=a.ffn, tiny=a.tiny)
