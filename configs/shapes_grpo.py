r"""GRPO post-training of the embedded default's image-token policy on ShapesWorld (BLIP3o-NEXT's RL
stage at toy scale; jaxmodels/trainer/grpo.py, jaxmodels/rl/).

    python train.py --config=configs/shapes_tiny.py --workdir=runs/shapes_tiny         # the policy first
    python train.py --config=configs/shapes_grpo.py --workdir=runs/shapes_grpo \
        --config.init.checkpoint=runs/shapes_tiny
    python train.py --config=configs/shapes_grpo.py:runlocal --workdir=/tmp/grpo_smoke \
        --config.init.checkpoint=/tmp/shapes_smoke                                   # seconds

The policy's model and data settings come from the run `config.init.checkpoint` names (its stored
config; for the main command's two-phase workdir that is its supervised phase, whose own GRPO phase is
in runs/shapes_tiny/rl); this file sets the RL part: G images per prompt, the reward mixture (the exact ShapesWorld
GenEval detector: strict verdict and dense partial credit), clip ε, KL β to the frozen start, and a
10-minute budget on 2 CPU cores. The supervised baseline for the same wall time continues the source
run's training from the same weights:

    python train.py --config=configs/shapes_tiny.py:grpo=no --workdir=runs/shapes_sft \
        --config.init.checkpoint=runs/shapes_tiny --config.train.time_limit_minutes=10 \
        --config.optim.warmup_steps=0
"""

from configs import shapes_tiny
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False)
  c = shapes_tiny.get_config("runlocal,grpo=no" if a.runlocal else "grpo=no")   # evals, trainer keys
  c.init.checkpoint = "runs/shapes_tiny"
  c.rl = shapes_tiny.grpo_block(a.runlocal)
  c.optim.update(lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0)
  c.train.update(total_steps=400, log_every=10, eval_every=100, ckpt_every=50, time_limit_minutes=10)
  c.evals.update(which="qa,geneval")
  if a.runlocal:
    c.train.update(total_steps=4, log_every=1, eval_every=2, ckpt_every=2, time_limit_minutes=None)
    c.evals.update(which="geneval", geneval_prompts=4)
  return c
