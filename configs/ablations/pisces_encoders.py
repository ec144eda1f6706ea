"""Ablation 1 (Pisces): decoupled vs shared encoders for the image inputs of generation prompts.

Pisces claims that understanding and generation want different visual features, so a generation
encoder of its own (with its own projector) for the images a generation prompt carries beats reusing the
understanding encoder. Toy version: shapes_tiny with an edit mixture (a quarter of the generation rows
are edits "<image>×16 instruction -> edited scene"). Arm "shared": the edit's source image is read by
the understanding encoder (the default). Arm "decoupled": a second ViT of the same size (32 px, 4-px
patches, 2×2 pooled to the same 16 tokens) + its own projector reads it (`gen_encoder`,
`gen_projector=True`); both encoders train. Metrics: Q/A, ShapesWorld-ROVER IG (RV, VC), GenEval.

    python tools/ablate.py --ablation=pisces_encoders --seeds=3 --minutes=10 --workdir=runs/ablations
    python train.py --config=configs/ablations/pisces_encoders.py:decoupled --workdir=/tmp/pisces_dec
"""
from configs import shapes_tiny
from configs.ablations import common

ARMS = ("shared", "decoupled")
METRICS = ("qa/overall", "rover_ig/RV", "rover_ig/VC", "geneval/overall", "geneval_progress/median_fit_iou")
# 1 (<bos>) + 16 image tokens + up to 26 instruction words, with room to spare.
GEN_LEN = 48


def get_config(arg=None):
  arm, a = common.split_arg(arg, ARMS, "pisces_encoders")
  c = shapes_tiny.get_config("target=ae")   # the flow-head generation path these arms compare
  c = common.smoke(c) if a.runlocal else common.full(c)
  c.data.edit_fraction = 0.25
  c.data.gen_len = GEN_LEN
  if arm == "decoupled":
    und = c.model.und_encoder.to_dict()
    c.model.gen_encoder = {**und, "use_head": False}
    c.model.gen_pool = c.model.und_pool          # same grid and pooling: as many tokens as und
    c.model.gen_projector = True
  return c
