"""Faults the trainer survives: SIGTERM/SIGINT, non-finite steps, bad checkpoints, workdirs and meshes."""
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import train
from configs import shapes_tiny
from jaxmodels.checkpoint import Checkpointer
from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.unified.model_io import model_io
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.trainer import TrainState, make_optimizer, make_train_step
from jaxmodels.trainer.metrics import NonFiniteError, NonFiniteGuard
from jaxmodels.trainer.setup import mesh_and_rules

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
BATCH = {"ids": jnp.asarray(np.random.RandomState(0).randint(0, 64, (8, 10))), "poison": jnp.zeros(())}


class PoisonLM(LLM):
  """A tiny LM whose loss is NaN when batch["poison"] > 0 (or whose gradients are, for poison > 1)."""

  def loss(self, batch, rng):
    logits = self(batch["ids"][:, :-1])
    ll = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["ids"][:, 1:, None], -1)
    loss = -ll.mean()
    loss = jnp.where(batch["poison"] == 1, jnp.nan, loss)
    # poison == 2: the value stays finite but d/d(scale) sqrt(s - s + 0) = inf - inf = NaN.
    switch = jnp.where(batch["poison"] == 2, 0.0, 1.0)
    s = jnp.sum(self.norm.scale[...])
    loss = loss + jnp.sqrt(s - s + switch) - jnp.sqrt(switch)
    return loss, {"nll": -ll.mean()}


def _config(data_dir, **train_overrides):
  c = shapes_tiny.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(log_every=1, eval_every=1000, **train_overrides)
  c.evals.update(qa_per_kind=1, geneval_prompts=2, sample_steps=1, batch_size=2)
  c.checkpoint.async_save = False
  return c


def _flat(state):
  keys = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
  return [np.array(jax.random.key_data(x) if keys(x) else x, copy=True) for x in jax.tree.leaves(state)]


############################ Non-finite steps ##############################

def test_nonfinite_step_leaves_the_state_unchanged():
  tx, lr = make_optimizer(dict(lr=1e-2, warmup_steps=1), 10)
  ts = TrainState(PoisonLM(CFG, rngs=nnx.Rngs(0)), tx, ema_decay=0.9, ema_path="norm")
  step = make_train_step(ts, lr_schedule=lr)
  _, state = nnx.split(ts)
  state, m = step(state, BATCH, jax.random.key(0))
  assert float(m["nonfinite"]) == 0.0
  for poison in (1.0, 2.0):       # a NaN loss; finite loss but NaN gradients
    before = _flat(state)
    state, m = step(state, {**BATCH, "poison": jnp.asarray(poison)}, jax.random.key(1))
    assert float(m["nonfinite"]) == 1.0, poison
    for a, b in zip(before, _flat(state)):
      np.testing.assert_array_equal(a, b)   # params, Adam moments, step count and EMA untouched
  before = _flat(state)
  state, m = step(state, BATCH, jax.random.key(2))
  assert float(m["nonfinite"]) == 0.0 and any(not np.array_equal(a, b) for a, b in zip(before, _flat(state)))


def test_nonfinite_guard_skip_counts_and_stop_raises():
  skip = NonFiniteGuard("skip", 1)
  assert [skip.update(s, f) for s, f in enumerate([0, 1, 1, 1, 0, 1])] == [False, True, True, True, False, True]
  assert skip.total == 4
  stop = NonFiniteGuard("stop", 3)
  for s, f in [(1, 1), (2, 0), (3, 1), (4, 1)]:
    stop.update(s, f, last_checkpoint=2)
  with pytest.raises(NonFiniteError, match=r"3 steps in a row \(steps 3-5.*last finite checkpoint is step 2"):
    stop.update(5, 1, last_checkpoint=2)
  with pytest.raises(ConfigError, match="train.nonfinite"):
    NonFiniteGuard("ignore", 1)


@pytest.mark.slow
def test_train_stops_after_max_nonfinite_naming_the_last_finite_checkpoint(data_dir, tmp_path, monkeypatch):
  """NaN from step 4 on, a checkpoint due at step 4 (inside the streak), asynchronous saves: the run
  stops naming step 2 — committed, the last one before the streak — and commits nothing newer, so
  a rerun does not resume into the diverging state."""
  from jaxmodels.unified import UnifiedModel
  c = _config(data_dir, total_steps=8, ckpt_every=2, nonfinite="stop", max_nonfinite=2)
  c.checkpoint.async_save = True
  base = jax.random.split(jax.random.key(c.seed))[0]     # train.py's step keys: fold_in(base, step)
  original = UnifiedModel.loss

  def poisoned(self, batch, rng):   # NaN from step 4 on, recognised by the step's key
    loss, metrics = original(self, batch, rng)
    bad = jnp.zeros((), bool)
    for s in range(4, 9):
      bad |= jnp.all(jax.random.key_data(rng) == jax.random.key_data(jax.random.fold_in(base, s)))
    return jnp.where(bad, jnp.nan, loss), metrics

  monkeypatch.setattr(UnifiedModel, "loss", poisoned)
  with pytest.raises(NonFiniteError, match=r"2 steps in a row \(steps 4-5.*last finite checkpoint is step 2"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  assert ckpt.all_steps() == [2]
  saved = ckpt.manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved)
             if np.issubdtype(np.asarray(x).dtype, np.floating))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["train/nonfinite"] for r in rows if r["step"] <= 4] == [0, 0, 0, 1]
  ckpt.close()


