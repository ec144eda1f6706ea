"""Ablation 4 (LaTtE-Flow): K groups of layerwise timestep experts vs one full-depth stack.

LaTtE-Flow splits an L-layer generation stack into K groups, each owning one σ interval, so a
sampling step runs only L/K layers: it claims ~K× faster sampling at equal parameters with comparable
quality. Toy version: shapes_tiny with a 4-layer LLM whose per-layer prompt states feed a 4-layer LaTtE
stack (`dit.type="latte"`, `queries="none"`, `connector="identity"`, TCRA on) over the patch
autoencoder's 8×8×8 latent; arms set `dit.num_groups` (K1 = full depth at every step). Parameters are
identical across arms. Metrics: GenEval and sampling seconds per image (tools/ablate.py times
`generate_image` on one batch from the final checkpoint after a warm-up compile; lower is better).

    python tools/ablate.py --ablation=latte_groups --seeds=3 --minutes=10 --workdir=runs/ablations
    python train.py --config=configs/ablations/latte_groups.py:K4 --workdir=/tmp/latte_k4
"""
from configs import shapes_tiny
from configs.ablations import common

ARMS = ("K1", "K2", "K4")
METRICS = ("geneval/*", "geneval_progress/lenient_overall", "geneval_progress/median_fit_iou",
           "sampling/s_per_image")
LOWER_IS_BETTER = ("sampling/s_per_image",)
MEASURE = ("sampling",)
NUM_LAYERS = 4


def get_config(arg=None):
  arm, a = common.split_arg(arg, ARMS, "latte_groups")
  c = shapes_tiny.get_config("target=ae")
  m = c.model
  m.llm.num_layers = NUM_LAYERS
  ae = m.autoencoder
  m.dit = dict(type="latte", hidden_size=128, num_layers=NUM_LAYERS, num_groups=int(arm[1:]), num_heads=4,
               intermediate_size=256, context_dim=m.llm.hidden_size, in_channels=ae.latent_channels,
               patch_size=1, sample_size=ae.image_size // ae.patch_size)
  m.queries = "none"
  m.connector = "identity"
  return common.smoke(c) if a.runlocal else common.full(c)
