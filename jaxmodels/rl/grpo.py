"""GRPO (group relative policy optimisation) for a model that draws images as discrete tokens.

BLIP3o-NEXT post-trains its autoregressive image-token policy with GRPO (shared/spec/models.md §3.4):
per prompt, sample a group of G images from the current policy, score each with a reward, normalise
the rewards within the group into advantages, and maximise the clipped policy-gradient objective with a
KL penalty to a frozen reference. What is implemented here is that token-level GRPO for the discrete
policy — the patch-token path (`gen_target="patch_tokens"`) whose tokens the LLM samples itself — not the
stochastic-SDE variant that flow-GRPO uses for a continuous flow head.

For the patch-token path one "token" of the policy is one image slot (position, pattern, colour): its
log-probability is the sum of the three categorical log-probabilities, each under the *tempered and masked* distribution the
sampler draws from (`patch_tokens.sample`: cells at or before the previous one masked, the empty
pattern never drawn). Rollouts use no classifier-free guidance (guidance 1), so the sampled
distribution is exactly the policy being optimised.

Per token t of sequence i, with ratio r = exp(log π(t) − log π_old(t)) and advantage A_i:

    l_t = −min(r·A_i, clip(r, 1 − ε_low, 1 + ε_high)·A_i) + β·KL_t,
    KL_t = exp(log π_ref − log π) − (log π_ref − log π) − 1      (the unbiased, non-negative k3 estimator)

averaged over each sequence's tokens and then over sequences (`aggregate="sequence"`, the GRPO paper)
or over all tokens at once (`"token"`, DAPO). Shapes: rewards [P, G]; tokens, log-probs [N, L] with
N = P·G sequences and L image slots; prompts [N, T].

    adv = group_advantages(rewards, scale="std")                     # [P, G] -> [P, G]
    loss, metrics = clipped_objective(logp, old_logp, ref_logp, adv.reshape(-1), weights, clip_eps=0.2,
                                      kl_beta=0.04)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.unified import edit_canvas, patch_tokens

AGGREGATES = ("sequence", "token")
SCALES = ("std", "none")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """group_size G (images per prompt), clip_eps ε_low (and ε_high; None: the same — DAPO's
  "clip-higher" sets it larger), kl_beta β, aggregate (AGGREGATES), scale: "std" divides the centred
  rewards by the group's standard deviation (GRPO), "none" only centres them (Dr. GRPO), temperature /
  pattern_temperature of the rollouts (None: the model's `patch_tokens` sampling temperatures),
  und_weight: the weight of the policy's supervised understanding loss on the `und_*` inputs a batch
  carries (answer CE + dense labels, `UnifiedModel.understanding_loss`): GRPO alone never trains the
  understanding path, so a run that starts from a briefly trained policy keeps learning to answer
  while RL trains drawing (0: the GRPO objective only). edit_weight: the weight of the policy's supervised
  generation loss on the `gen_*` inputs of that batch (edit pairs: the trainer builds it with edits only),
  so the edit path, which a text-to-image reward never exercises, keeps what the supervised phase taught
  it (0: none). keep_action: on edit rollouts of a copy path with `copy_keep`, the keep decisions are part
  of the policy's action — drawn per source object with probability sigmoid(logit), their log-probs in
  the objective as one slot per object — so the reward teaches which objects an edit changes (False:
  kept where the logit is > 0, as evaluation samples, and trained by the supervised keep loss only)."""
  group_size: int = 8
  clip_eps: float = 0.2
  clip_eps_high: float | None = None
  kl_beta: float = 0.04
  aggregate: str = "sequence"
  scale: str = "std"
  temperature: float | None = None
  pattern_temperature: float | None = None
  render_steps: int = 30
  render_guidance: float = 1.0
  und_weight: float = 0.0
  edit_weight: float = 0.0
  keep_action: bool = True

  def __post_init__(self):
    if self.group_size < 2:
      raise ConfigError(f"config.rl.group_size={self.group_size}: GRPO needs at least 2 images per prompt")
    if self.aggregate not in AGGREGATES:
      raise ConfigError(f"config.rl.aggregate={self.aggregate!r}: expected one of {AGGREGATES}")
    if self.scale not in SCALES:
      raise ConfigError(f"config.rl.scale={self.scale!r}: expected one of {SCALES}")
    if self.clip_eps <= 0 or (self.clip_eps_high is not None and self.clip_eps_high <= 0):
      raise ConfigError("config.rl.clip_eps / clip_eps_high must be > 0")
    for name in ("temperature", "pattern_temperature"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ConfigError(f"config.rl.{name}={value}: must be > 0 (a greedy policy has no gradient)")
    for name in ("und_weight", "edit_weight"):
      if getattr(self, name) < 0:
        raise ConfigError(f"config.rl.{name}={getattr(self, name)}: must be >= 0")


def group_advantages(rewards, *, scale: str = "std", eps: float = 1e-4) -> np.ndarray:
  """Rewards [P, G] (G samples of each of P prompts) -> advantages [P, G]: centred on each group's
  mean and, with scale="std", divided by its (population) standard deviation + eps. A group whose
  rewards are all equal gets advantage 0 (no policy gradient; only the KL term acts)."""
  r = np.asarray(rewards, np.float64)
  if r.ndim != 2 or r.shape[1] < 2:
    raise ValueError(f"rewards must be [prompts, group >= 2], got shape {r.shape}")
  a = r - r.mean(axis=1, keepdims=True)
  if scale == "std":
    a = a / (r.std(axis=1, keepdims=True) + eps)
  elif scale != "none":
    raise ValueError(f"scale={scale!r}: expected one of {SCALES}")
  return a.astype(np.float32)


def clipped_objective(logp, old_logp, ref_logp, advantages, weights, *, clip_eps: float = 0.2,
                      clip_eps_high: float | None = None, kl_beta: float = 0.04,
                      aggregate: str = "sequence") -> tuple[jax.Array, dict]:
  """The GRPO loss (module docstring) of log-probs [N, L] under the policy being trained, the policy
  that sampled (old) and the reference, advantages [N] and token weights [N, L] (1 for real tokens,
  0 for padding) -> (loss, metrics: policy loss, kl, clip fraction, mean ratio)."""
  w = weights.astype(jnp.float32)
  ratio = jnp.exp(logp - jax.lax.stop_gradient(old_logp))
  a = advantages[:, None].astype(jnp.float32)
  hi = clip_eps if clip_eps_high is None else clip_eps_high
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
  surrogate = jnp.minimum(ratio * a, clipped * a)
  d = jax.lax.stop_gradient(ref_logp) - logp
  kl = jnp.exp(d) - d - 1.0
  per_token = -surrogate + kl_beta * kl
  if aggregate == "sequence":
    per_seq = lambda x: (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)  # noqa: E731
    mean = lambda x: per_seq(x).mean()  # noqa: E731
  elif aggregate == "token":
    mean = lambda x: (x * w).sum() / jnp.maximum(w.sum(), 1.0)  # noqa: E731
  else:
    raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATES}")
  was_clipped = (jnp.where(a >= 0, ratio > 1.0 + hi, ratio < 1.0 - clip_eps)).astype(jnp.float32)
  metrics = {"rl/policy_loss": mean(-surrogate), "rl/kl": mean(kl), "rl/clip_frac": mean(was_clipped),
             "rl/ratio": mean(ratio)}
  return mean(per_token), metrics


def patch_token_logprobs(llm, head, prompt_embeds, mask, pos, pattern, colour, *, temperature: float,
                         pattern_temperature: float | None = None, ref=None, keep=None
                         ) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced log-probabilities [B, L] of sampled patch tokens (pos, pattern, colour) [B, L]
  after the left-padded prompt (`prompt_embeds` [B, T, D], `mask` [B, T]) under the distribution
  `patch_tokens.sample` draws them from (same temperatures and masks; `ref`: the edit sources of the copy
  path, with the keep mask the policy predicts from this pass's prompt states, as the sampler does), and
  the token weights [B, L]: every slot up to and including the first <eoi>. With `keep` [B, L, 2], the keep
  actions a rollout drew for the source's L tokens, the copy path uses those and their log-probs follow
  the image's: logp and weights [B, 2L] (`PatchTokenHead.keep_logprobs`)."""
  eoi = head.config.eoi
  b, t = mask.shape
  pt = temperature if pattern_temperature is None else pattern_temperature
  x = jnp.concatenate([prompt_embeds, head.boi_embed(b).astype(prompt_embeds.dtype),
                       head.embed(pos[:, :-1], pattern[:, :-1], colour[:, :-1]).astype(prompt_embeds.dtype)], 1)
  full = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, 1), jnp.int32),
                          (pos[:, :-1] < eoi).astype(jnp.int32)], 1)
  states = llm.forward(None, patch_tokens.positions_of(full), full, inputs_embeds=x).hidden
  keep_lp = None
  if keep is not None and ref is not None and head.keep_out is not None:
    keep_lp, keep_w = head.keep_logprobs(states[:, :t], ref, keep)
    ref = ref.with_keep(keep)
  else:
    ref = head.predicted_keep(states[:, :t], ref)
  hidden = states[:, t:]
  prev = jnp.concatenate([jnp.full((b, 1), -1, pos.dtype), pos[:, :-1]], 1)   # the sorted list's last cell
  cells = jnp.arange(eoi + 1)
  allowed = (cells[None, None] > prev[..., None]) | (cells[None, None] == eoi)
  pos_logits = jnp.where(allowed, head.pos_logits(hidden, prev, ref) / temperature, -jnp.inf)
  pick = lambda logits, ids: jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids[..., None], -1)[..., 0]  # noqa: E731
  lp = pick(pos_logits, pos)
  pl, cl = head.pattern_colour_logits(hidden, pos, edit_canvas.canvas_of(pos, pattern, eoi), ref)
  pl = pl.at[..., 0].set(-jnp.inf)
  real = pos < eoi
  lq = pick(pl / pt, jnp.where(real, pattern, 1))
  lc = pick(cl / pt, colour)
  weights = jnp.concatenate([jnp.ones_like(pos[:, :1]), (pos[:, :-1] < eoi).astype(pos.dtype)], 1)
  logp = jnp.where(weights > 0, lp + jnp.where(real, lq + lc, 0.0), 0.0)
  if keep_lp is None:
    return logp, weights
  return jnp.concatenate([logp, keep_lp], 1), jnp.concatenate([weights.astype(jnp.float32), keep_w], 1)


