"""Multi-host training on CPU: 2 real processes on 127.0.0.1 (JAX's distributed runtime, gloo
collectives), 4 CPU devices each, one (data, fsdp) mesh over all 8 devices.

A SIGTERM sent to process 1 alone stops both processes at the same step, with one committed Orbax
checkpoint holding a data-iterator state per process. The losses logged up to that step equal those
of the single-process 8-device run (each process loads its block of every global batch), and the
two-process checkpoint restores in this single process onto the same values.
"""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

import train
from configs import shapes_tiny
from jaxmodels import sharding
from jaxmodels.checkpoint import Checkpointer
from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL = 1000           # the LR schedule's length; the runs are stopped long before
# remat "dots" in both runs: train.py turns it off in the two-process CPU run (XLA:CPU's gloo
# collectives abort under it), which must still match the single-process run that keeps it.
OVERRIDES = {"train.total_steps": TOTAL, "train.log_every": 1, "train.ckpt_every": TOTAL,
             "train.eval_every": TOTAL, "checkpoint.async_save": False, "mesh.data": 2, "mesh.fsdp": 4,
             "model.llm.remat": "dots", "model.und_encoder.remat": "dots", "model.dit.remat": "dots"}


def _config(data_dir):
  c = shapes_tiny.get_config("runlocal,target=ae")   # remat "dots" on the flow head too
  c.data.data_dir = data_dir
  for key, value in OVERRIDES.items():
    *groups, name = key.split(".")
    node = c
    for group in groups:
      node = node[group]
    node[name] = value
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _launch(workdir, data_dir, port, process_id):
  cmd = [sys.executable, "train.py", "--config=configs/shapes_tiny.py:runlocal,target=ae", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={process_id}",
         f"--config.data.data_dir={data_dir}", *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]
  env = {k: v for k, v in os.environ.items() if k != "PJRT_NPROC"}   # train.py sizes it (host_devices)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONUNBUFFERED="1")
  log = open(workdir.parent / f"process_{process_id}.log", "w+")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log


@pytest.mark.slow
def test_two_processes_match_one_and_stop_together(data_dir, tmp_path, monkeypatch):
  from input_pipeline import datasets
  from jaxmodels import shapes_world as sw
  # Build the data and the run's tokenizer once, before two processes would race to make them.
  sw.load_split(data_dir, "train", "tiny")
  workdir = tmp_path / "multi"
  datasets.shapes_world_tokenizer(data_dir, "tiny", str(workdir))

  port = _free_port()
  procs = [_launch(workdir, data_dir, port, i) for i in range(2)]
  try:
    deadline = time.time() + 400
    while not (workdir / "metrics.jsonl").exists() or len(_losses(workdir)) < 2:
      assert all(p.poll() is None for p, _ in procs), _tail(procs)
      assert time.time() < deadline, _tail(procs)
      time.sleep(0.2)
    procs[1][0].send_signal(signal.SIGTERM)        # one host is preempted; both must stop together
    codes = [p.wait(timeout=300) for p, _ in procs]
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
  outputs = [_read(log) for _, log in procs]
  assert codes == [0, 0], _tail(procs)
  stops = [set(re.findall(r"stopped by SIGTERM at step (\d+); checkpoint .*/(\d+) committed", o))
           for o in outputs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], _tail(procs)    # the same step on both hosts
  (step, saved), = stops[0]
  step = int(step)
  assert saved == str(step) and step >= 2
  assert "gloo" in outputs[0] or jax.config.jax_cpu_collectives_implementation == "gloo"
  assert all("remat set to 'none' in" in o and "model.llm.remat" in o for o in outputs), _tail(procs)
  assert _config(data_dir).model.llm.remat == "dots"
  data_states = sorted(p.name for p in (workdir / "checkpoints" / str(step) / "data").glob("process_*"))
  assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]
  multi = _losses(workdir)
  assert sorted(multi) == list(range(1, step + 1))

  # The single-process run on this process's 8 devices, stopped at the same step.
  single = tmp_path / "single"
  polls = iter(range(1, TOTAL))
  monkeypatch.setattr(train.StopRequest, "requested", lambda self, in_flight=None: next(polls) >= step)
  out = train.train_and_evaluate(_config(data_dir), str(single))
  assert out["step"] == step
  alone = _losses(single)
  assert sorted(alone) == sorted(multi)
  np.testing.assert_allclose([multi[s] for s in sorted(multi)], [alone[s] for s in sorted(alone)],
                             rtol=1e-6, atol=0)     # equal to float32 rounding (reduction order)

  # The two-process checkpoint restores here, onto the same mesh shape over 8 local devices. Its
  # values match the single-process ones up to the order of float reductions (gloo's all-reduce vs
  # XLA's in-process one); the attention key biases, whose exact gradient is zero, carry only that
  # rounding noise, hence the absolute tolerance.
  config = _config(data_dir)
  mesh, rules = mesh_and_rules(config)
  make_state, _ = train_state_factory(config)
  abstract = nnx.state(nnx.eval_shape(make_state))
  target = sharding.abstract_state(abstract, sharding.state_shardings(abstract, mesh, rules))
  restored = [Checkpointer(str(run / "checkpoints"), async_save=False) for run in (workdir, single)]
  a, b = (ck.restore(step, target) for ck in restored)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-4, atol=2e-5)
  for ck in restored:
    ck.close()


def _read(log) -> str:
  log.flush()
  log.seek(0)
  return log.read()


def _tail(procs) -> str:
  return "\n".join(f"--- process {i}:\n{_read(log)[-2500:]}" for i, (_, log) in enumerate(procs))
