"""MetaQuery-XL (spec §4): frozen Qwen2.5-VL-7B (Qwen2.5-7B LLM) + 256 vocabulary query tokens + 24-layer
Enc-Proj connector -> SANA-1.6B (512px), see `paper_common.metaquery`.

    python train.py --config=configs/metaquery_xl.py --workdir=runs/metaquery_xl
    python train.py --config=configs/metaquery_xl.py:tiny --workdir=/tmp/metaquery_xl_tiny

Understanding is Qwen2.5-VL-7B's own (spec §4.1: the frozen base MLLM): the `und_encoder` is its vision
tower (`presets.qwen2.5-vl-7b-vision`: window-attention ViT + 2×2 patch merger to the LLM width,
spliced without a projector, und_projector="none"; weights via config.init.hf.und_encoder=<Qwen2.5-VL-
7B-Instruct dir>), frozen with the LLM; it also reads the input images of editing / instruction
prompts. Images are read at a fixed 448×448 (16×16 = 256 tokens; Qwen2.5-VL itself takes native
resolutions), as in configs/blip3o_8b.py; :tiny uses a same-structure tiny tower.

Choices: the generation target is the latents of SANA's DC-AE f32c32, frozen in the model (`vae`;
512 px -> 16×16×32; :tiny: a same-structure tiny DC-AE, 32 px -> 4×4×8), computed from the batch's
images on the fly (`config.model.vae = None` trains on precomputed latents, batch["gen_latents"]);
the empty-caption CFG null is the MLLM pass over no caption tokens (the chat template is the data
pipeline's); the <|im_end|> after <eoi> is not appended.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False)
  return paper_common.metaquery(llm="qwen2.5-7b", tiny=a.tiny)
