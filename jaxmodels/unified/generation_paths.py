"""How a unified model learns to draw and draws: one `GenerationPath` per paper family, and the flow
targets (`TARGETS`) the DiT paths regress.

  "queries"       queries "learnable" (BLIP3-o, Pisces) | "vocab" (MetaQuery): LLM hidden states at N
                  queries -> connector -> DiT condition -> flow matching on the target
  "layerwise"     queries "none" (LaTtE-Flow): the generation stack reads the LLM's per-layer prompt
                  states; each layer group learns its own σ interval
  "image_tokens"  queries "image_tokens" (BLIP3o-NEXT): CE on discrete image tokens in the LLM vocabulary,
                  plus flow matching of a DiT conditioned on their states
  "patch_tokens"  gen_target "patch_tokens": the LLM draws sparse palette-patch tokens (patch_tokens.py),
                  CE only, decoded exactly

Targets x₀ [B, h, w, C] of images [B, H, W, 3] in [-1, 1]: "pixels", "latents" (a frozen DC-AE's scaled
latents, or precomputed `gen_latents`), "autoencoder" (the jointly trained patch autoencoder's latents),
"gen_encoder" (a frozen generation encoder's pooled tokens: BLIP3-o, Pisces); each also maps a sample back
to its output.

Paths and targets hold no parameters: they read the model's parts (`model.llm`, `model.dit`, …), so
parameter paths and checkpoints are `UnifiedModel`'s. A new family registers a class in `PATHS` or
`TARGETS` (`UnifiedConfig.generation_path` / `gen_target` name it) instead of adding branches to the model.

    path = PATHS[config.generation_path]
    loss, metrics = path.loss(model, batch, rng)
    images, codes = path.sample(model, ids, mask, rng, num_steps=30, guidance=3.0)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxmodels import flow
from jaxmodels.unified import latent_codec, patch_tokens
from jaxmodels.unified.encoders import encoder_tokens
from jaxmodels.unified.queries import QUERY_KINDS


# ------------------------------------------------------------------------------------ targets
class Target:
  """x₀ of images, and a sample's output (identity unless the target is decoded)."""

  def x0(self, model, images: jax.Array) -> jax.Array:
    raise NotImplementedError

  def batch_x0(self, model, batch) -> jax.Array:
    return self.x0(model, batch["gen_image"])

  def output(self, model, x: jax.Array) -> jax.Array:
    return x


class PixelTarget(Target):
  def x0(self, model, images):
    return model.target_images(images)

  def output(self, model, x):
    return jnp.clip(x, -1.0, 1.0)


class LatentTarget(Target):
  """The frozen DC-AE's scaled latents; without `config.vae` the batch carries them (gen_latents)."""

  def x0(self, model, images):
    if model.vae is None:
      raise ValueError("gen_target='latents' without config.model.vae: the batch must carry "
                       "precomputed latents (gen_latents)")
    return latent_codec.encode(model.vae, images, model.config)

  def batch_x0(self, model, batch):
    return batch["gen_latents"] if model.vae is None else self.x0(model, batch["gen_image"])

  def output(self, model, x):
    return x if model.vae is None else latent_codec.decode(model.vae, x, model.config)


class AutoencoderTarget(Target):
  """The jointly trained patch autoencoder's latents, as a fixed target (no gradient into the encoder)."""

  def x0(self, model, images):
    return jax.lax.stop_gradient(model.autoencoder.encode(model.target_images(images)))

  def output(self, model, x):
    return model.autoencoder.decode(x)


class FeatureTarget(Target):
  """The frozen generation encoder's last-block tokens, a×a pooled, as a [B, g, g, D] grid."""

  def x0(self, model, images):
    tokens = encoder_tokens(model.gen_encoder, images, model.config.gen_pool, last_block=True)
    g = int(round(tokens.shape[1] ** 0.5))
    return jax.lax.stop_gradient(tokens.reshape(tokens.shape[0], g, g, -1))


TARGETS: dict[str, Target] = {"pixels": PixelTarget(), "latents": LatentTarget(),
                              "autoencoder": AutoencoderTarget(), "gen_encoder": FeatureTarget()}


