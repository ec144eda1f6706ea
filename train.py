r"""Trains a unified model: `python train.py --config=configs/<exp>.py[:arg] --workdir=DIR`.

    python train.py --config=configs/shapes_tiny.py --workdir=runs/shapes_tiny      # embedded default
    python train.py --config=configs/blip3o_8b.py --workdir=gs://... --config.train.total_steps=1000

One readable loop (big_vision style), in sections: mesh -> data -> model + optimizer (created directly
sharded) -> restore (workdir checkpoint, else `config.resume`, else `config.init`, else scratch) ->
compiled step -> loop with logging, evals and checkpoints -> final evaluation and score table.
The workdir holds checkpoints/ (model, optimizer, data-iterator state and config), metrics.jsonl,
tb/ (TensorBoard), tokenizer.json (or tokenizer/: a copy of the Hugging Face tokenizer it trained
with), samples.png and scores.json.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

from absl import app, flags, logging
from ml_collections import config_flags


def _define_flags():
  """CLI flags, defined only when run as a script (tools import train_and_evaluate with their own flags)."""
  global _CONFIG, _WORKDIR, _DISTRIBUTED, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/shapes_tiny.py[:arg].",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")
  _DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host); "
                                    "settings not given below are auto-detected (Cloud TPU, SLURM, Open MPI, "
                                    "Kubernetes) or read from JAX_COORDINATOR_ADDRESS.")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (implies --distributed).")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (implies --distributed).")
  flags.mark_flags_as_required(["config", "workdir"])


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the whole job (importable: tests and notebooks call this). Returns the final scores.

  The settings are checked before anything is written; the workdir is then locked for the run (a
  second run on it refuses in one line; process 0 of a multi-host run holds the lock)."""
  import jax

  from jaxmodels.config_schema import complete
  from jaxmodels.trainer.setup import check_run_settings, is_grpo_run
  from jaxmodels.trainer.workdir import WorkdirLock, check_writable

  complete(config)                       # every declared key present (jaxmodels/config_schema.py)
  if config.get("rl"):
    from jaxmodels.trainer.grpo import complete_rl
    complete_rl(config)                  # ... of config.rl too (trainer/grpo.py)
  check_run_settings(config)
  check_writable(workdir)
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    if config.get("rl") and config.rl.get("after_supervised"):   # supervised, then GRPO
      return _supervised_then_rl(config, workdir)
    if is_grpo_run(config):              # post-training with RL: jaxmodels/trainer/grpo.py
      from jaxmodels.trainer.grpo import train_grpo
      return train_grpo(config, workdir)
    return _train_and_evaluate(config, workdir)


def _supervised_then_rl(config, workdir: str) -> dict:
  """A two-phase run (`config.rl.after_supervised`, e.g. the embedded default): the supervised phase
  trains in `workdir` (its checkpoints, metrics.jsonl), then GRPO post-trains its weights in
  `<workdir>/rl` (`trainer.grpo.phase_configs`), whose final evaluation is the run's: its scores.json
  and samples.png are copied to `workdir`. `<workdir>/phases.json` records each finished phase, so a
  rerun resumes the phase it was in."""
  import shutil

  import jax

  from jaxmodels.evals import shapes_eval
  from jaxmodels.trainer.grpo import phase_configs, train_grpo
  from jaxmodels.trainer.setup import check_run_settings
  from jaxmodels.trainer.workdir import write_atomic_json

  supervised, post, rl_dir = phase_configs(config, workdir)
  check_run_settings(post)
  record_path = os.path.join(workdir, "phases.json")
  record = json.load(open(record_path)) if os.path.exists(record_path) else {}
  main = jax.process_index() == 0
  if "supervised" not in record:
    t0 = time.time()
    out = _train_and_evaluate(supervised, workdir, report=False)
    if "stopped_by" in out:
      return out
    from jaxmodels.run_dir import checkpoint_step
    record["supervised"] = {"minutes": (time.time() - t0) / 60, "step": checkpoint_step(workdir), **out}
    if main:
      write_atomic_json(record_path, record)
  t0 = time.time()
  scores = train_grpo(post, rl_dir, report=False)
  record["rl"] = {"minutes": (time.time() - t0) / 60}
  if main:
    write_atomic_json(record_path, record)
    with open(os.path.join(rl_dir, "scores.json")) as f:
      final = json.load(f)
    write_atomic_json(os.path.join(workdir, "scores.json"), {**final, "phases": record})
    if os.path.exists(os.path.join(rl_dir, "samples.png")):
      shutil.copyfile(os.path.join(rl_dir, "samples.png"), os.path.join(workdir, "samples.png"))
    shapes_eval.print_scores(scores)
    print(f"\nworkdir: {workdir} (supervised phase: checkpoints/, metrics.jsonl; GRPO phase: rl/; "
          f"scores.json, samples.png, phases.json)")
  return scores


