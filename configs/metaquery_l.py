"""MetaQuery-L (spec §4): frozen Qwen2.5-VL-3B (Qwen2.5-3B LLM) + 256 vocabulary query tokens + 24-layer
Enc-Proj connector -> SANA-1.6B (512px), see `paper_common.metaquery`.

    python train.py --config=configs/metaquery_l.py --workdir=runs/metaquery_l
    python train.py --config=configs/metaquery_l.py:tiny --workdir=/tmp/metaquery_l_tiny

Choices: the MLLM's vision tower is not modelled (a SigLIP-so400m tower stands in for understanding,
which stays frozen); the generation target is precomputed DC-AE f32c32 latents (batch["gen_latents"]);
the empty-caption CFG null is the MLLM pass over no caption tokens (the chat template is the data
pipeline's); the <|im_end|> after <eoi> is not appended.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False)
  return paper_common.metaquery(llm="qwen2.5-3b", tiny=a.tiny)
