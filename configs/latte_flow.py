"""LaTtE-Flow (spec §5): frozen Qwen2-VL-2B-sized LLM (qwen2-1.5b preset, 28 layers) + a 28-layer
generation stack split into K=4 groups of 7 layerwise timestep experts, with timestep-conditioned
residual attention (exact form in `jaxmodels/unified/latte_flow.py`; `dit.residual_attention=False`
turns it off).

    python train.py --config=configs/latte_flow.py --workdir=runs/latte_flow
    python train.py --config=configs/latte_flow.py:tiny --workdir=/tmp/latte_tiny

UNCONFIRMED (spec §5), chosen here: the "Couple" variant (frozen LLM, parallel trainable path of the
LLM's width 1536 / 12 heads / SwiGLU 8960); equal-width σ intervals with the noisiest one on the first
group; shared patch embedding and output head; 16×16×32 latents of SANA's DC-AE f32c32 at 512 px,
frozen in the model (`vae`; :tiny: a tiny DC-AE, 32 px -> 4×4×8; `config.model.vae = None` trains on
precomputed latents, batch["gen_latents"]); zero-null CFG.
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False)
  return paper_common.latte_flow(tiny=a.tiny)
