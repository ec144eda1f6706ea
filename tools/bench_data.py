"""Input pipeline vs training step: ShapesWorld examples/s through the real Grain pipeline of a config
(`input_pipeline.datasets.make_train_data`, as train.py builds it) vs the examples/s the jitted train
step of the same config consumes at its batch size.

    python tools/bench_data.py --rounds=3 [--json]                     # configs/shapes_tiny.py, res32
    python tools/bench_data.py --config_arg=runlocal --data_batches=4 --train_steps=1 --rounds=1 --json

The pipeline reads the already built ShapesWorld split (`~/.cache/jaxmodels/tfds`; nothing is built),
decodes, renders the task rows, tokenises and batches with the config's worker_count and Grain's read
threads. The train step is train.py's: `train_state_factory`, sharded state, `make_train_step` lowered
and compiled on the first batch; with `train.gen_every` = k > 1 also on its understanding inputs, and a
train chunk runs whole cycles of one full step and k - 1 understanding-only steps, as train.py does (the
rate it consumes examples at). After a warm-up of each, rounds alternate a data chunk
(`--data_batches` batches, timed after the prefetch buffer has been drained, so buffered batches do
not count) and a train chunk (`--train_steps` steps on one fixed batch, blocked at the end); medians
of the chunk rates. Reports both rates and data / train (target ≥ 10×: the pipeline must not be what
limits training).
"""
from __future__ import annotations

from bench_common import emit, load_average, machine  # noqa: I001

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "configs/shapes_tiny.py", "Config file (relative to the repo).")
_ARG = flags.DEFINE_string("config_arg", None, "The config's argument (e.g. runlocal).")
_DATA = flags.DEFINE_integer("data_batches", 24, "Batches per timed data chunk.")
_TRAIN = flags.DEFINE_integer("train_steps", 8, "Steps per timed train chunk.")
_PREFETCH = flags.DEFINE_integer("drain", 4, "Batches pulled untimed before each data chunk (Grain's "
                                 "prefetch buffer, `pipeline.make_dataset(prefetch=4)`).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed A/B rounds (median reported).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def load_config(path: str, arg: str | None):
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("bench_data_config", os.path.join(root, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def bench(config, data_batches: int, train_steps: int, drain: int, rounds: int) -> dict:
  import shutil
  import statistics
  import tempfile
  import time

  import jax
  import numpy as np
  from flax import nnx

  from input_pipeline import pipeline
  from input_pipeline.datasets import make_train_data
  from jaxmodels.unified.model_io import model_io
  from jaxmodels.config_schema import data_section
  from jaxmodels import sharding
  from jaxmodels.trainer import make_train_step
  from jaxmodels.trainer.setup import (gen_every_of, mesh_and_rules, train_state_factory, trains_generation,
                                       understanding_inputs)

  mesh, rules = mesh_and_rules(config)
  make_state, lr = train_state_factory(config)
  ts = sharding.create_sharded(make_state, mesh, rules)
  state = nnx.split(ts)[1]
  shardings = sharding.state_shardings(state, mesh, rules)
  n_params = sharding.param_count(ts.model)
  workdir = tempfile.mkdtemp(prefix="bench_data_")       # the run's tokenizer.json goes here
  data_cfg = data_section(config.data)
  with pipeline.corrupt_record_policy(data_cfg.on_error):
    data = make_train_data(config, workdir, io=model_io(config.model))
  it = data.iterator

  def to_global(batch):                                   # as train.py
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, np.asarray(v).ndim, rules),
                                                      np.asarray(v)) for k, v in batch.items()}

  first = next(it)
  batch_size = int(next(iter(first.values())).shape[0])
  batch = to_global(first)
  step_fn = make_train_step(ts, accum_steps=config.train.accum_steps, lr_schedule=lr,
                            state_shardings=shardings)
  rng = jax.random.key(config.seed)
  t0 = time.perf_counter()
  k = gen_every_of(config)
  batch_und = batch if k == 1 else to_global(understanding_inputs(first, k))
  with sharding.use_mesh(mesh, rules):
    compiled = step_fn.lower(state, batch, rng).compile()
    compiled_und = compiled if k == 1 else step_fn.lower(state, batch_und, rng).compile()
  compile_s = time.perf_counter() - t0
  train_steps = k * -(-train_steps // k)                    # whole gen_every cycles
  holder = {"state": state, "step": 0}

  def data_chunk() -> float:
    for _ in range(drain):
      next(it)
    t = time.perf_counter()
    for _ in range(data_batches):
      next(it)
    return data_batches * batch_size / (time.perf_counter() - t)

  def train_chunk() -> float:
    t = time.perf_counter()
    for _ in range(train_steps):
      holder["step"] += 1
      full = trains_generation(holder["step"], k)          # as train.py
      holder["state"], metrics = (compiled if full else compiled_und)(
          holder["state"], batch if full else batch_und, jax.random.fold_in(rng, holder["step"]))
    jax.block_until_ready(metrics["loss"])
    return train_steps * batch_size / (time.perf_counter() - t)

  data_chunk(), train_chunk()                              # warm-up
  data_rates, train_rates = [], []
  for _ in range(rounds):                                  # alternate A/B
    data_rates.append(data_chunk())
    train_rates.append(train_chunk())
  data_rate, train_rate = statistics.median(data_rates), statistics.median(train_rates)
  shutil.rmtree(workdir, ignore_errors=True)
  return {"dataset": config.data.get("config"), "batch_size": batch_size, "params": n_params,
          "worker_count": data_cfg.worker_count, "gen_every": k, "compile_s": compile_s,
          "data_examples_s": data_rate, "train_examples_s": train_rate,
          "train_steps_s": train_rate / batch_size,
          "ratio": data_rate / train_rate, "target_ratio": 10.0}


def main(argv):
  del argv
  config = load_config(_CONFIG.value, _ARG.value)
  r = bench(config, _DATA.value, _TRAIN.value, _PREFETCH.value, _ROUNDS.value)
  result = {"machine": machine(), "load_average": load_average(), "config": _CONFIG.value,
            "config_arg": _ARG.value, **r}
  rows = [f"machine: {result['machine']} (load {result['load_average']:.1f})",
          f"{_CONFIG.value}{':' + _ARG.value if _ARG.value else ''} (ShapesWorld {r['dataset']}, batch "
          f"{r['batch_size']}, {r['params'] / 1e6:.2f}M params, worker_count {r['worker_count']}, "
          f"gen_every {r['gen_every']})",
          f"data pipeline: {r['data_examples_s']:.0f} examples/s | train step: {r['train_examples_s']:.0f} "
          f"examples/s ({r['train_steps_s']:.2f} steps/s) | ratio {r['ratio']:.1f}x (target >= 10x)"]
  emit(result, _JSON.value, rows)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  app.run(main)
