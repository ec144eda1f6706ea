"""Train state, optimizer filters, gradient accumulation, EMA, checkpoints and metrics."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import sharding
from jaxmodels.checkpoint import Checkpointer
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.trainer import MetricWriter, TrainState, make_optimizer, make_train_step, trainable_filter
from jaxmodels.trainer.optim import ScheduleClock, learning_rate_schedule, virtual_step

CFG = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


class TinyLM(LLM):
  def loss(self, batch, rng):
    logits = self(batch["ids"][:, :-1])
    ll = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["ids"][:, 1:, None], -1)
    return -ll.mean(), {"nll": -ll.mean()}


BATCH = {"ids": jnp.asarray(np.random.RandomState(0).randint(0, 64, (8, 10)))}


def _paths(state):
  return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


def test_schedule_warmup_then_cosine():
  lr = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
  assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 0.5) < 1e-6 and abs(float(lr(10)) - 1.0) < 1e-6
  assert abs(float(lr(110)) - 0.1) < 1e-6 and float(lr(60)) < 1.0


def test_time_clock_is_adamw_at_the_virtual_steps_schedule():
  """optim.clock="time": AdamW at rate 1 scaled by schedule(v) equals optax.adamw on the step clock
  when v = the steps done, and at v = total runs at the final learning rate."""
  o = dict(lr=1e-2, warmup_steps=2, clip_norm=1.0, weight_decay=0.1, min_lr_ratio=0.1)
  outs = {}
  for clock in ("steps", "time"):
    tx, lr = make_optimizer({**o, "clock": clock}, 10)
    ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx)
    step = make_train_step(ts, lr_schedule=lr, clock=clock)
    graphdef, state = nnx.split(ts)
    lrs = []
    for i in range(3):
      args = (np.float32(i),) if clock == "time" else ()
      state, metrics = step(state, BATCH, jax.random.key(i), *args)
      lrs.append(float(metrics["lr"]))
    outs[clock] = (lrs, jax.tree.map(np.asarray, nnx.state(nnx.merge(graphdef, state).model, nnx.Param)))
  np.testing.assert_allclose(outs["steps"][0], outs["time"][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), outs["steps"][1], outs["time"][1])
  tx, lr = make_optimizer({**o, "clock": "time"}, 10)
  ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx)
  _, metrics = make_train_step(ts, lr_schedule=lr, clock="time")(nnx.state(ts), BATCH, jax.random.key(0),
                                                                 np.float32(10))
  assert abs(float(metrics["lr"]) - 1e-3) < 1e-9      # lr * min_lr_ratio at the end of the budget
  with pytest.raises(Exception, match="optim.clock"):
    make_optimizer({**o, "clock": "wall"}, 10)


def test_virtual_step_is_the_larger_of_steps_and_time_spent():
  assert virtual_step(5, start=0, total=100, elapsed_minutes=1.0, limit_minutes=None) == 4.0
  assert virtual_step(11, start=0, total=100, elapsed_minutes=5.0, limit_minutes=10.0) == 50.0
  assert virtual_step(80, start=0, total=100, elapsed_minutes=1.0, limit_minutes=10.0) == 79.0
  assert virtual_step(30, start=0, total=100, elapsed_minutes=20.0, limit_minutes=10.0) == 100.0
  # a resumed run spends its own budget on the steps it has left
  assert virtual_step(61, start=60, total=100, elapsed_minutes=5.0, limit_minutes=10.0) == 80.0
  # the trainers' side: the step clock adds no argument, the time clock one f32 virtual step
  assert ScheduleClock("steps", start=0, total=100, limit_minutes=10.0).args(7) == ()
  (v,) = ScheduleClock("time", start=0, total=100, limit_minutes=10.0).args(7)
  assert v.dtype == np.float32 and 6.0 <= float(v) < 7.0
  with pytest.raises(Exception, match="optim.clock"):
    ScheduleClock("wall", start=0, total=100, limit_minutes=None)


def test_frozen_params_stay_bit_identical_and_have_no_optimizer_state():
  tx, lr = make_optimizer(dict(lr=1e-2, warmup_steps=1, clip_norm=1.0, weight_decay=0.1), 10)
  ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx, wrt=trainable_filter(frozen=[r"embed/.*", r"layers/blocks/0/.*"]))
  frozen_before = jax.tree.map(np.asarray, (nnx.state(ts.model.embed), nnx.state(ts.model.layers.blocks[0])))
  trained_before = np.asarray(ts.model.layers.blocks[1].mlp.up.kernel.get_value())
  opt_paths = _paths(nnx.state(ts.optimizer, nnx.optimizer.OptState))
  assert not any("embed/" in p or "blocks/0/" in p for p in opt_paths)
  assert any("blocks/1/mlp/up/kernel" in p for p in opt_paths)
  step = make_train_step(ts, lr_schedule=lr)
  graphdef, state = nnx.split(ts)
  for i in range(3):
    state, metrics = step(state, BATCH, jax.random.key(i))
  ts = nnx.merge(graphdef, state)
  after = jax.tree.map(np.asarray, (nnx.state(ts.model.embed), nnx.state(ts.model.layers.blocks[0])))
  jax.tree.map(np.testing.assert_array_equal, frozen_before, after)
  assert not np.array_equal(trained_before, np.asarray(ts.model.layers.blocks[1].mlp.up.kernel.get_value()))
  assert int(ts.optimizer.step.get_value()) == 3 and np.isfinite(float(metrics["loss"]))


def test_gradient_accumulation_equals_full_batch():
  results = []
  for accum in (1, 4):
    tx, _ = make_optimizer(dict(lr=1e-2, name="sgd", warmup_steps=0), 10)
    ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx)
    graphdef, state = nnx.split(ts)
    state, metrics = make_train_step(ts, accum_steps=accum)(state, BATCH, jax.random.key(0))
    results.append((float(metrics["loss"]), np.asarray(nnx.merge(graphdef, state).model.norm.scale.get_value())))
  assert abs(results[0][0] - results[1][0]) < 1e-5
  np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)


def test_ema_tracks_the_submodule():
  tx, _ = make_optimizer(dict(lr=1e-1, name="sgd", warmup_steps=0), 10)
  ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx, ema_decay=0.5, ema_path="norm")
  start = np.asarray(ts.model.norm.scale.get_value())
  graphdef, state = nnx.split(ts)
  state, _ = make_train_step(ts)(state, BATCH, jax.random.key(0))
  ts = nnx.merge(graphdef, state)
  np.testing.assert_allclose(ts.ema.scale.get_value(), 0.5 * start + 0.5 * np.asarray(ts.model.norm.scale.get_value()),
                             atol=1e-6)
  # Evaluation uses the EMA weights in a copy; the training model keeps its own.
  trained = np.asarray(ts.model.norm.scale.get_value())
  ev = ts.eval_model()
  np.testing.assert_array_equal(ev.norm.scale.get_value(), ts.ema.scale.get_value())
  np.testing.assert_array_equal(ts.model.norm.scale.get_value(), trained)
  assert not np.array_equal(trained, ts.ema.scale.get_value())
  np.testing.assert_array_equal(ev.embed.embedding.get_value(), ts.model.embed.embedding.get_value())


def test_checkpoint_roundtrip_and_resharding_restore(tmp_path):
  tx, _ = make_optimizer(dict(lr=1e-2, warmup_steps=0), 10)
  ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx)
  graphdef, state = nnx.split(ts)
  step = make_train_step(ts)
  state, _ = step(state, BATCH, jax.random.key(0))
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
  for s in (1, 2, 3):
    ckpt.save(s, state, config={"name": "tiny", "step": s})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
  assert ckpt.restore_config(3) == {"name": "tiny", "step": 3}
  # Restore onto a (data=2, fsdp=2, tensor=2) mesh: the state comes back sharded with equal values.
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.state_shardings(nnx.state(ts), mesh)
  target = sharding.abstract_state(nnx.state(ts), shardings)
  restored = ckpt.restore(3, target)
  q = restored["model"]["layers"]["blocks"][0]["attn"]["q"]["kernel"]
  q = q.get_value() if isinstance(q, nnx.Variable) else q
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state),
               jax.tree.map(np.asarray, restored))
  next_a = step(jax.tree.map(jnp.copy, state), BATCH, jax.random.key(1))[1]["loss"]
  next_b = step(jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), restored), BATCH,
                jax.random.key(1))[1]["loss"]
  assert float(next_a) == float(next_b)
  with pytest.raises(Exception, match="no checkpoint for step 7"):
    ckpt.restore(7, target)
  ckpt.close()


def test_metric_writer_lines_jsonl_eta_and_nan_guard(tmp_path, capsys):
  w = MetricWriter(str(tmp_path), total_steps=100, batch_size=8, tokens_per_example=10)
  w.write(1, {"loss": 2.0})
  w.write(11, {"loss": 1.0})
  w.write(0, {"accuracy": 0.5}, prefix="eval")
  out = capsys.readouterr().out
  assert "[train] step 11/100" in out and "ETA" in out and "examples_per_sec" in out
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows[1]["train/loss"] == 1.0 and "train/tokens_per_sec" in rows[1] and rows[2]["eval/accuracy"] == 0.5
  assert "train/steps_per_sec" not in rows[0]   # the first interval holds the compile
  with pytest.raises(FloatingPointError, match="NaN/Inf guard"):
    w.write(12, {"loss": float("nan")})
  w.close()
  assert (tmp_path / "tb").is_dir()
  # a time limit caps the ETA at the time left (a time-limited run stops before its last step)
  w = MetricWriter(str(tmp_path / "limited"), total_steps=10**9, batch_size=8, time_limit_minutes=1.0,
                   tensorboard=False)
  w.write(1, {"loss": 2.0})
  row = w.write(2, {"loss": 1.0})
  assert 0.0 <= row["train/eta_sec"] <= 60.0
  w.close()


def test_init_from_another_runs_checkpoint_loads_weights_only(tmp_path):
  """config.init.checkpoint: the other run's model weights (EMA restarted from them), a fresh
  optimizer; unknown init keys are one-line errors."""
  import ml_collections

  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.setup import initialize
  tx, _ = make_optimizer(dict(lr=1e-2, warmup_steps=0), 10)
  ts = TrainState(TinyLM(CFG, rngs=nnx.Rngs(0)), tx)
  graphdef, state = nnx.split(ts)
  state, _ = make_train_step(ts)(state, BATCH, jax.random.key(0))
  state, _ = make_train_step(ts)(state, BATCH, jax.random.key(1))
  ckpt = Checkpointer(str(tmp_path / "run1" / "checkpoints"), async_save=False)
  ckpt.save(2, state)
  ckpt.close()
  trained = jax.tree.map(lambda x: np.array(x, copy=True), nnx.state(nnx.merge(graphdef, state).model))

  fresh = TrainState(TinyLM(CFG, rngs=nnx.Rngs(5)), tx, ema_decay=0.9, ema_path="norm")
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  config = ml_collections.ConfigDict({"init": {"checkpoint": str(tmp_path / "run1")}})
  initialize(config, fresh, mesh, None)
  jax.tree.map(np.testing.assert_array_equal, trained, jax.tree.map(np.asarray, nnx.state(fresh.model)))
  np.testing.assert_array_equal(fresh.ema.scale.get_value(), trained["norm"]["scale"])
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(nnx.state(fresh.optimizer.opt_state)))
  with pytest.raises(ConfigError, match="config.init.chekpoint: unknown key"):
    initialize(ml_collections.ConfigDict({"init": {"chekpoint": "x"}}), fresh, mesh, None)


def test_checkpoint_save_compiles_nothing_unless_replica_parallel(tmp_path, caplog):
  """Orbax's replica-parallel save slices each replicated array on device (an eager op compiled per
  shape: 13 s of compiles at a run's first save); `replica_parallel=False`, the default, saves whole
  shards. Counted through JAX's compile log, on arrays replicated over the 8 test devices."""
  import logging

  from jax.sharding import NamedSharding

  from jaxmodels.checkpoint import set_replica_parallel
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((8,), ("data",))

  def save_and_count(replica_parallel: bool, n: int) -> int:
    state = {f"w{i}": jax.device_put(jnp.full((16, 8 + i + n), float(i)), NamedSharding(mesh, P()))
             for i in range(3)}
    jax.block_until_ready(state)
    ck = Checkpointer(str(tmp_path / f"rp_{replica_parallel}"), async_save=False,
                      replica_parallel=replica_parallel)
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
      ck.save(1, state)
    ck.close()
    return sum("Compiling" in r.getMessage() for r in caplog.records)

  try:
    assert save_and_count(False, 0) == 0
    assert save_and_count(True, 100) > 0        # the check can fail: replica-parallel compiles slices
  finally:
    set_replica_parallel(False)                                   # back to the default for this worker