def _train_and_evaluate(config, workdir: str, report: bool = True) -> dict:
  """The supervised run; `report`: print the score table and the workdir's contents at the end."""
  import jax
  import numpy as np
  from flax import nnx

  from input_pipeline import pipeline
  from input_pipeline.datasets import make_train_data
  from jaxmodels.unified.model_io import model_io
  from input_pipeline.tokenizers import save_with_run
  from jaxmodels import sharding
  from jaxmodels.checkpoint import Checkpointer, CheckpointWriteError
  from jaxmodels.config_utils import init_sources
  from jaxmodels.errors import CheckpointFormatError, ConfigError
  from jaxmodels.evals import shapes_eval
  from jaxmodels.trainer import MetricWriter, make_train_step
  from jaxmodels.trainer.metrics import NonFiniteGuard, step_flops
  from jaxmodels.trainer.optim import ScheduleClock
  from jaxmodels.trainer.setup import (gen_every_of, initialize, mesh_and_rules,
                                       no_remat_on_multiprocess_cpu, run_keys, shapes_eval_supported,
                                       train_state_factory, trains_generation, understanding_inputs)
  from jaxmodels.trainer.workdir import write_config

  config, unremat = no_remat_on_multiprocess_cpu(config)
  if unremat:
    logging.warning("multi-process CPU run: remat set to 'none' in %s (XLA:CPU gloo collectives of one "
                    "step may overlap under remat and abort; see trainer/setup.py)", ", ".join(unremat))
  logging.info("devices: %s", jax.devices())

  ############################ Mesh ##########################################
  mesh, rules = mesh_and_rules(config)          # config.mesh (any axis names), config.sharding_rules
  logging.info("mesh: %s", dict(mesh.shape))

  ############################ Model + optimizer #############################
  total = config.train.total_steps
  make_state, lr = train_state_factory(config)
  ts = sharding.create_sharded(make_state, mesh, rules)   # every parameter born in its sharded layout
  ucfg = ts.model.config
  graphdef, state = nnx.split(ts)
  shardings = sharding.state_shardings(state, mesh, rules)
  n_params = sharding.param_count(ts.model)
  can_eval = shapes_eval_supported(config, ts.model)   # ShapesWorld evals need a UnifiedModel on its data
  which = shapes_eval.selected_evals(config)           # config.evals.which, e.g. "qa,geneval"
  logging.info("model: %.2fM parameters", n_params / 1e6)

  ############################ Data ##########################################
  on_error = config.data.on_error        # a corrupt record: "raise" or "skip" + count
  with pipeline.corrupt_record_policy(on_error):
    data = make_train_data(config, workdir, io=model_io(config.model))
  if jax.process_index() == 0:   # the run carries its Hugging Face tokenizer: <workdir>/tokenizer/
    save_with_run(data.tokenizer, workdir)
  if data.tokenizer.vocab_size > ucfg.llm.vocab_size:
    raise ConfigError(f"config.model.llm.vocab_size={ucfg.llm.vocab_size} is smaller than the "
                     f"tokenizer's {data.tokenizer.vocab_size} tokens")

  ############################ Restore #######################################
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                      async_save=config.checkpoint.async_save,
                      replica_parallel=config.checkpoint.replica_parallel, cleanup_tmp=True)
  ckpt.quarantine_incomplete()     # half-written / half-deleted steps: moved aside, never re-saved into
  target = sharding.abstract_state(state, shardings)
  start, restored = ckpt.restore_latest(target, data_iter=data.iterator)  # unreadable steps: skipped
  if start is not None:
    state = restored
    logging.info("resumed from %s at step %d", ckpt.directory, start)
  elif config.resume:
    other = Checkpointer(config.resume, async_save=False)
    start = other.latest_step()
    if start is None:
      raise CheckpointFormatError(f"config.resume={config.resume}: no complete checkpoint there")
    state = other.restore(start, target, data_iter=data.iterator)
    logging.info("resumed from another run %s at step %d", config.resume, start)
  else:
    start = 0
    if init_sources(config):               # pretrained towers or another run's weights
      initialize(config, ts, mesh, rules)
      state = nnx.state(ts)
      logging.info("initialised from %s", init_sources(config))
  if jax.process_index() == 0:             # only now: a config the checkpoint rejects never lands
    write_config(workdir, config)

  ############################ Compiled step #################################
  batch_sh = lambda x: sharding.batch_sharding(mesh, x.ndim, rules)  # noqa: E731  (config.sharding_rules)

  def to_global(batch):
    return {k: jax.make_array_from_process_local_data(batch_sh(np.asarray(v)), np.asarray(v))
            for k, v in batch.items()}

  stop = StopRequest().install()   # from here on, a SIGTERM waits for the current step
  stop_signal = False
  clock = config.optim.clock    # "time": the schedule spans the time limit (trainer/optim.py)
  step_fn = make_train_step(ts, accum_steps=config.train.accum_steps, lr_schedule=lr,
                            state_shardings=shardings, clock=clock)
  rng, eval_rng = run_keys(config.seed)     # step keys: fold_in(rng, step)
  first = to_global(next(data.iterator))
  gen_every = gen_every_of(config)
  limit = config.train.time_limit_minutes
  v0 = ScheduleClock(clock, start=start, total=total, limit_minutes=limit).args(start + 1)  # for lowering
  with sharding.use_mesh(mesh, rules):
    lowered = step_fn.lower(state, first, rng, *v0)
    compiled, flops = lowered.compile(), step_flops(step_fn, state, first, rng, *v0, lowered=lowered)
    # train.gen_every = k > 1: steps k, 2k, ... train on the whole batch, the others on its
    # understanding inputs only (a second program): more understanding updates per second.
    compiled_und, flops_und = compiled, flops
    if gen_every > 1:
      und_first = understanding_inputs(first, gen_every)
      lowered_und = step_fn.lower(state, und_first, rng, *v0)
      compiled_und = lowered_und.compile()
      flops_und = step_flops(step_fn, state, und_first, rng, *v0, lowered=lowered_und)
  if jax.process_count() > 1:
    # Enter the first step together (a coordination-service barrier, not a collective): XLA:CPU's
    # gloo sets a communicator up at its first collective with a 30 s deadline, which a process
    # still compiling on a loaded host missed ("Gloo context initialization failed").
    from orbax.checkpoint import multihost
    multihost.get_barrier_sync_fn()(key="jaxmodels_train_compiled", timeout_ms=30 * 60 * 1000)
  if flops and flops_und:   # the mean over a cycle of gen_every steps
    flops = (flops + (gen_every - 1) * flops_und) / gen_every
  tokens = int(np.prod(first["und_ids"].shape[1:])) if "und_ids" in first else 0
  writer = MetricWriter(workdir, total_steps=total, batch_size=config.data.batch_size,
                        tokens_per_example=tokens, flops_per_step=flops, start_step=start,
                        time_limit_minutes=limit)

  ############################ Train loop ####################################
  # SIGTERM / SIGINT (preemption, scancel, Ctrl-C) end the current step, save it and exit cleanly.
  # A step with a non-finite loss or gradient left the state unchanged (inside the compiled step);
  # the guard counts those and, for train.nonfinite="stop", stops after train.max_nonfinite in a row.
  guard = NonFiniteGuard(config.train.nonfinite, config.train.max_nonfinite)
  t0, pending, step, saved, flag = time.time(), None, start, start, None
  schedule_clock = ScheduleClock(clock, start=start, total=total, limit_minutes=limit)
  batch = first
  def save(s):
    try:
      ckpt.save(s, state, data_iter=data.iterator, config=json.loads(config.to_json_best_effort()))
    except CheckpointWriteError:
      raise
    except Exception as e:  # noqa: BLE001 - e.g. the data iterator's state could not be written
      raise ckpt.write_error(s, e) from e

  def committed_step():   # named by the non-finite stop: wait for an async save in flight first
    ckpt.wait()
    return ckpt.latest_step()

  finished = False
  try:
    for step in range(start + 1, total + 1):
      if step > start + 1:
        batch = next(data.iterator)
      und_only = not trains_generation(step, gen_every)   # (never with gen_every=1)
      if und_only:                               # the gen_* arrays never leave the host
        batch = understanding_inputs(batch, gen_every)
      state, metrics = (compiled_und if und_only else compiled)(
          state, to_global(batch) if step > start + 1 else batch, jax.random.fold_in(rng, step),
          *schedule_clock.args(step))
      if flag is not None:                     # the previous step's non-finite flag (one step behind)
        guard.update(step - 1, flag, last_checkpoint=committed_step)
      flag = metrics["nonfinite"]
      if pending is not None:                  # fetch the previous step's metrics after dispatching this one
        writer.write(*pending)
        pending = None
      out_of_time = limit is not None and (time.time() - t0) / 60 > limit
      stop_signal = stop.requested(in_flight=metrics)
      if step % config.train.log_every == 0 or step == total or out_of_time or stop_signal:
        pending = (step, {**metrics, "data_skipped": pipeline.skipped_count()} if on_error == "skip"
                   else metrics)
      if step % config.train.ckpt_every == 0 or step == total or out_of_time or stop_signal:
        # This step's non-finite flag first (a sync at save steps only): a run that is to stop for
        # non-finite steps stops before committing a state from inside the streak.
        guard.update(step, flag, last_checkpoint=committed_step)
        flag = None
        if guard.streak == 0 or guard.mode == "skip":
          save(step)
          saved = step
      if stop_signal:
        break
      if step % config.train.eval_every == 0 and step != total and not out_of_time and can_eval:
        if pending is not None:   # log this step's rate before the eval's time is excluded (pause)
          writer.write(*pending)
          pending = None
        scores = shapes_eval.evaluate_model(nnx.merge(graphdef, state).eval_model(), data.tokenizer, config,
                                            data.data_dir, workdir, rng=jax.random.fold_in(eval_rng, step),
                                            final=False, evals=which)
        writer.write(step, {f"{b}/{k}": v for b, t in scores.items() for k, v in t.items()}, prefix="eval")
        writer.pause()
      if out_of_time:
        logging.info("time limit of %.1f minutes reached at step %d", limit, step)
        break
    if flag is not None:
      guard.update(step, flag, last_checkpoint=committed_step)
    finished = True
  finally:
    # Never leave an async save uncommitted, even when the loop raises (then a failed write is
    # logged, not raised over the error already on its way out).
    ckpt.wait(raise_errors=finished)
    stop.restore()
    pipeline.close(data.iterator)   # its worker processes, if any (the last save holds its state)
  if pending is not None:
    writer.write(*pending)
  train_minutes = (time.time() - t0) / 60
  if stop_signal:
    writer.close()
    ckpt.close()
    msg = (f"stopped by {stop.name} at step {step}; checkpoint {ckpt.directory}/{saved} committed "
           f"(the next start resumes from it)")
    logging.warning(msg)
    if jax.process_index() == 0:
      print(msg, flush=True)
    return {"stopped_by": stop.name, "step": step}

  ############################ Final evaluation ##############################
  model = nnx.merge(graphdef, state).eval_model()   # EMA weights where the config keeps an EMA
  scores = {} if not can_eval else shapes_eval.evaluate_model(
      model, data.tokenizer, config, data.data_dir, workdir, rng=eval_rng, final=True, evals=which)
  writer.write(step, {f"{b}/{k}": v for b, t in scores.items() for k, v in t.items()}, prefix="final")
  writer.close()
  ckpt.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "scores.json"), "w") as f:
      json.dump({"step": step, "train_minutes": train_minutes, "params": n_params,
                 "nonfinite_skipped": guard.total, "data_skipped": pipeline.skipped_count(), **scores},
                f, indent=2)
    if report:
      shapes_eval.print_scores(scores)
      made = [n for n in ("checkpoints/", "metrics.jsonl", "samples.png", "scores.json")
              if os.path.exists(os.path.join(workdir, n.rstrip("/")))]
      print(f"\nworkdir: {workdir} ({', '.join(made)})")
  return scores


