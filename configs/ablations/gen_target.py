"""Ablation 2 (BLIP3-o): what the flow head generates — a compact learned latent vs raw pixels.

BLIP3-o finds that diffusing a compact semantic feature space (CLIP features) trains faster and scores
higher than diffusing VAE latents or pixels. Toy stand-in: arm "ae" generates the 8×8×8 latent of a
jointly trained per-patch autoencoder whose decoder predicts palette colours (`shapes_tiny:target=ae`);
arm "pixels" generates the 32×32×3 image directly (`shapes_tiny:target=pixels`). Same LLM, encoder,
queries and connector; the DiT differs only in its input grid. Metrics: ShapesWorld-GenEval per tag and
the progress signals below its strict bar (`geneval_progress`: lenient score, shape-fit IoU, specks).

    python tools/ablate.py --ablation=gen_target --seeds=3 --minutes=10 --workdir=runs/ablations
    python train.py --config=configs/ablations/gen_target.py:ae --workdir=/tmp/gen_target_ae
"""
from configs import shapes_tiny
from configs.ablations import common

ARMS = ("ae", "pixels")
METRICS = ("geneval/*", "geneval_progress/*")
LOWER_IS_BETTER = common.PROGRESS_LOWER_IS_BETTER


def get_config(arg=None):
  arm, a = common.split_arg(arg, ARMS, "gen_target")
  c = shapes_tiny.get_config(f"target={arm}")
  return common.smoke(c) if a.runlocal else common.full(c)