def image_token_logprobs(model, ids, mask, codes, *, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """BLIP3o-NEXT's AR image tokens: teacher-forced log-probabilities [B, n] of `codes` [B, n] after the
  prompt [B, T] and <im_start> <S_k>, under the LLM's softmax restricted to the image-token ids at
  `temperature`. The sampler also truncates to top-k / top-p; like TRL's GRPO the log-probs use the
  untruncated softmax (the truncation only removes tokens of near-zero probability)."""
  c = model.config
  t, n = ids.shape[1], codes.shape[1]
  _, _, hidden, _, _ = model.image_token_forward(ids, mask, codes)
  logits = model.llm.logits(hidden[:, t + 1:t + 1 + n])       # <S_k> predicts code 0, code j code j+1
  lo = c.image_vocab_offset
  logits = jax.lax.dynamic_slice_in_dim(logits, lo, c.image_tokenizer.codebook_size, axis=-1) / temperature
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), codes[..., None].astype(jnp.int32), -1)[..., 0]
  return logp, jnp.ones_like(codes)


class PatchTokenPolicy:
  """gen_target="patch_tokens": the LLM's own sparse palette-patch tokens (pos, pattern, colour)."""
  token_keys = ("pos", "pattern", "colour")

  @staticmethod
  def applies(c) -> bool:
    return c.gen_target == "patch_tokens"

  @staticmethod
  def temperatures(model, config: GRPOConfig) -> tuple[float, float]:
    pt_cfg = model.config.patch_tokens
    t = config.temperature or pt_cfg.temperature
    pt = config.pattern_temperature or pt_cfg.pattern_temperature or t
    if t <= 0 or pt <= 0:
      raise ConfigError("config.rl.temperature: the model samples greedily (temperature 0); set "
                        "config.rl.temperature / pattern_temperature > 0")
    return t, pt

  @classmethod
  def sample(cls, model, ids, mask, rng, config: GRPOConfig, cond_images=None):
    t, pt = cls.temperatures(model, config)
    embeds, ref = model.patch_prompt(ids, mask, cond_images)
    k_keep = None
    if ref is not None and model.patch_head.keep_out is not None and config.keep_action:
      rng, k_keep = jax.random.split(rng)
    out = patch_tokens.sample(model.llm, model.patch_head, embeds, mask, rng, guidance=1.0, temperature=t,
                              pattern_temperature=pt, ref=ref, keep_rng=k_keep)
    tokens = dict(zip(cls.token_keys, out[:3]))
    if k_keep is not None:
      tokens["keep"] = out[3]
    return tokens, model.patch_tokenizer.decode(*out[:3])

  @classmethod
  def logprobs(cls, model, batch, config: GRPOConfig):
    t, pt = cls.temperatures(model, config)
    embeds, ref = model.patch_prompt(batch["ids"], batch["mask"], batch.get("cond_image"))
    return patch_token_logprobs(model.llm, model.patch_head, embeds, batch["mask"], batch["pos"],
                                batch["pattern"], batch["colour"], temperature=t, pattern_temperature=pt,
                                ref=ref, keep=batch.get("keep"))


