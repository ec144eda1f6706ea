r"""Kills the tiny training run with SIGKILL at random moments and checks that it always comes back.

    python tools/chaos_checkpoint.py --kills 20 --json
    {"kills": 20, "restorable": 20, "lost_steps_max": 2, "final_step": 57}

Each round starts `train.py --config=configs/shapes_tiny.py:runlocal` in a subprocess (a checkpoint
after every step, asynchronous writes, keep 3), waits until it trains, sleeps a random 0-`max_delay`
seconds (so kills land in steps, in async checkpoint writes and in their finalisation) and SIGKILLs
it. After each kill every surviving checkpoint is restored in this process onto the model's abstract
state; a kill counts as `restorable` when at least one checkpoint survived and all of them restore,
and the next round must log that it resumed from the latest one. After the last kill a final run
resumes and finishes one step later (`final_step`). `lost_steps_max` is the most steps any kill cost
(the last step seen trained minus the latest committed checkpoint).

`--faults` adds fault kinds beyond SIGKILL, each on a copy of a short base run (3 steps, checkpoints
1-3), each checked for "nothing lost" (every committed step restores, the run resumes from the newest
intact step and finishes, nothing is deleted):

  * `enospc`: the run's workdir on a small tmpfs filled to leave less than one checkpoint (where the
    machine lets this process mount one; else Orbax's save raises ENOSPC through a `sitecustomize`
    hook). The run must stop with one `error:` line naming the intact step and no traceback; after
    the space is freed, the rerun resumes there and finishes.
  * `truncate` / `bitflip`: the newest step's OCDBT data files cut in half / with bits flipped. The
    rerun must quarantine that step (`checkpoints.quarantine/<step>.unreadable.<time>`), resume from
    the step before and finish.
  * `concurrent`: a second `train.py` on the workdir while the first trains. The second must refuse
    with one line; the first finishes with one row per step in `metrics.jsonl`.

    python tools/chaos_checkpoint.py --kills 20 --faults=kill,enospc,truncate,bitflip,concurrent --json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^\[train\] step (\d+)/")


def _command(workdir: str, data_dir: str, total_steps: int, extra=()) -> list[str]:
  return [sys.executable, str(REPO / "train.py"), "--config=configs/shapes_tiny.py:runlocal",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.train.total_steps={total_steps}", "--config.train.log_every=1",
          "--config.train.ckpt_every=1", "--config.train.eval_every=1000000",
          "--config.checkpoint.keep=3", "--config.checkpoint.async_save=True",
          "--config.evals.qa_per_kind=1", "--config.evals.geneval_prompts=2",
          "--config.evals.sample_steps=1", "--config.evals.batch_size=2",
          "--config.evals.which=qa", *extra]   # checkpoints are the point: skip generation evals


def _env(workdir: str, cache_dir: str | None = None) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=cache_dir or os.path.join(workdir, ".jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


class Verifier:
  """Restores checkpoints of the runlocal config in this process (one device, abstract target)."""

  def __init__(self, data_dir: str):
    import jax
    from flax import nnx

    from configs import shapes_tiny
    from jaxmodels import sharding
    from jaxmodels.trainer.setup import train_state_factory
    config = shapes_tiny.get_config("runlocal")
    config.data.data_dir = data_dir
    make_state, _ = train_state_factory(config)
    state = nnx.state(nnx.eval_shape(make_state))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    self.target = sharding.abstract_state(state, sharding.state_shardings(state, mesh))

  def check(self, ckpt_dir: str) -> tuple[list[int], list[str]]:
    """(surviving steps, problems): every surviving checkpoint is restored and its values checked."""
    import jax
    import numpy as np

    from jaxmodels.checkpoint import Checkpointer
    if not os.path.isdir(ckpt_dir):
      return [], []
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    steps, problems = ckpt.all_steps(), []
    for step in steps:
      try:
        state = ckpt.restore(step, self.target)
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)
                  if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
        if not all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating)):
          problems.append(f"step {step}: non-finite values")
      except Exception as e:  # noqa: BLE001 - any failure to restore is what this tool reports
        problems.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
    ckpt.manager.close()
    return steps, problems


def run(kills: int, workdir: str, data_dir: str, *, seed: int = 0, max_delay: float = 2.0,
        log=lambda *a: None) -> dict:
  rng = random.Random(seed)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  verifier = Verifier(data_dir)
  restorable, lost_max, problems, expect_resume = 0, 0, [], None
  for k in range(kills):
    proc = subprocess.Popen(_command(workdir, data_dir, 1_000_000), cwd=REPO, env=_env(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, last_step, deadline, killed = [], 0, time.time() + 600, False
    for line in proc.stdout:
      out.append(line)
      m = STEP_LINE.match(line)
      if m:
        last_step = int(m.group(1))
        if not killed:
          time.sleep(rng.uniform(0.0, max_delay))
          proc.send_signal(signal.SIGKILL)
          killed = True
      if time.time() > deadline:
        proc.kill()
        raise RuntimeError("the run did not start training within 600 s:\n" + "".join(out[-40:]))
    proc.wait()
    text = "".join(out)
    if not killed:
      raise RuntimeError(f"round {k}: the run exited ({proc.returncode}) before it could be killed:\n"
                         + text[-4000:])
    if expect_resume is not None and f"at step {expect_resume}" not in text:
      problems.append(f"round {k}: did not resume from step {expect_resume}")
    steps, bad = verifier.check(ckpt_dir)
    latest = max(steps) if steps else 0
    lost = max(last_step - latest, 0)
    lost_max = max(lost_max, lost)
    problems += [f"after kill {k + 1}: {p}" for p in bad]
    if steps and not bad:
      restorable += 1
    expect_resume = latest if steps else None
    log(f"kill {k + 1}/{kills}: last step seen {last_step}, checkpoints {steps}, lost {lost}"
        + (f", problems {bad}" if bad else ""))
  final_total = (expect_resume or 0) + 1
  done = subprocess.run(_command(workdir, data_dir, final_total), cwd=REPO, env=_env(workdir),
                        capture_output=True, text=True)
  final_step = None
  if done.returncode != 0:
    problems.append(f"final run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
  else:
    final_step = json.load(open(os.path.join(workdir, "scores.json")))["step"]
    if expect_resume is not None and f"at step {expect_resume}" not in done.stderr:
      problems.append(f"final run: did not resume from step {expect_resume}")
  result = {"kills": kills, "restorable": restorable, "lost_steps_max": lost_max, "final_step": final_step}
  if problems:
    result["problems"] = problems
  return result


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=5)
  p.add_argument("--faults", default="kill",
                 help="comma-separated: kill (the SIGKILL rounds), enospc, truncate, bitflip, concurrent")
  p.add_argument("--json", action="store_true", help="print only the JSON result")
  p.add_argument("--workdir", default=None, help="run directory (default: a fresh temporary one)")
  p.add_argument("--data_dir", default=None, help="ShapesWorld data (default: built under workdir)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_delay", type=float, default=2.0, help="longest wait before a kill, seconds")
  a = p.parse_args(argv)
  faults = [f.strip() for f in a.faults.split(",") if f.strip()]
  workdir = a.workdir or tempfile.mkdtemp(prefix="chaos_")
  data_dir = a.data_dir or os.path.join(workdir, "tfds")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(REPO))
  log = (lambda *x: None) if a.json else (lambda *x: print(*x, flush=True))
  result, ok = {}, True
  if "kill" in faults:
    result = run(a.kills, workdir if faults == ["kill"] else os.path.join(workdir, "kills"), data_dir,
                 seed=a.seed, max_delay=a.max_delay, log=log)
    ok = result["restorable"] == result["kills"] and "problems" not in result
  others = [f for f in faults if f != "kill"]
  if others:
    sys.path.insert(0, str(REPO / "tools"))
    from chaos_faults import run_faults  # noqa: I001 - a sibling script's module
    result["faults"] = run_faults(others, os.path.join(workdir, "faults"), data_dir, log=log)
    ok = ok and all(r["ok"] for r in result["faults"].values())
  print(json.dumps(result))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