def test_no_remat_on_multiprocess_cpu(monkeypatch):
  from configs import shapes_tiny
  from jaxmodels.trainer.setup import no_remat_on_multiprocess_cpu
  config = shapes_tiny.get_config("target=ae")
  config.model.llm.remat = config.model.und_encoder.remat = config.model.dit.remat = "dots"
  assert no_remat_on_multiprocess_cpu(config) == (config, [])          # one process: unchanged
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  changed, paths = no_remat_on_multiprocess_cpu(config)
  assert sorted(paths) == ["model.dit.remat", "model.llm.remat", "model.und_encoder.remat"]
  assert changed.model.llm.remat == changed.model.dit.remat == "none"
  assert config.model.llm.remat == "dots"                               # the caller's config is kept
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert no_remat_on_multiprocess_cpu(config)[1] == []                  # accelerators keep remat


def test_init_keys_are_declared_so_the_command_line_can_set_them():
  """config.init.checkpoint and config.init.hf.<part> exist (unset) in every config, so --config.init...
  overrides work on the locked config; init_sources drops the unset ones."""
  from configs import shapes_tiny
  from jaxmodels.config_utils import init_sources, set_values
  config = shapes_tiny.get_config()
  assert init_sources(config) == {}
  config.lock()
  set_values(config, ["init.checkpoint=/runs/a", "init.hf.llm=/models/qwen"])
  assert init_sources(config) == {"checkpoint": "/runs/a", "hf": {"llm": "/models/qwen"}}