############################ Signals #######################################

def test_stop_request_records_sigint_and_restores_handlers():
  previous = signal.getsignal(signal.SIGINT)
  stop = train.StopRequest().install()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert stop.requested() and stop.name == "SIGINT"
  finally:
    stop.restore()
  assert signal.getsignal(signal.SIGINT) is previous


def _env(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _cli(workdir, data_dir, *flags):
  return [sys.executable, "train.py", "--config=configs/shapes_tiny.py:runlocal", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.train.log_every=1",
          "--config.train.eval_every=1000", "--config.evals.qa_per_kind=1",
          "--config.evals.geneval_prompts=2", "--config.evals.sample_steps=1", "--config.evals.which=qa",
          *flags]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_next_start_resumes(data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cli(workdir, data_dir, "--config.train.total_steps=1000",
                               "--config.train.ckpt_every=1000"),
                          cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines, deadline = [], time.time() + 240
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("[train] step 1/1000"):
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "".join(lines[-30:])
  lines += proc.stdout.readlines()
  out = "".join(lines)
  assert proc.wait(timeout=120) == 0, out[-3000:]
  m = re.search(r"stopped by SIGTERM at step (\d+); checkpoint .*/(\d+) committed", out)
  assert m and m.group(1) == m.group(2), out[-3000:]
  stopped = int(m.group(1))
  assert stopped >= 2 and (workdir / "checkpoints" / str(stopped) / "state").is_dir()
  assert not (workdir / "scores.json").exists()          # no final evaluation after a preemption

  again = subprocess.run(_cli(workdir, data_dir, f"--config.train.total_steps={stopped + 1}"), cwd=REPO,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"at step {stopped}" in again.stderr and "resumed from" in again.stderr
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r][-1] == stopped + 1
  assert json.load(open(workdir / "scores.json"))["step"] == stopped + 1


############################ Bad inputs ####################################

def _state(vocab):
  tx, _ = make_optimizer(dict(lr=1e-2, warmup_steps=0), 10)
  return nnx.state(TrainState(PoisonLM(dataclasses.replace(CFG, vocab_size=vocab), rngs=nnx.Rngs(0)), tx))


def test_checkpoint_tree_mismatch_names_the_first_differing_key(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(1, _state(64))
  other = _state(96)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other)
  with pytest.raises(CheckpointFormatError,
                     match=r"does not match the model: model/embed/embedding has shape \(64, 32\) in the "
                           r"checkpoint but \(96, 32\) in the model"):
    ckpt.restore(1, target)
  del target["model"]["norm"]
  with pytest.raises(CheckpointFormatError, match=r"model/embed/embedding has shape"):
    ckpt.restore(1, target)
  same = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(64))
  ckpt.restore(1, same)          # a matching tree restores
  del same["model"]["norm"]
  with pytest.raises(CheckpointFormatError, match=r"model/norm/scale \(32,\) is in the checkpoint but not"):
    ckpt.restore(1, same)
  ckpt.close()


def test_unwritable_workdir_is_one_clear_error(data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ConfigError, match="workdir .*a_file/run is not writable"):
    train.train_and_evaluate(_config(data_dir), str(blocker / "run"))
  r = subprocess.run(_cli(blocker / "run", data_dir), cwd=REPO, env=_env(tmp_path), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: workdir ")
  assert "Traceback" not in r.stderr


def test_mesh_that_does_not_divide_the_devices_is_a_config_error():
  c = shapes_tiny.get_config("runlocal")
  c.mesh.update(data=1, fsdp=3, tensor=1)
  with pytest.raises(ConfigError, match=r"config.mesh=.*'fsdp': 3.*8 devices"):
    mesh_and_rules(c)
  c.mesh.update(data=3, fsdp=-1, tensor=1)
  with pytest.raises(ConfigError, match="config.mesh"):
    mesh_and_rules(c)


def test_unknown_evaluation_name_is_a_config_error():
  from jaxmodels.evals.shapes_eval import EVALS, selected_evals
  c = shapes_tiny.get_config("runlocal")
  assert selected_evals(c) == tuple(sorted(EVALS, key=c.evals.which.split(",").index))
  c.evals.which = " qa, rover "
  assert selected_evals(c) == ("qa", "rover")
  c.evals.which = "qa,genevl"
  with pytest.raises(ConfigError, match=r"config.evals.which: unknown evaluation\(s\) \['genevl'\]"):
    selected_evals(c)


def test_config_typo_is_one_line_with_a_suggestion(tmp_path):
  from jaxmodels.config_utils import check_overrides, override_paths
  c = shapes_tiny.get_config("runlocal")
  argv = ["train.py", "--config=x.py", "--config.train.total_steps=3", "--config.optim.lr", "0.1"]
  assert override_paths(argv) == ["train.total_steps", "optim.lr"]
  check_overrides(c, override_paths(argv))          # existing keys pass
  with pytest.raises(ConfigError, match=r"--config.train.totl_steps: config.train has no key 'totl_steps' "
                                        r"\(did you mean 'total_steps'\?\)"):
    check_overrides(c, ["train.totl_steps"])
  for flag, expected in [
      ("--config.trian.total_steps=3",
       "error: --config.trian.total_steps: config has no key 'trian' (did you mean 'train'?)"),
      ("--config.train.total_steps=abc", "error: flag --config.train.total_steps=abc: invalid literal"),
      ("--config=configs/shapes_tiny.py:runlokal", "error: config argument 'runlokal' is unknown"),
      ("--config=configs/nope.py", "error: config file configs/nope.py does not exist")]:
    r = subprocess.run([sys.executable, "train.py", "--config=configs/shapes_tiny.py:runlocal", flag,
                        f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("I1")]   # absl info lines
    assert r.returncode == 1 and lines[-1].startswith(expected), (flag, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, flag
  assert not (tmp_path / "run").exists()             # nothing was started


def test_corrupt_shapes_world_record_skips_and_counts_or_fails(data_dir, tmp_path, monkeypatch):
  from tensorflow_datasets.core import example_parser

  from input_pipeline import datasets, pipeline
  from jaxmodels.shapes_world import lazy
  from input_pipeline.sources import DataError

  def truncated(self, index):     # every 5th stored scene has a truncated PNG (training reads lazily)
    raw = self._source[index]
    if int(index) % 5 == 0:
      ex = example_parser.tf_example_pb2.Example.FromString(raw)
      png = ex.features.feature["image"].bytes_list.value
      png[0] = png[0][: len(png[0]) // 2]
      raw = ex.SerializeToString()
    return lazy.LazyRecord(raw, self._features, self._byte_fields, self._keys)

  monkeypatch.setattr(lazy.LazySource, "__getitem__", truncated)
  c = _config(data_dir)
  with pipeline.corrupt_record_policy(c.data.get("on_error", "raise")):
    data = datasets.make_train_data(c, str(tmp_path), io=model_io(c.model))
  with pytest.raises(DataError, match=r"record \d+ is corrupt \(.*\); set config.data.on_error='skip'"):
    next(data.iterator)
  before = pipeline.skipped_count()
  with pipeline.corrupt_record_policy("skip"):
    data = datasets.make_train_data(c, str(tmp_path), io=model_io(c.model))
  batches = [next(data.iterator) for _ in range(3)]
  assert all(b["und_ids"].shape[0] == c.data.batch_size for b in batches)
  assert pipeline.skipped_count() > before


############################ Tools #########################################

@pytest.mark.slow
def test_chaos_checkpoint_survives_sigkills(data_dir, tmp_path):
  r = subprocess.run([sys.executable, "tools/chaos_checkpoint.py", "--kills", "1", "--json", "--max_delay", "1.5",
                      f"--workdir={tmp_path / 'chaos'}", f"--data_dir={data_dir}"],
                     cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True, timeout=900)
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert r.returncode == 0, (result, r.stderr[-3000:])
  assert result["kills"] == 1 and result["restorable"] == 1 and "problems" not in result
  assert result["final_step"] >= 1 and result["lost_steps_max"] >= 0


@pytest.mark.slow
def test_plan_compiles_the_tiny_train_step_for_8_devices():
  r = subprocess.run([sys.executable, "tools/plan.py", "--config=configs/blip3o_8b.py:tiny", "--devices=8",
                      "--mesh=data:1,fsdp:8,tensor:1", "--hbm_gb=1", "--json"],
                     cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  plan = json.loads(r.stdout.strip().splitlines()[-1])
  assert plan["devices"] == 8 and plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert 0 < plan["params_bytes"] < 4 * plan["param_count"]        # sharded: under the full f32 size
  assert plan["optimizer_bytes"] > plan["params_bytes"] // 2 and plan["temp_bytes"] > 0
  assert plan["total_bytes"] >= plan["params_bytes"] + plan["optimizer_bytes"] + plan["temp_bytes"]
  assert plan["fits"] is True
