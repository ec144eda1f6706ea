"""Classifier-free guidance for velocity predictions, and condition dropout.

The "unconditional" branch differs between models: BLIP3-o and BLIP3o-NEXT use
an all-zeros conditioning sequence, MetaQuery the MLLM encoding of an empty
caption. `drop_condition` covers both at training time and
`cfg_velocity_fn` takes whichever null condition at sampling time.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxmodels.flow.samplers import VelocityFn

ConditionedVelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def cfg_velocity(v_uncond: jax.Array, v_cond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """Two-way guidance v = v_u + w·(v_c − v_u); w = 1 returns v_c.

  Args:
    v_uncond: [B, ...] velocity under the null condition.
    v_cond: [B, ...] velocity under the real condition.
    scale: guidance weight w (scalar, or broadcastable to [B, ...]).

  Returns:
    [B, ...] guided velocity.
  """
  return v_uncond + scale * (v_cond - v_uncond)


def image_text_guidance(
    v_uncond: jax.Array,
    v_image: jax.Array,
    v_full: jax.Array,
    image_scale: float | jax.Array = 1.5,
    text_scale: float | jax.Array = 3.0,
) -> jax.Array:
  """MetaQuery's three-way guidance for image editing.

  v = v_∅ + s_img·(v_img − v_∅) + s_txt·(v_full − v_img), where
    v_∅    : empty caption and black input images,
    v_img  : real input images and an empty caption,
    v_full : real input images and the real instruction.
  The defaults are MetaQuery's (s_img = 1.5, s_txt = 3.0).

  Args:
    v_uncond: [B, ...] velocity v_∅.
    v_image: [B, ...] velocity v_img.
    v_full: [B, ...] velocity v_full.
    image_scale: s_img.
    text_scale: s_txt.

  Returns:
    [B, ...] guided velocity.
  """
  return v_uncond + image_scale * (v_image - v_uncond) + text_scale * (v_full - v_image)


def cfg_velocity_fn(
    velocity_fn: ConditionedVelocityFn,
    cond: Any,
    null_cond: Any,
    scale: float | jax.Array,
) -> VelocityFn:
  """Wraps a conditional velocity function into a guided `(x, t) -> v`.

  Each call runs `velocity_fn` once on a doubled batch [null rows; cond rows],
  then applies `cfg_velocity`. `cond` and `null_cond` may be pytrees with the
  same structure (e.g. (embeddings, mask)); each null leaf is broadcast to its
  cond leaf's shape, so a single [1, L, D] or [L, D] null embedding works.

  Args:
    velocity_fn: v = velocity_fn(x [2B, ...], t [2B], cond with batch 2B).
    cond: conditioning pytree, leaves with leading batch B.
    null_cond: null conditioning pytree (zeros or empty-caption encoding).
    scale: guidance weight w.

  Returns:
    A function (x [B, ...], t [B]) -> guided v [B, ...], usable with `sample`.
  """
  if jax.tree.structure(cond) != jax.tree.structure(null_cond):
    raise ValueError("null_cond must have the same pytree structure as cond")
  null_cond = jax.tree.map(
      lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond, null_cond
  )
  both_cond = jax.tree.map(lambda n, c: jnp.concatenate([n, c], axis=0), null_cond, cond)

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    v = velocity_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both_cond)
    v_uncond, v_cond = jnp.split(v, 2, axis=0)
    return cfg_velocity(v_uncond, v_cond, scale)

  return guided


def drop_condition(
    rng: jax.Array,
    cond: jax.Array,
    prob: float | jax.Array,
    null: str | jax.Array = "zeros",
    *,
    return_mask: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Replaces each example's condition by the null one with probability `prob`.

  Args:
    rng: a JAX PRNG key.
    cond: [B, ...] conditioning (e.g. [B, L, D] embeddings).
    prob: drop probability in [0, 1] (0.1 in BLIP3-o/MetaQuery).
    null: "zeros" (BLIP3-o style), or an array broadcastable to cond.shape[1:]
      or to cond.shape, e.g. an empty-caption embedding [L, D] or [1, L, D].
    return_mask: also return the [B] boolean mask of dropped rows.

  Returns:
    [B, ...] conditioning, or (conditioning, dropped [B]) if `return_mask`.
  """
  if isinstance(prob, (int, float)) and not 0.0 <= prob <= 1.0:
    raise ValueError(f"prob must lie in [0, 1], got {prob}")
  if isinstance(null, str):
    if null != "zeros":
      raise ValueError(f"null must be 'zeros' or an array, got {null!r}")
    null_value = jnp.zeros_like(cond)
  else:
    try:
      null_value = jnp.broadcast_to(jnp.asarray(null, cond.dtype), cond.shape)
    except ValueError:
      message = f"null of shape {jnp.shape(null)} does not broadcast to cond shape {cond.shape}"
      raise ValueError(message) from None
  dropped = jax.random.uniform(rng, (cond.shape[0],)) < prob
  mask = dropped.reshape((-1,) + (1,) * (cond.ndim - 1))
  out = jnp.where(mask, null_value, cond)
  return (out, dropped) if return_mask else out