# ------------------------------------------------------------------------------------ paths
class GenerationPath:
  """`loss(model, batch, rng)` -> (loss, metrics) on a batch's gen_* rows; `sample(model, ids, mask,
  rng, ...)` -> (images or targets [B, h, w, C], the drawn tokens or None). See `UnifiedModel.generate_image`
  for the sampling arguments."""

  def loss(self, model, batch, rng):
    raise NotImplementedError

  def sample(self, model, ids, mask, rng, *, num_steps, guidance, solver, shift, cond_images, image_guidance):
    raise NotImplementedError

  def condition(self, model, ids, mask, images):
    """The DiT condition of a prompt ids [B, T], mask [B, T] int32 (left-padded), `images` at its
    placeholders (or None)."""
    raise ValueError(f"the {model.config.generation_path!r} generation path has no prompt condition "
                     "(its condition comes from the tokens it draws)")


def _flow_loss(model, batch, x0, noise, cond, k_drop, k_sigma, ref=None):
  """Flow matching of the DiT on x₀ [B, h, w, C] under condition [B, N, C] (dropped to the CFG null at
  cond_dropout); `ref`: an edit's reference latents, injected into the noisy input. With
  gen_decoder_weight also the autoencoder's pixel-class loss of the clean-latent estimate (config.py)."""
  c = model.config
  null = "zeros" if c.cfg_null == "zeros" else model.null_condition(cond)
  cond = flow.drop_condition(k_drop, cond, c.cond_dropout, null=null)
  sigmas = flow.sample_training_sigmas(k_sigma, x0.shape[0], c.sigma_sampling, shift=c.train_shift)
  x_t = flow.noisy_input(x0, noise, sigmas)
  v = model.velocity(x_t if ref is None else model.edit_latents.inject(x_t, ref), sigmas, cond)
  loss = flow.flow_matching_loss(v, x0, noise)
  metrics = {"gen_flow_loss": loss}
  if c.gen_decoder_weight:
    sig = sigmas.reshape((-1,) + (1,) * (x_t.ndim - 1))
    x0_hat = x_t.astype(jnp.float32) - sig * v.astype(jnp.float32)
    dec = model.autoencoder.class_loss(x0_hat, model.target_images(batch["gen_image"]), (1.0 - sigmas) ** 2)
    metrics["gen_decoder_loss"] = dec
    loss = loss + c.gen_decoder_weight * dec
  return loss, metrics


def _noise_like(model, batch, k_noise):
  x0 = model.batch_target(batch)
  return x0, jax.random.normal(k_noise, x0.shape, x0.dtype)


def _x_init(model, ids, k_x):
  c = model.config
  side = c.target_side
  return jax.random.normal(k_x, (ids.shape[0], side, side, c.target_channels), jnp.float32)


def _velocity_fn(model):
  """(x, t, (cond, cond_mask, ref)) -> velocity, with t on the sampler's 0..NUM_TRAIN_TIMESTEPS scale."""
  def fn(x, t, cond):
    cond, cond_mask, ref = cond
    x = x if ref is None else model.edit_latents.inject(x, ref)
    return model.velocity(x, t / flow.NUM_TRAIN_TIMESTEPS, cond, cond_mask)
  return fn


def _guided(model, cond, cond_mask, ref, guidance, null=None):
  """The sampler's velocity: plain at guidance 1, else CFG against `null` (zeros by default)."""
  fn = _velocity_fn(model)
  if guidance == 1.0:
    return lambda x, t: fn(x, t, (cond, cond_mask, ref))
  null = jnp.zeros_like(cond) if null is None else null
  return flow.cfg_velocity_fn(fn, (cond, cond_mask, ref), (null, cond_mask, ref), guidance)


def _image_text_guided(model, ids, mask, cond, cond_mask, cond_images, image_guidance, guidance):
  """3-way guidance for edits (`flow.image_text_guidance`): the null (black image, caption masked), the
  image alone (caption masked) and the full condition."""
  c = model.config
  mask_img = jnp.where(ids == c.image_token_id, mask, 0)
  cond_img = model.condition(ids, mask_img, cond_images)
  cond_null = model.condition(ids, mask_img, jnp.full_like(cond_images, -1.0))
  conds = jnp.concatenate([cond_null, cond_img, cond], 0)
  cmasks = None if cond_mask is None else jnp.concatenate([mask_img, mask_img, cond_mask], 0)
  fn = _velocity_fn(model)

  def vfn(x, t):
    v = fn(jnp.concatenate([x] * 3), jnp.concatenate([t] * 3), (conds, cmasks, None))
    v_null, v_img, v_full = jnp.split(v, 3)
    return flow.image_text_guidance(v_null, v_img, v_full, image_guidance, guidance)
  return vfn