class ImageTokenPolicy:
  """queries="image_tokens" (BLIP3o-NEXT): codes of the discrete image tokenizer drawn by the LLM, then
  rendered by the diffusion head (`render_steps`, `render_guidance`; the rendering is part of the
  environment, not of the policy's log-probability)."""
  token_keys = ("codes",)

  @staticmethod
  def applies(c) -> bool:
    return c.queries == "image_tokens"

  @staticmethod
  def sample(model, ids, mask, rng, config: GRPOConfig, cond_images=None):
    if cond_images is not None:
      raise ConfigError("config.rl.edit_prompts: GRPO on edits needs the patch-token policy "
                        "(gen_target='patch_tokens')")
    images, codes = model.generate_image(ids, mask, rng, num_steps=config.render_steps,
                                         guidance=config.render_guidance, return_codes=True)
    return {"codes": codes}, images

  @staticmethod
  def logprobs(model, batch, config: GRPOConfig):
    return image_token_logprobs(model, batch["ids"], batch["mask"], batch["codes"])


POLICIES = (PatchTokenPolicy, ImageTokenPolicy)


def policy_of(model):
  """The discrete-token policy adapter that applies to `model` (POLICIES), or a ConfigError."""
  for p in POLICIES:
    if p.applies(model.config):
      return p
  raise ConfigError("config.rl: GRPO trains a discrete image-token policy — gen_target='patch_tokens' or "
                    "queries='image_tokens' (BLIP3o-NEXT); this model draws with gen_target="
                    f"{model.config.gen_target!r}, queries={model.config.queries!r}")