def test_eval_keys_the_code_reads_are_declared_so_the_command_line_can_set_them():
  """Every config.evals key the evaluations read exists in the locked config (unset sizes follow
  geneval_prompts), so e.g. --config.evals.rover_tasks=4 is accepted."""
  from configs import shapes_tiny
  from jaxmodels.config_utils import set_values
  config = shapes_tiny.get_config()
  config.lock()
  assert config.evals.rover_tasks is None and config.evals.loop_samples == 16
  set_values(config, ["evals.rover_tasks=4", "evals.colorbench_per_task=2", "evals.colorbench_seeds=3",
                      "evals.colorbench_image_size=48", "evals.loop_samples=8", "evals.mctune_cases=5"])
  assert (config.evals.rover_tasks, config.evals.colorbench_per_task, config.evals.mctune_cases) == (4, 2, 5)


def test_make_optimizer_defaults_are_the_schema_and_unknown_keys_are_named():
  """A partial config.optim takes config_schema's declared defaults (the ones docs/CONFIG.md lists), so
  the library and a config file built from base_config() train alike."""
  from jaxmodels.config_schema import base_config
  from jaxmodels.errors import ConfigError
  declared = base_config().optim.to_dict()
  (tx_part, lr_part), (tx_full, lr_full) = make_optimizer({"lr": 3e-3}, 500), make_optimizer(
      {**declared, "lr": 3e-3}, 500)
  assert [float(lr_part(s)) for s in (0, 50, 100, 499)] == [float(lr_full(s)) for s in (0, 50, 100, 499)]
  assert float(lr_part(declared["warmup_steps"])) == pytest.approx(3e-3)
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
  grads = {"w": jnp.full((3, 4), 5.0), "b": jnp.full((4,), -2.0)}   # norm > 1: the declared clip applies
  updates = []
  for tx in (tx_part, tx_full):
    state = tx.init(params)
    for _ in range(3):
      u, state = tx.update(grads, state, params)
    updates.append(u)
  jax.tree.map(np.testing.assert_array_equal, updates[0], updates[1])
  with pytest.raises(ConfigError, match=r"^config.optim.warmup: unknown key \(known: name, lr, warmup_steps"):
    make_optimizer({"warmup": 3}, 10)
