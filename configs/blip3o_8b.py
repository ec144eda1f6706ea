"""BLIP3-o 8B (spec §2): frozen Qwen2.5-VL-7B (LLM + vision tower) + 64 learnable queries -> Lumina-style
NextDiT-CrossAttn (1.36B with FFN 4864) generating 8×8 pooled EVA-CLIP-E features by flow matching;
sequential training (stage 2): the backbone and encoders are frozen, only queries + DiT train.

    python train.py --config=configs/blip3o_8b.py --workdir=runs/blip3o_8b
    python train.py --config=configs/blip3o_8b.py:tiny --workdir=/tmp/blip3o_tiny     # CPU-sized

Understanding is Qwen2.5-VL-7B's own (BLIP3-o reuses Qwen2.5-VL-Instruct as is, spec §2.1): the
`und_encoder` is its vision tower (`presets.qwen2.5-vl-7b-vision`: window-attention ViT + 2×2 patch
merger, 676.6M parameters incl. the merger; weights via config.init.hf.und_encoder=<Qwen2.5-VL-7B-Instruct
dir>), whose merged tokens already have the LLM width (3584) and are spliced without a projector
(und_projector="none"), as in Qwen2.5-VL. Images go from the model's [-1, 1] to the Qwen processor's
normalisation ((x + 1) / 2, then OpenAI-CLIP mean/std) inside the model.

Input size: Qwen2.5-VL reads images at native resolution (its processor only rounds sides to multiples
of 28 within min/max pixel bounds); the spec gives no fixed BLIP3-o understanding resolution, and this
composition needs a fixed square side. We choose 448×448 -> 16×16 = 256 image tokens: a size the Qwen
processor leaves unchanged (a multiple of 28 inside its pixel bounds), and the EVA-CLIP target encoder's
input side (spec §2.3), so one image size serves understanding and generation. Override with
--config.model.und_encoder.image_size (any multiple of 28).

The tiny variant (`:tiny`) uses a same-structure tiny Qwen tower (2 blocks: one window-attention, one
full-attention; patch 4, merge 2, 32 px -> 16 tokens) and a same-structure tiny EVA-CLIP. The target
encoder is EVA-CLIP-E/14-plus itself (`presets.eva-clip-e-14-plus`, jaxmodels/vision/eva_clip.py:
post-norm blocks, q/v biases, 4.35B parameters, frozen): official weights load with
`jaxmodels.hf.eva_clip_family.load_eva_clip`, and once written by `jaxmodels.hf.save_pretrained` go in
through --config.init.hf.gen_encoder=<dir>. The DiT FFN width is 4864 (see `blip3o_dit_config`; `arg`
ffn=7168 switches).
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, ffn="4864")
  return paper_common.blip3o(llm="qwen2.5-7b", caption_dim=3584, ffn=a.ffn, tiny=a.tiny)