class GRPOPolicy(nnx.Module):
  """The policy being trained (`policy`, a UnifiedModel with a discrete image-token path: `policy_of`)
  and its frozen `reference` copy; `loss(batch, rng)` is the GRPO objective, so `trainer.TrainState` and
  its jitted step (accumulation, non-finite skip, donation, shardings) train it like any model. Train
  only `policy` (`POLICY_PARAMS`); the reference is checkpointed with it.

  batch: ids, mask [N, T] (prompts), the rollout's tokens (the adapter's `token_keys`, [N, L] each),
  old_logp, ref_logp [N, L], advantages [N]; with edit prompts also cond_image [N, S, S, 3] in [-1, 1] (the
  sources; rows without placeholders in `ids` ignore theirs)."""

  def __init__(self, policy: nnx.Module, reference: nnx.Module, config: GRPOConfig):
    self.adapter = policy_of(policy)
    self.policy, self.reference, self.config = policy, reference, config

  @property
  def token_keys(self) -> tuple[str, ...]:
    return self.adapter.token_keys

  def logprobs(self, model, batch) -> tuple[jax.Array, jax.Array]:
    return self.adapter.logprobs(model, batch, self.config)

  def rollout(self, ids, mask, rng, cond_images=None):
    """Prompts [N, T] (and edit sources [N, S, S, 3]) -> (tokens {key: [N, L]}, images [N, S, S, 3] in
    [-1, 1], old log-probs [N, L], reference log-probs [N, L], weights [N, L])."""
    tokens, images = self.adapter.sample(self.policy, ids, mask, rng, self.config, cond_images)
    batch = {"ids": ids, "mask": mask, **tokens}
    if cond_images is not None:
      batch["cond_image"] = cond_images
    old, weights = self.logprobs(self.policy, batch)
    ref, _ = self.logprobs(self.reference, batch)
    return tokens, images, old, ref, weights

  def loss(self, batch, rng) -> tuple[jax.Array, dict]:
    """The GRPO objective on the rollout keys, plus `und_weight` × the policy's understanding loss when
    the batch also carries a supervised understanding batch (`und_*` keys, its own batch size) and
    `edit_weight` × its generation loss on supervised edit pairs (`gen_*` keys)."""
    c = self.config
    logp, weights = self.logprobs(self.policy, batch)
    loss, metrics = clipped_objective(logp, batch["old_logp"], batch["ref_logp"], batch["advantages"],
                                      weights, clip_eps=c.clip_eps, clip_eps_high=c.clip_eps_high,
                                      kl_beta=c.kl_beta, aggregate=c.aggregate)
    if c.und_weight and "und_ids" in batch:
      und, m = self.policy.understanding_loss({k: v for k, v in batch.items() if k.startswith("und_")})
      loss, metrics = loss + c.und_weight * und, {**metrics, **{f"und/{k}": v for k, v in m.items()}}
    if c.edit_weight and "gen_ids" in batch:
      gen, m = self.policy.generation_loss({k: v for k, v in batch.items() if k.startswith("gen_")}, rng)
      loss, metrics = loss + c.edit_weight * gen, {**metrics, **{f"edit/{k}": v for k, v in m.items()}}
    return loss, metrics


POLICY_PARAMS = nnx.All(nnx.Param, nnx.PathContains("policy"))