class StopRequest:
  """Records SIGTERM / SIGINT instead of dying; the loop polls `requested()` after each step (on
  several hosts the flag is OR-ed over processes, so all of them stop at the same step). A second
  SIGINT raises KeyboardInterrupt at once."""

  def __init__(self):
    self.signum, self._previous = None, {}

  def install(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("received %s: checkpointing after the current step, then stopping",
                    signal.Signals(signum).name)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else ""

  def requested(self, in_flight=None) -> bool:
    """`in_flight`: outputs of the step just dispatched. On the CPU backend the all-gather waits for
    them, so its collective cannot run beside the step's own: two collectives in flight at once on
    one gloo communicator interleave their messages and abort the processes ("Received data size
    doesn't match expected size"; see `no_remat_on_multiprocess_cpu`). On accelerators nothing
    waits (the host keeps dispatching ahead)."""
    import jax
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    import numpy as np
    from jax.experimental import multihost_utils
    if in_flight is not None and jax.default_backend() == "cpu":
      jax.block_until_ready(in_flight)
    flags_ = multihost_utils.process_allgather(np.int32(local))
    if not local and flags_.any():
      self.signum = signal.SIGTERM
    return bool(flags_.any())

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def main(argv):
  del argv
  from jaxmodels.errors import run_cli
  run_cli(_run)


def _run():
  from jaxmodels import host_devices
  from jaxmodels.log_filters import quiet_library_logs
  quiet_library_logs()   # Orbax/Grain: warnings and errors only, one line each
  explicit = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  distributed = _DISTRIBUTED.value or any(v is not None for v in explicit.values())
  host_devices.ensure_collective_threads(multiprocess=distributed)   # before the first computation
  if distributed:
    import jax
    jax.distributed.initialize(**explicit)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  from jaxmodels.config_utils import flags_parser
  _define_flags()
  app.run(main, flags_parser=flags_parser)   # config mistakes: one line, no traceback