def _finish(model, vfn, x_init, num_steps, solver, shift):
  x = flow.sample(vfn, x_init, num_steps=num_steps, solver=solver, shift=shift)
  return TARGETS[model.config.gen_target].output(model, x)


class QueryPath(GenerationPath):
  """N queries after the prompt (learnable vectors, or MetaQuery's vocabulary rows: queries.QUERY_KINDS)
  -> connector -> DiT."""

  def condition(self, model, ids, mask, images):
    kind, n = QUERY_KINDS[model.config.queries], model.config.num_queries
    prompt = model.prompt_embeddings(ids, images)
    suffix = kind.suffix(model, ids.shape[0], prompt.dtype)
    embeds = jnp.concatenate([prompt, suffix], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones(suffix.shape[:2], jnp.int32)], axis=1)
    hidden = model.llm.forward(None, patch_tokens.positions_of(full_mask), full_mask, inputs_embeds=embeds).hidden
    hidden = kind.states(hidden, n)
    return hidden if model.connector is None else model.connector(hidden)

  def loss(self, model, batch, rng):
    k_drop, k_sigma, k_noise, k_edit = jax.random.split(rng, 4)
    x0, noise = _noise_like(model, batch, k_noise)
    ids, mask, images = model._edit_inputs(k_edit, batch)
    loss, metrics = _flow_loss(model, batch, x0, noise, model.condition(ids, mask, images), k_drop, k_sigma)
    return loss, {**metrics, "gen_loss": loss}

  def sample(self, model, ids, mask, rng, *, num_steps, guidance, solver, shift, cond_images, image_guidance):
    c = model.config
    _, k_x = jax.random.split(rng)
    cond = model.condition(ids, mask, cond_images)
    if cond_images is not None:
      vfn = _image_text_guided(model, ids, mask, cond, None, cond_images, image_guidance, guidance)
    else:
      null = model.null_condition(cond) if c.cfg_null == "empty_caption" and guidance != 1.0 else None
      vfn = _guided(model, cond, None, None, guidance, null)
    return _finish(model, vfn, _x_init(model, ids, k_x), num_steps, solver, shift), None


class LayerwisePath(GenerationPath):
  """LaTtE-Flow: the DiT's layer groups read the LLM's per-layer prompt states [B, L, T, D], each
  trained on its own σ interval; the loss is their mean."""

  def condition(self, model, ids, mask, images):
    out = model.llm.forward(None, patch_tokens.positions_of(mask), mask,
                            inputs_embeds=model.prompt_embeddings(ids, images), return_layer_outputs=True)
    return jnp.moveaxis(out.layer_outputs, 0, 1)

  def loss(self, model, batch, rng):
    c = model.config
    k_drop, k_sigma, k_noise, k_edit = jax.random.split(rng, 4)
    x0, noise = _noise_like(model, batch, k_noise)
    ids, mask, images = model._edit_inputs(k_edit, batch)
    cond, cond_mask = model.condition(ids, mask, images), mask
    cond = flow.drop_condition(k_drop, cond, c.cond_dropout, null="zeros")
    metrics, losses = {}, []
    for k in range(c.dit.num_groups):
      sig = model.dit.group_sigmas(jax.random.fold_in(k_sigma, k), x0.shape[0], k)
      v = model.dit.velocity(flow.noisy_input(x0, noise, sig), sig, cond, cond_mask, group=k)
      losses.append(flow.flow_matching_loss(v, x0, noise))
      metrics[f"gen_loss_group{k}"] = losses[-1]
    loss = sum(losses) / len(losses)
    return loss, {**metrics, "gen_loss": loss}

  def sample(self, model, ids, mask, rng, *, num_steps, guidance, solver, shift, cond_images, image_guidance):
    _, k_x = jax.random.split(rng)
    cond, cond_mask = model.condition(ids, mask, cond_images), mask.astype(jnp.int32)
    if cond_images is not None:
      vfn = _image_text_guided(model, ids, mask, cond, cond_mask, cond_images, image_guidance, guidance)
    else:
      vfn = _guided(model, cond, cond_mask, None, guidance)
    return _finish(model, vfn, _x_init(model, ids, k_x), num_steps, solver, shift), None


