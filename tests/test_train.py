"""train.py end to end at :runlocal size: checkpoints, metrics, final scores, bitwise-exact resume."""
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from configs import shapes_tiny
from jaxmodels.checkpoint import Checkpointer


def _config(data_dir, **train_overrides):
  c = shapes_tiny.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(log_every=1, ema_decay=0.9, **train_overrides)
  c.evals.update(qa_per_kind=2, geneval_prompts=4, sample_steps=2, batch_size=4, loop_geneval_prompts=3)
  c.checkpoint.async_save = False
  return c


def _with_worker(c):
  c.data.worker_count = 1
  return c


def _losses(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
  """One uninterrupted 6-step run on the 8 CPU devices (mesh fsdp=8), generation inputs on every
  second step (`train.gen_every=2`, as the main job): (workdir, scores)."""
  full = tmp_path_factory.mktemp("full")
  return full, train.train_and_evaluate(_config(data_dir, gen_every=2), str(full))


@pytest.mark.slow
def test_train_end_to_end_and_exact_resume(data_dir, tmp_path, full_run):
  full, scores = full_run
  assert sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  for name in ("metrics.jsonl", "scores.json", "samples.png", "tokenizer.json", "config.json"):
    assert (full / name).is_file(), name
  assert {"qa", "geneval"} <= set(scores) and 0.0 <= scores["geneval"]["overall"] <= 1.0
  assert (full / "geneval" / "results.jsonl").is_file()
  losses = _losses(full)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  rows = [json.loads(line) for line in open(full / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/gen_loss" in r] == [2, 4, 6]   # gen_every=2
  assert all("train/und_loss" in r for r in rows if "train/loss" in r)
  # A step's train row is written before its in-loop eval (whose time the rate then excludes); the
  # other order gave the next interval the eval's end as its start (steps/s in the thousands, ETA 0).
  kinds = [(r["step"], "eval" if any(k.startswith("eval/") for k in r) else "train") for r in rows]
  assert kinds.index((3, "train")) < kinds.index((3, "eval")), kinds
  # evals.loop_geneval_prompts: the in-loop evaluation scores GenEval and its progress signals too.
  ev = next(r for r in rows if r["step"] == 3 and "eval/geneval/overall" in r)
  assert {"eval/geneval_progress/median_fit_iou", "eval/geneval_progress/lenient_overall"} <= set(ev)
  assert {"overall", "single_object"} <= set(scores["geneval"])
  assert {"lenient_overall", "objects_per_image", "median_fit_iou"} <= set(scores["geneval_progress"])

  # Exact resume: a second run of the same 6 steps is stopped after step 3 (as a SIGTERM would stop
  # it), then restarted in its workdir. The whole loss sequence and the final state (parameters,
  # EMA, optimizer moments, step) are bitwise those of the uninterrupted run, which needs the data
  # iterator restored too. The resumed run makes its batches in a Grain worker process
  # (`data.worker_count=1`, the main job's setting): the same batches, its state checkpointed.
  resumed = tmp_path / "resumed"
  polls = iter(range(1, 1000))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train.StopRequest, "requested", lambda self, in_flight=None: next(polls) >= 3)  # once a step
    out = train.train_and_evaluate(_with_worker(_config(data_dir, gen_every=2)), str(resumed))
  assert out == {"stopped_by": "", "step": 3}
  assert not (resumed / "scores.json").exists()
  train.train_and_evaluate(_with_worker(_config(data_dir, gen_every=2)), str(resumed))
  again = _losses(resumed)
  assert again == losses, (again, losses)            # steps 1-6, bitwise equal floats
  final = [_leaves(run / "checkpoints", 6) for run in (full, resumed)]
  assert len(final[0]) == len(final[1]) > 10
  for (key, a), (key_b, b) in zip(final[0], final[1]):
    assert key == key_b and a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b, err_msg=key)


def test_gen_every_needs_both_kinds_of_inputs():
  import ml_collections

  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.setup import gen_every_of, trains_generation, understanding_inputs
  batch = {"und_ids": 1, "und_image": 2, "gen_ids": 3, "gen_image": 4}
  assert understanding_inputs(batch, 2) == {"und_ids": 1, "und_image": 2}
  with pytest.raises(ConfigError, match="config.train.gen_every=3: expected 1, or k > 1"):
    understanding_inputs({"gen_ids": 3}, 3)
  from jaxmodels.config_schema import complete
  cfg = lambda **train: complete(ml_collections.ConfigDict(dict(train=train)))   # noqa: E731
  assert gen_every_of(cfg()) == 1 and gen_every_of(cfg(gen_every=3)) == 3
  assert [s for s in range(1, 10) if trains_generation(s, 3)] == [3, 6, 9]
  for bad in (0, 1.5, True):
    with pytest.raises(ConfigError, match="config.train.gen_every=.*expected an integer >= 1"):
      gen_every_of(cfg(gen_every=bad))


def _leaves(directory, step):
  """(path, numpy array) for every leaf of the saved train state at `step`."""
  ckpt = Checkpointer(str(directory), async_save=False)
  state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  ckpt.close()
  return [(_name(k), np.asarray(v)) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]]


