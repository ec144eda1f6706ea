"""Florence-VL 3B (spec §6): Florence-2-large-ft -> DBFusion (channel concat, mlp3x_gelu) -> 576 visual
tokens at 768×768 -> Phi-3.5-mini-instruct.

    python train.py --config=configs/florence_vl_3b.py --workdir=runs/florence_vl_3b            # stage 1
    python train.py --config=configs/florence_vl_3b.py:stage=2 --workdir=runs/florence_vl_3b_s2
    python train.py --config=configs/florence_vl_3b.py:tiny --workdir=/tmp/florence_vl_3b_tiny   # ShapesWorld
    python train.py --config=configs/florence_vl_3b.py:tiny,data=llava_json --workdir=/tmp/fvl_llava \
      --config.data.source.json_path=/data/llava.json --config.data.source.image_dir=/data/images

Arguments: tiny, stage=1|2, freeze_florence, data=llava_json|webdataset|array_record|tfds|shapes_world
(see configs/florence_vl_8b.py for the stage semantics, the data sources and the UNCONFIRMED
choices). Phi recipe (spec §6.2): stage 1 lr 1e-5, global batch 4096; stage 2 lr 9e-5, 3 epochs,
global batch 4096. The "phi3.5-mini" preset carries Phi-3.5's longrope scaling (short/long
factors, original context 4096; jaxmodels/presets.py), so released-checkpoint logits match transformers.
<image> uses id 32011, the first unused row of Phi-3.5's 32064-entry embedding (its tokenizer ends at
32010 = <|user|>; UNCONFIRMED choice, the release splices features at LLaVA's IMAGE_TOKEN_INDEX instead).
"""
from configs.florence_vl_8b import build
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, stage=1, freeze_florence=False, data="")
  steps = 4125 if a.stage == 1 else 7300     # ~16.9M / 4096; ~10M × 3 epochs / 4096 (UNCONFIRMED counts)
  c = build(llm="phi3.5-mini", image_token_id=32_011, tiny=a.tiny, stage=a.stage,
            freeze_florence=a.freeze_florence, lr=1e-5 if a.stage == 1 else 9e-5, steps=steps,
            data=a.data)
  c.data.batch_size = 8 if a.tiny else 4096
  return c
