"""The embedded default: a tiny decoupled-encoder unified model trained on ShapesWorld on a laptop.

A SigLIP-style understanding encoder (32 px, a convolutional stem to the 8×8 token grid, 2×2 pooled to
16 tokens) feeds a small Qwen2-style LLM for Q/A. Generation has three variants (`:target=`):

  * `tokens` (the default): BLIP3o-NEXT's autoregressive path — the LLM itself (width `:width=256`,
    `:layers=4`) draws the image after the prompt as the raster list of its foreground 4×4 patches,
    one token (position, pattern, colour) each from a fitted codebook that decodes exactly
    (jaxmodels/unified/patch_tokens.py), with cross-entropy like the answers; the pattern head sees the
    patterns already drawn around the next cell, positions are sampled at temperature 0.7 and patterns
    at 0.1, without CFG; generation on every second step. It is the variant that draws shapes the
    strict detector accepts (ShapesWorld-GenEval ~0.22 where `ae` scores 0) with Q/A at least as good
    as `ae`'s (BENCHMARKS.md, "generation: image tokens").
  * `ae`: 16 learnable queries read the LLM's hidden states and an MLP connector conditions a
    Lumina-style DiT that generates, by flow matching, the 8×8×8 latent grid of a jointly trained
    per-patch palette autoencoder (its decoder paints every pixel one palette colour: BLIP3-o's
    compact-target idea at toy scale, jaxmodels/unified/patch_autoencoder.py); LLM width 128, 2 layers;
    generation inputs on every third step (`train.gen_every=3`: ~1.5× the steps in the same time).
  * `pixels`: the same DiT on 32×32 pixels with 4-px patches.

Each understanding sequence asks up to 4 questions about its image (multi-turn, leaving out turns an
earlier turn gives away, `data.qa_leak_free`), each question *before* its own copy of the image tokens
(`data.und_layout="question_first"`: <bos> Q1 <image>×16 A1 <eos> Q2 <image>×16 A2 <eos> ...);
`data.edit_fraction` mixes in edit pairs. Levers that make the understanding path learn in budget
(BENCHMARKS.md, "Learning levers"): the conv stem (`stem="conv"`: a patchify ViT this small stays at
chance on shapes), dense per-token shape/colour labels from the renderer's masks on the encoder
(`und_dense_weight`, `data.dense_labels`), leak-free turns and question-first turns (the image tokens
see the question, so the 2-layer LLM can pick out the object it names).
`data.worker_count=1`: the examples are made in one Grain worker process (tools/bench_data.py measured
1.7k examples/s there against ~0.9k in the training process). The towers' `remat` stays "none";
train.py turns remat off for multi-process CPU runs anyway, where XLA:CPU's gloo collectives abort
under it. The run stops at `train.total_steps` or after `train.time_limit_minutes`, then evaluates
(Q/A, ShapesWorld-ColorBench, -GenEval and -ROVER) and prints the score table.

With `target=tokens` (`:grpo=auto`, not for `:runlocal`; `:grpo=yes|no` forces it) the run has two
phases (`config.rl.after_supervised`, train.py): the supervised recipe in the workdir, then GRPO on
the LLM's patch-token policy in `<workdir>/rl` (`grpo_block`: the exact ShapesWorld GenEval
detector's dense reward, G = 8 images per prompt), with the supervised understanding loss kept in
every GRPO update (`rl.und_weight`); the final evaluations run on the GRPO policy. Its supervised
phase runs batch 16 for up to 3000 steps with the learning-rate schedule on the time clock
(`optim.clock="time"`: warmup and decay end with the 8.5-minute cap on a slower machine too). Supervised training
alone leaves strict GenEval near 0.2; GRPO raises it the most per minute (BENCHMARKS.md, "A
supervised phase then a GRPO phase"). Understanding turns include colour-reasoning questions
(`data.qa_kinds` "colorbench": the dataset's ColorBench-style items asked open, plus darkest /
lightest, which-is-lighter and per-colour counts made from the scene). `data.und_background` = p
repaints the background of a fraction p of the understanding images (jaxmodels/shapes_world/augment.py:
a random colour, a colour near an object's, or two tones); it is off by default (BENCHMARKS.md, "The
main command in two phases": at 0.5 Q/A and perception fell within the budget).

    python train.py --config=configs/shapes_tiny.py --workdir=runs/shapes_tiny
    python train.py --config=configs/shapes_tiny.py:runlocal --workdir=/tmp/shapes_smoke   # seconds
    python train.py --config=configs/shapes_tiny.py:target=ae --workdir=runs/shapes_tiny_ae
    python train.py --config=configs/shapes_tiny.py:target=pixels --workdir=runs/shapes_tiny_pixels
"""
import ml_collections