def _name(path):
  """"model/llm/embed/embedding" for a key path (an nnx Variable's trailing `value` dropped)."""
  keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(keys[:-1] if keys and keys[-1] == "value" else keys)


@pytest.mark.slow
def test_restore_onto_other_meshes_and_params_only(data_dir, full_run):
  """The fsdp=8 checkpoint restores onto fsdp=2 over 2 devices and onto 1 device with the same
  values (train.py's restore path: an abstract target carrying the new shardings); `restore_params`
  reads model + EMA only, never the optimizer state."""
  from flax import nnx

  from jaxmodels import sharding
  from jaxmodels.checkpoint import restore_params
  from jaxmodels.trainer.setup import train_state_factory
  full, _ = full_run
  saved = dict(_leaves(full / "checkpoints", 6))
  make_state, _ = train_state_factory(_config(data_dir))
  abstract = nnx.state(nnx.eval_shape(make_state))
  ckpt = Checkpointer(str(full / "checkpoints"), async_save=False)
  for n in (2, 1):
    mesh = sharding.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=jax.devices()[:n])
    target = sharding.abstract_state(abstract, sharding.state_shardings(abstract, mesh))
    restored = ckpt.restore(6, target)
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    assert len(leaves) == len(saved)
    for key, x in leaves:
      assert x.sharding.mesh.devices.size == n and set(x.sharding.device_set) <= set(jax.devices()[:n])
      np.testing.assert_array_equal(_host(x), saved[_name(key)], err_msg=_name(key))
    params = restore_params(str(full), target)      # what evaluate.py needs: no optimizer state
    assert set(params) == {"model", "ema"}
    for key, x in jax.tree_util.tree_flatten_with_path(params)[0]:
      np.testing.assert_array_equal(_host(x), saved[_name(key)], err_msg=_name(key))
  ckpt.close()


def _host(x):
  return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


@pytest.mark.slow
def test_evaluate_py_scores_the_checkpoint_like_the_final_evaluation(data_dir, tmp_path, full_run):
  """evaluate.py restores parameters only (model + EMA, no optimizer) and, with the same config,
  reproduces train.py's final scores from the last checkpoint: Q/A and ColorBench, and the
  generation-based GenEval and ROVER too (both sample with the run's evaluation key)."""
  import evaluate
  full, scores = full_run
  out = evaluate.evaluate_checkpoint(_config(data_dir), str(full), str(tmp_path))
  assert out["step"] == 6
  final = {k: v for k, v in scores.items() if k in evaluate.EVALS or k in out}
  assert {k: v for k, v in out.items() if k != "step"} == {k: v for k, v in final.items() if k != "step"}
  # The tiny run's generation scores are mostly 0, so compare what was generated: the same images.
  images = sorted(p.relative_to(full) for p in (full / "geneval").rglob("*.png"))
  assert len(images) >= 4
  for rel in images + [Path("samples.png")]:
    assert (tmp_path / rel).read_bytes() == (full / rel).read_bytes(), rel
