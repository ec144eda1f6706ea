"""Train state and the jitted train step (gradient accumulation, frozen params, EMA, donation).

A model trains if it has `loss(batch, rng) -> (loss, metrics: dict[str, scalar])`. The train state
is one NNX module (model + optimizer + optional EMA copy of a sub-module) that is split into a pure
`nnx.State` for `jax.jit`, so its shardings are explicit and its buffers are donated every step.

    ts = TrainState(model, tx, wrt=trainable_filter(frozen=[r"llm/.*"]), ema_decay=0.999, ema_path="dit")
    step_fn = make_train_step(ts, accum_steps=2, lr_schedule=lr)      # jitted, donates the state
    graphdef, state = nnx.split(ts)
    state, metrics = step_fn(state, batch, rng)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmodels.errors import ConfigError


def get_submodule(model: nnx.Module, path: str | None) -> nnx.Module:
  """The sub-module at `path` ("a/b"; '' or None = the model); a ConfigError names a missing one."""
  node = model
  for part in (path or "").split("/"):
    if part:
      node = getattr(node, part, None)
      if node is None:
        raise ConfigError(f"config.train.ema_path={path!r}: the model has no sub-module {part!r} "
                          f"(use '' for the whole model)")
  return node


class TrainState(nnx.Module):
  """model + nnx.Optimizer over the `wrt` params + EMA of `ema_path` (a sub-module, '' = all)."""

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, *, wrt=nnx.Param,
               ema_decay: float | None = None, ema_path: str | None = None):
    self.model = model
    self.wrt = wrt
    self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    self.ema_decay, self.ema_path = ema_decay, ema_path
    ema = None
    if ema_decay:
      ema = nnx.clone(get_submodule(model, ema_path))
      # Own buffers (a clone shares the arrays, which donation forbids).
      nnx.update(ema, jax.tree.map(jnp.copy, nnx.state(ema)))
    self.ema = nnx.data(ema)

  def eval_model(self) -> nnx.Module:
    """The model to evaluate and sample from: `model` with the EMA weights in place of `ema_path`'s
    (a copy; the training model is untouched), or `model` itself without EMA."""
    if self.ema is None:
      return self.model
    model = nnx.clone(self.model)
    nnx.update(get_submodule(model, self.ema_path), nnx.state(self.ema))
    return model


def _split_microbatches(batch: Any, k: int) -> Any:
  def one(x):
    if x.shape[0] % k:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by accum_steps={k}")
    return x.reshape(k, x.shape[0] // k, *x.shape[1:])
  return jax.tree.map(one, batch)


def train_step(ts: TrainState, batch: Any, rng: jax.Array, *, accum_steps: int = 1,
               lr_schedule: Callable | None = None, virtual_step: jax.Array | None = None
               ) -> dict[str, jax.Array]:
  """One optimizer step on `batch` (split into `accum_steps` micro-batches); updates ts in place.
  `virtual_step`: the schedule position of this update under `optim.clock="time"` (trainer/optim.py),
  passed on to the optimizer; None: the optimizer counts steps itself."""
  graphdef, params, rest = nnx.split(ts.model, ts.wrt, ...)

  def loss_fn(p, mb, key):
    # copy=True: fresh Variables at this trace level (nnx.scan inside the model checks it).
    loss, metrics = nnx.merge(graphdef, p, rest, copy=True).loss(mb, key)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, metrics), grads = grad_fn(params, batch, rng)
  else:
    micro = _split_microbatches(batch, accum_steps)
    keys = jax.random.split(rng, accum_steps)

    def body(acc, xs):
      mb, key = xs
      (l, m), g = grad_fn(params, mb, key)
      return jax.tree.map(jnp.add, acc, (l, m, g)), None

    (l0, m0), g0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), keys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, m0, g0))
    (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, keys))
    loss, metrics, grads = jax.tree.map(lambda x: x / accum_steps, (loss, metrics, grads))

  step = ts.optimizer.step[...] if virtual_step is None else virtual_step
  extra = {} if virtual_step is None else {"virtual_step": virtual_step}
  ts.optimizer.update(ts.model, grads, **extra)
  if ts.ema is not None:
    decay = ts.ema_decay
    new = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype),
                       nnx.state(ts.ema, nnx.Param), nnx.state(get_submodule(ts.model, ts.ema_path), nnx.Param))
    nnx.update(ts.ema, new)
  out = dict(metrics)
  out["loss"] = loss
  out["grad_norm"] = optax.global_norm(grads)
  if lr_schedule is not None:
    out["lr"] = lr_schedule(step)
  return out


def make_train_step(ts: TrainState, *, accum_steps: int = 1, lr_schedule: Callable | None = None,
                    state_shardings=None, batch_sharding=None, clock: str = "steps"):
  """Returns jitted `step(state, batch, rng) -> (state, metrics)` over `nnx.split(ts)[1]`;
  `clock="time"` (an optimizer from `optim.clock="time"`): `step(state, batch, rng, virtual_step)`.

  The state argument is donated; pass shardings to pin the layout on a mesh. A step whose loss or
  gradients are not finite leaves the whole state (params, optimizer moments and step count, EMA)
  unchanged, selected inside the compiled step; `metrics["nonfinite"]` is 1.0 for such a step.
  """
  graphdef = nnx.graphdef(ts)

  def step(state, batch, rng, virtual_step=None):
    ts_ = nnx.merge(graphdef, state, copy=True)   # `state` keeps the old values (see the select below)
    metrics = train_step(ts_, batch, rng, accum_steps=accum_steps, lr_schedule=lr_schedule,
                         virtual_step=virtual_step)
    new = nnx.state(ts_)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    new = jax.lax.cond(finite, lambda n, o: n, lambda n, o: o, new, state)   # any leaf dtype (keys too)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return new, metrics

  timed = clock == "time"            # (make_optimizer has checked the name)
  fn = step if timed else (lambda state, batch, rng: step(state, batch, rng))
  kw = {}
  if state_shardings is not None:
    ins = (state_shardings, batch_sharding, None) + ((None,) if timed else ())
    kw = dict(in_shardings=ins, out_shardings=(state_shardings, None))
  return jax.jit(fn, donate_argnums=(0,), **kw)
