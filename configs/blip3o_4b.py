"""BLIP3-o 4B (spec §2): as blip3o_8b.py with Qwen2.5-VL-3B (LLM hidden 2048), so the DiT's caption
projection reads 2048-d query states. The und_encoder is Qwen2.5-VL-3B's vision tower
(`presets.qwen2.5-vl-3b-vision`: the 7B tower's shape with a merger to 2048), at 448×448 -> 256 tokens
without a projector, for the reasons given in blip3o_8b.py.

    python train.py --config=configs/blip3o_4b.py --workdir=runs/blip3o_4b
    python train.py --config=configs/blip3o_4b.py:tiny --workdir=/tmp/blip3o4b_tiny
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, ffn="4864")
  return paper_common.blip3o(llm="qwen2.5-3b", caption_dim=2048, ffn=a.ffn, tiny=a.tiny)
