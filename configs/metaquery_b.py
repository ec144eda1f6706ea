"""MetaQuery-B (spec §4): frozen LLaVA-OneVision-Qwen2-0.5B (Qwen2-0.5B LLM) + 256 vocabulary query tokens + 24-layer
Enc-Proj connector -> SANA-1.6B (512px), see `paper_common.metaquery`.

    python train.py --config=configs/metaquery_b.py --workdir=runs/metaquery_b
    python train.py --config=configs/metaquery_b.py:tiny --workdir=/tmp/metaquery_b_tiny

Choices: the MLLM's vision tower is not modelled (a SigLIP-so400m tower stands in for understanding,
which stays frozen); the generation target is the latents of SANA's DC-AE f32c32, frozen in the
model (`vae`; 512 px -> 16×16×32; :tiny: a same-structure tiny DC-AE, 32 px -> 4×4×8), computed from
the batch's images on the fly (`config.model.vae = None` trains on precomputed latents,
batch["gen_latents"]);
the empty-caption CFG null is the MLLM pass over no caption tokens (the chat template is the data
pipeline's); the <|im_end|> after <eoi> is not appended.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False)
  return paper_common.metaquery(llm="qwen2-0.5b", tiny=a.tiny)
