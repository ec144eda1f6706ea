"""Ablation 5 (BLIP3-o): sequential training (understanding first, then generation on a frozen
backbone) vs joint training, at equal total budget.

BLIP3-o trains understanding first and then only the generation path with the backbone frozen,
claiming this keeps understanding intact while generation still reaches full quality. Toy version on
shapes_tiny: arm "joint" trains both losses for the whole budget; arm "sequential" runs stage 1
(understanding only: `gen_weight=0`) for half of it, then stage 2 (generation only: `und_weight=0`,
`optim.frozen` = LLM + understanding encoder + projector) for the other half, initialised from stage
1's parameters (`config.init = {"checkpoint": <stage-1 run>}`, set by tools/ablate.py).
Metrics: Q/A retained after stage 2 (vs joint) and GenEval reached.

    python tools/ablate.py --ablation=sequential --seeds=3 --minutes=10 --workdir=runs/ablations
    python train.py --config=configs/ablations/sequential.py:sequential,stage=stage1 --workdir=/tmp/s1
    python train.py --config=configs/ablations/sequential.py:sequential,stage=stage2 --workdir=/tmp/s2 \
      --config.init.checkpoint=/tmp/s1
"""
from configs import shapes_tiny
from configs.ablations import common
from jaxmodels.errors import ConfigError

ARMS = ("joint", "sequential")
METRICS = ("qa/overall", "geneval/overall", "geneval_progress/median_fit_iou", "stage1/qa/overall")
# Arms run as several trainings, each with an equal share of the budget; stage k > 1 starts from
# stage k-1's parameters (tools/ablate.py sets `config.init.checkpoint`).
STAGES = {"sequential": ("stage1", "stage2")}
FROZEN = ["llm/.*", "und_encoder/.*", "und_projector/.*"]


def get_config(arg=None):
  arm, a = common.split_arg(arg, ARMS, "sequential", stage="")
  c = shapes_tiny.get_config("target=ae")   # the flow-head generation path these arms compare
  c = common.smoke(c) if a.runlocal else common.full(c)
  stages = STAGES.get(arm, ("",))
  if a.stage not in stages:
    raise ConfigError(f"sequential: arm {arm!r} has stages {stages}, got stage={a.stage!r}")
  if a.stage == "stage1":
    c.model.gen_weight = 0.0
  elif a.stage == "stage2":
    c.model.und_weight = 0.0
    c.optim.frozen = list(FROZEN)
    c.init.checkpoint = ""   # the stage-1 run dir (tools/ablate.py)
  return c
