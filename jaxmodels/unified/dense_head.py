"""Auxiliary dense labels for the understanding encoder: per-token classification of what is there.

A tiny understanding encoder trained from scratch only through the LLM's answer loss learns *where*
colours are quickly but *which shape* an object is very slowly (a 2-layer ViT with a conv stem reaches
0.23 on ShapesWorld shape questions after 1000 joint steps, BENCHMARKS.md). A linear head on every
encoder token, trained to name the object covering that token's cell (its shape and its colour, from the
renderer's exact masks: `input_pipeline.shapes_tasks.dense_labels`), gives the encoder a direct,
dense signal; the LLM then only has to route features that already name the objects. The head is used
for the loss only (answers never read it).

Enabled by `UnifiedConfig.und_dense_weight > 0` with `und_dense_classes` = the number of classes of each
label channel, background (0) included — ShapesWorld: (7, 11) = 1 + 6 shapes, 1 + 10 colours. The batch
carries und_labels int32 [B, g, g, C] on the encoder's g×g token grid (`data.dense_labels`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmodels.layers import Linear


class DenseLabelHead(nnx.Module):
  """tokens [B, N, D] -> logits [B, N, ΣK] for C label channels with K_c classes each."""

  def __init__(self, dim: int, classes: Sequence[int], *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.classes = tuple(int(k) for k in classes)
    self.proj = Linear(dim, sum(self.classes), axes=("embed", None), use_bias=True, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)

  def loss(self, tokens: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over the labelled tokens, summed over channels; labels int [B, g, g, C]
    (N = g²), a negative label = no label there (an image without a scene, e.g. a ColorBench-style
    plate), left out of the mean.

    Metrics: und_dense_loss and und_dense_acc_<c> (token accuracy of channel c)."""
    b, n, _ = tokens.shape
    labels = labels.reshape(b, n, len(self.classes))
    logits = self.proj(tokens).astype(jnp.float32)
    total, metrics, start = jnp.zeros((), jnp.float32), {}, 0
    for c, k in enumerate(self.classes):
      part = logits[..., start:start + k]
      start += k
      target = labels[..., c]
      w = (target >= 0).astype(jnp.float32)
      count = jnp.maximum(w.sum(), 1.0)
      nll = optax.softmax_cross_entropy_with_integer_labels(part, jnp.maximum(target, 0))
      total += (nll * w).sum() / count
      metrics[f"und_dense_acc_{c}"] = ((part.argmax(-1) == target) * w).sum() / count
    metrics["und_dense_loss"] = total
    return total, metrics
