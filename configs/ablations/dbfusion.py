"""Ablation 3 (Florence-VL): how DBFusion fuses its four Florence-2 feature streams.

Florence-VL fuses the depth stream (DaViT features) and three breadth streams (Florence-2's encoder
under three task prompts) by channel concatenation and reports it beats token concatenation (4× the
visual tokens) and averaging. Toy version: `florence_vl_3b:tiny` (CPU-sized Florence-2, 64 px -> 2×2
grid; Phi-3.5-structured tiny LLM) trained on ShapesWorld Q/A; arms set `model.dbfusion.mode`.
Metrics: Q/A accuracy per kind and ShapesWorld-ColorBench, scored by train.py's final evaluation (the
model is an understanding-only unified model, so GenEval and ROVER do not apply).

    python tools/ablate.py --ablation=dbfusion --seeds=3 --minutes=10 --workdir=runs/ablations
    python train.py --config=configs/ablations/dbfusion.py:token_concat --workdir=/tmp/dbf_token
"""
import ml_collections

from configs import florence_vl_3b
from configs.ablations import common

ARMS = ("channel_concat", "token_concat", "average")
METRICS = ("qa/*", "colorbench/overall")


def get_config(arg=None):
  arm, a = common.split_arg(arg, ARMS, "dbfusion")
  c = florence_vl_3b.get_config("tiny")
  c.model.dbfusion.mode = arm
  c.evals = ml_collections.ConfigDict(dict(qa_per_kind=64, batch_size=32, colorbench_per_task=8,
                                           colorbench_seeds=8))
  c.optim.update(lr=1e-3, warmup_steps=50, min_lr_ratio=0.1)
  c.data.batch_size = 32
  c.train.log_every = 50
  return common.smoke(c) if a.runlocal else common.full(c)