class ImageTokenPath(GenerationPath):
  """BLIP3o-NEXT: CE over [prompt, <im_start>, <S_k>, image tokens] plus flow_weight × the DiT's flow
  loss on the teacher-forced image-token states; sampling draws the tokens, then runs the DiT. Edits:
  the reference's tokens fill the prompt's placeholders (and its latents reach the DiT per edit_latents);
  2-way CFG against the zero null, `image_guidance` unused."""

  def loss(self, model, batch, rng):
    c = model.config
    k_drop, k_sigma, k_noise, k_edit = jax.random.split(rng, 4)
    x0, noise = _noise_like(model, batch, k_noise)
    ids, mask, ref_images = model._edit_inputs(k_edit, batch)
    codes = model.image_codes(batch["gen_image"])
    seq, full_mask, hidden, cond, ref = model.image_token_forward(ids, mask, codes, ref_images)
    logits = model.llm.logits(hidden[:, :-1])
    # CE over the text and image tokens: every real target token except <im_start>/<S_k> (and an edit
    # reference's tokens, which are inputs).
    weight = full_mask[:, 1:].astype(jnp.float32) * (jnp.cumsum(full_mask, 1)[:, :-1] > 0)
    t = ids.shape[1]
    weight = weight.at[:, t - 1:t + 1].set(0.0)
    if ref_images is not None:
      weight = weight.at[:, :t - 1].multiply((ids[:, 1:] != c.image_token_id).astype(jnp.float32))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), seq[:, 1:])
    ce = (nll * weight).sum() / jnp.maximum(weight.sum(), 1.0)
    flow_loss, metrics = _flow_loss(model, batch, x0, noise, cond, k_drop, k_sigma, ref)
    loss = ce + c.flow_weight * flow_loss
    return loss, {"gen_ce": ce, **metrics, "gen_loss": loss}

  def sample(self, model, ids, mask, rng, *, num_steps, guidance, solver, shift, cond_images, image_guidance):
    k_tok, k_x = jax.random.split(rng)
    codes = model.sample_image_tokens(ids, mask, k_tok, ref_images=cond_images)
    # Re-encoded, teacher-forced states (+ the reference's latent tokens when editing).
    _, _, _, cond, ref = model.image_token_forward(ids, mask, codes, cond_images)
    vfn = _guided(model, cond, None, ref, guidance)
    return _finish(model, vfn, _x_init(model, ids, k_x), num_steps, solver, shift), codes


class PatchTokenPath(GenerationPath):
  """The LLM's own sparse palette-patch tokens (patch_tokens.py): CE with CFG prompt dropout; sampling
  at `patch_tokens.temperature` with CFG scale `guidance` against the empty prompt; `num_steps`,
  `solver`, `shift` and `image_guidance` unused. Edits condition on the source at the placeholders
  (and, with edit_reference="copy", through the head's copy path)."""

  def loss(self, model, batch, rng):
    c = model.config
    k_drop, _, _, k_edit = jax.random.split(rng, 4)
    ids, mask, images = model._edit_inputs(k_edit, batch)
    drop = jax.random.uniform(k_drop, (ids.shape[0],)) < c.cond_dropout   # CFG: the empty prompt
    mask = jnp.where(drop[:, None], 0, mask)
    embeds, ref = model.patch_prompt(ids, mask, images)
    loss, metrics = patch_tokens.training_loss(model.llm, model.patch_head, model.patch_tokenizer, embeds, mask,
                                               batch["gen_image"], ref)
    return loss, {**metrics, "gen_loss": loss}

  def sample(self, model, ids, mask, rng, *, num_steps, guidance, solver, shift, cond_images, image_guidance):
    pt = model.config.patch_tokens
    k_tok, _ = jax.random.split(rng)
    embeds, ref = model.patch_prompt(ids, mask.astype(jnp.int32), cond_images)
    tokens = patch_tokens.sample(model.llm, model.patch_head, embeds, mask, k_tok, guidance=guidance,
                                 temperature=pt.temperature, pattern_temperature=pt.pattern_temperature, ref=ref)
    return model.patch_tokenizer.decode(*tokens), tokens


PATHS: dict[str, GenerationPath] = {"queries": QueryPath(), "layerwise": LayerwisePath(),
                                    "image_tokens": ImageTokenPath(), "patch_tokens": PatchTokenPath()}
