"""BLIP3o-NEXT 3B (spec §3): Qwen3 + discrete image tokens (65,536 codes, 3 scale tokens, <im_start>/
<im_end>) + TA-Tok-style SimVQ tokenizer; joint CE (text + image tokens) + flow loss on the
teacher-forced states of <S0> + 729 image tokens -> connector -> SANA 1.5 1.6B (1024px).

    python train.py --config=configs/blip3o_next_3b.py --workdir=runs/blip3o_next
    python train.py --config=configs/blip3o_next_3b.py:tiny --workdir=/tmp/blip3o_next_tiny

UNCONFIRMED (spec §3.1), chosen here: the Qwen3 size is Qwen3-1.7B (1.7B + SANA 1.6B ≈ 3B; the repo
scripts default to Qwen3-0.6B: `:llm=qwen3-0.6b`); the tokenizer code dimension is 64; the SigLIP2
encoder is modelled by our SigLIP-so400m/14-384 preset (same shape); targets are precomputed DC-AE
latents (batch["gen_latents"]); new embeddings use the default init, not the mean of the old rows.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, llm="qwen3-1.7b")
  return paper_common.blip3o_next(llm=a.llm, tiny=a.tiny)
