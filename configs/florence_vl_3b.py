"""Florence-VL 3B (spec §6): Florence-2-large-ft -> DBFusion (channel concat, mlp3x_gelu) -> 576 visual
tokens at 768×768 -> Phi-3.5-mini-instruct.

    python train.py --config=configs/florence_vl_3b.py --workdir=runs/florence_vl_3b            # stage 1
    python train.py --config=configs/florence_vl_3b.py:stage=2 --workdir=runs/florence_vl_3b_s2
    python train.py --config=configs/florence_vl_3b.py:tiny --workdir=/tmp/florence_vl_3b_tiny

Arguments: tiny, stage=1|2, freeze_florence (see configs/florence_vl_8b.py for the stage semantics and
the UNCONFIRMED choices). Phi recipe (spec §6.2): stage 1 lr 1e-5, global batch 4096; stage 2 lr 9e-5,
3 epochs, global batch 4096. The "phi3.5-mini" preset lacks Phi-3.5's longrope scaling (plain RoPE,
see jaxmodels/presets.py): shapes and parameter counts are exact, released-checkpoint logits are not.
<image> uses id 32010, an unused slot of Phi-3.5's 32064-entry vocabulary (UNCONFIRMED choice).
"""
from configs.florence_vl_8b import build
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, stage=1, freeze_florence=False)
  steps = 4125 if a.stage == 1 else 7300     # ~16.9M / 4096; ~10M × 3 epochs / 4096 (UNCONFIRMED counts)
  c = build(llm="phi3.5-mini", image_token_id=32_010, tiny=a.tiny, stage=a.stage,
            freeze_florence=a.freeze_florence, lr=1e-5 if a.stage == 1 else 9e-5, steps=steps)
  c.data.batch_size = 8 if a.tiny else 4096
  return c