from jaxmodels.shapes_world import palette
from jaxmodels.config_schema import base_config, data_block, execution_block
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, runlocal=False, target="tokens", width=256, layers=4, grpo="auto")
  if a.grpo not in ("auto", "yes", "no"):
    raise ValueError(f"shapes_tiny: grpo={a.grpo!r}: expected 'auto', 'yes' or 'no'")
  c = base_config()
  c.model = ml_collections.ConfigDict(dict(
      llm=dict(model_type="qwen2", vocab_size=128, hidden_size=128, intermediate_size=256, num_layers=2,
               num_heads=4, num_kv_heads=2, qkv_bias=True, max_position_embeddings=256,
               rope_theta=10000.0, scan_layers=True, remat="none"),
      und_encoder=dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                       num_layers=2, num_heads=2, image_size=32, patch_size=4, use_head=False,
                       stem="conv", stem_width=32, scan_layers=True, remat="none"),
      und_pool=2, und_projector="mlp2x_gelu", image_token_id=4,     # WordTokenizer's <image>
      und_dense_weight=1.0, und_dense_classes=[7, 11],              # 1 + 6 shapes, 1 + 10 colours
      dit=dict(type="lumina", sample_size=32, patch_size=4, in_channels=3, hidden_size=128, num_layers=3,
               num_heads=4, ffn_hidden_size=256, learn_sigma=False, cross_attention_dim=64,
               use_pad_token=False, time_convention="sigma_1000", scan_layers=True, remat="none"),
      gen_target="pixels", gen_image_size=32, num_queries=16, connector="mlp", cond_dropout=0.1,
      und_weight=1.0, gen_weight=1.0, execution=execution_block()))
  if a.target == "ae":   # the flow head generates a jointly trained patch autoencoder's 8×8 latent
    c.model.gen_target = "autoencoder"
    c.model.autoencoder = dict(image_size=32, patch_size=4, latent_channels=8, hidden_size=128,
                               palette=[palette.BACKGROUND_RGB] + [tuple(map(int, rgb)) for rgb in palette.PALETTE])
    c.model.dit.update(sample_size=8, patch_size=1, in_channels=8)
  elif a.target == "tokens":   # the LLM draws sparse palette-patch tokens (BLIP3o-NEXT's AR path)
    c.model.gen_target, c.model.queries, c.model.dit = "patch_tokens", "none", None
    if a.runlocal:                # a smoke run keeps the small LLM
      a.width, a.layers = 128, 2
    c.model.llm.update(hidden_size=a.width, intermediate_size=2 * a.width, num_layers=a.layers)
    c.model.patch_tokens = dict(image_size=32, patch_size=4, max_patches=48, temperature=0.7,
                                pattern_temperature=0.1, neighbours=True, edit_reference="encoder", copy_keep=False,
                                keep_pool="object", palette=[palette.BACKGROUND_RGB] + [tuple(map(int, rgb)) for rgb in palette.PALETTE])
  elif a.target != "pixels":
    raise ValueError(f"shapes_tiny: target={a.target!r}: expected 'tokens', 'ae' or 'pixels'")
  c.data = data_block("shapes_world", batch_size=32, und_len=96, gen_len=16, qa_turns=4, qa_leak_free=True,
                      und_layout="question_first", dense_labels=True,
                      qa_kinds="color,shape,count,position,colorbench", worker_count=1)
  c.optim.update(lr=1e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.01, b2=0.99)
  # target=ae/pixels: generation inputs on every third step (the others train understanding only,
  # about half the cost): ~1500 steps fit the time limit on 2 cores and the cosine schedule ends with
  # the run (the time limit is a safety net on slower machines).
  c.train.update(total_steps=1500, gen_every=3, log_every=50, eval_every=500, ckpt_every=500,
                 time_limit_minutes=7.5)
  # Evaluations: the base config's (Q/A, all 553 GenEval test prompts, ColorBench, ROVER; a subset of
  # `evals.which` skips the rest; evals.loop_geneval_prompts > 0 scores GenEval in the loop too).
  if a.target == "tokens":
    # Generation inputs on every second step: with the LLM drawing on every step, Q/A colour and shape
    # fell to ~0.7; one understanding-only step in two keeps them (BENCHMARKS.md, "generation: image
    # tokens"). The cosine schedule ends with the run. Sampling without classifier-free guidance: it
    # lowers strict GenEval for the token path.
    c.train.update(total_steps=1500, gen_every=2, time_limit_minutes=12)
    c.train.ema_path = ""       # no DiT: the LLM draws, so an EMA (train.ema_decay) covers the model
    c.evals.guidance = 1.0
  if a.grpo == "yes" or (a.grpo == "auto" and a.target == "tokens" and not a.runlocal):
    # Two phases (train.py): the supervised recipe above, capped at 8.5 minutes, then GRPO on its
    # image-token policy in <workdir>/rl, which keeps training understanding (rl.und_weight) while the
    # exact ShapesWorld detector's reward trains drawing; the final evaluations run after GRPO.
    # The schedule spans the cap (optim.clock="time"): on a machine too slow for the steps, the
    # learning rate still decays by the cap. Batch 16 buys twice the updates at the same examples per
    # second (the step is compute-bound); 3000 of them equal the examples of 1500 at batch 32
    # (BENCHMARKS.md, "A learning-rate schedule that ends with the time budget").
    c.train.update(total_steps=3000, time_limit_minutes=8.5)
    c.optim.clock = "time"
    c.data.batch_size = 16
    c.rl = grpo_block(a.runlocal)
    c.rl.update(after_supervised=True, und_weight=1.0, supervised_evals="",
                train=dict(total_steps=200, time_limit_minutes=3.5, log_every=10, eval_every=1000,
                           ckpt_every=50),
                optim=dict(lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0))
    if a.runlocal:
      c.rl.train.update(total_steps=2, log_every=1, eval_every=10, ckpt_every=1, time_limit_minutes=None)
  if a.runlocal:   # a smoke run: a few steps, small evals
    c.data.config = "tiny"
    c.data.batch_size = 8
    c.data.worker_count = 0       # no worker process to start for a few steps
    c.train.update(total_steps=6, gen_every=1, log_every=2, eval_every=3, ckpt_every=3,
                   time_limit_minutes=None)   # gen_every=1: one compiled program
    c.optim.warmup_steps = 2
    c.evals.update(qa_per_kind=4, geneval_prompts=8, sample_steps=2, batch_size=8)
  return c


def grpo_block(runlocal: bool = False) -> ml_collections.ConfigDict:
  """`config.rl` of GRPO on the image-token policy (configs/shapes_grpo.py, and the second phase of
  this config): G images per prompt, the reward mixture (the exact ShapesWorld GenEval detector:
  dense partial credit, the strict verdict logged), clip ε, KL β to the frozen start."""
  from jaxmodels.trainer.grpo import rl_block
  rl = rl_block()   # every key declared (jaxmodels/trainer/grpo.py RUN_KEYS + rl/grpo.py GRPOConfig)
  rl.update(group_size=8, prompts_per_step=8, clip_eps=0.2, kl_beta=0.04, aggregate="sequence",
            scale="std", rewards=dict(geneval_dense=1.0, geneval=0.0))
  if runlocal:
    rl.update(group_size=4, prompts_per_step=2)
  return rl
