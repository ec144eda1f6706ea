"""Compiled image sampling from a `UnifiedModel`, shared by the evaluations and the server.

    images = to_uint8(sample_images(model, ids, mask, rng, num_steps=20, guidance=3.0))   # [B, H, W, 3]
    edited = sample_edits(model, ids, mask, rng, cond_images, num_steps, guidance, image_guidance)
"""
from __future__ import annotations

import numpy as np
from flax import nnx


@nnx.jit(static_argnames=("num_steps", "guidance"))
def sample_images(model, ids, mask, rng, num_steps, guidance):
  """Prompts [B, T] -> images [B, H, W, 3] in [-1, 1] (`UnifiedModel.generate_image`)."""
  return model.generate_image(ids, mask, rng, num_steps=num_steps, guidance=guidance)


@nnx.jit(static_argnames=("num_steps", "guidance", "image_guidance"))
def sample_edits(model, ids, mask, rng, cond_images, num_steps, guidance, image_guidance):
  """Edit prompts [B, T] with their input images [B, k, H, W, 3] -> edited images [B, H, W, 3]."""
  return model.generate_image(ids, mask, rng, num_steps=num_steps, guidance=guidance,
                              cond_images=cond_images, image_guidance=image_guidance)


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
