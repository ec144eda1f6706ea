"""GRPO post-training of a run's image-token policy on ShapesWorld prompts (`python train.py` with a
config that has `config.rl`, e.g. configs/shapes_grpo.py).

    python train.py --config=configs/shapes_grpo.py --workdir=runs/shapes_grpo \
        --config.init.checkpoint=runs/shapes_tiny

The loop, each step s: take `rl.prompts_per_step` GenEval-schema records from the ShapesWorld train
split (a permutation keyed by the seed, so step s always sees the same prompts), sample `rl.group_size`
images of each from the current policy (`GRPOPolicy.rollout`, compiled, on the run's mesh), score them
on the host (`rl.rewards` mixture, each part logged as `rl/reward/<name>`), turn the rewards into group
advantages, and take `rl.inner_epochs` optimizer steps on the GRPO objective (`TrainState`'s jitted
step: the same sharded, donated, non-finite-safe update as supervised training).

Start and resume: the policy and its frozen reference both start from the evaluation weights (EMA where
kept) of the run `config.init.checkpoint` names, whose stored config also supplies `config.model` and
`config.data` (the policy must be that model, read with that tokenizer). A checkpoint holds the policy,
reference, optimizer and step; prompts and rollout keys are functions of (seed, step), so a resumed run
repeats the uninterrupted run's next updates exactly. At the end the ShapesWorld evaluations run on
the policy (GenEval, Q/A: what RL costs understanding), plus the diversity of the group samples.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from jaxmodels.config_schema import data_section
from jaxmodels.errors import ConfigError
from jaxmodels.rl.grpo import GRPOConfig, GRPOPolicy, group_advantages

GRPO_KEYS = tuple(f.name for f in dataclasses.fields(GRPOConfig))   # typed and checked by GRPOConfig

# The other keys of config.rl the trainer reads: (default, meaning).
RUN_KEYS = {
    "prompts_per_step": (8, "prompts per update, each sampled group_size times"),
    "inner_epochs": (1, "optimizer steps on each update's rollouts"),
    "rewards": ({"geneval_dense": 1.0, "geneval": 0.0}, "reward weights by name (a 0 weight is logged)"),
    "external": ({}, "rewards from outside the library: {'pkg.module:factory': {'weight': w, ...}}"),
    "prompt_pool": (0, "> 0: only the first N training prompts (and edit tasks)"),
    "edit_prompts": (0, "of each update's prompts, how many are edit tasks from the train split's edit pairs "
                        "(patch-token policy), rewarded by the dense ShapesWorld-ROVER edit reward"),
    "model_from_init": (True, "config.model / config.data are the source run's (config.init.checkpoint)"),
    "after_supervised": (False, "two phases in one run: supervised training first, then GRPO from it"),
    "supervised_evals": ("", "with after_supervised: the evaluations at the end of the supervised phase"),
    "train": ({}, "with after_supervised: updates of config.train for the GRPO phase"),
    "optim": ({}, "with after_supervised: updates of config.optim for the GRPO phase"),
}


def rl_block():
  """`config.rl` with every key declared: GRPOConfig's fields (unset ones as typed placeholders, so
  `--config.rl.temperature=0.8` works) and RUN_KEYS, at their defaults."""
  import ml_collections
  from ml_collections.config_dict import placeholder
  types = {"int": int, "float": float, "str": str, "bool": bool}
  out = {}
  for f in dataclasses.fields(GRPOConfig):
    default = f.default
    out[f.name] = placeholder(types[str(f.type).split("|")[0].strip()]) if default is None else default
  out.update({k: v for k, (v, _) in RUN_KEYS.items()})
  return ml_collections.ConfigDict(out)


def complete_rl(config) -> None:
  """Adds, in place, the keys of `rl_block()` that `config.rl` lacks (a config with an rl block)."""
  block = rl_block()
  with config.unlocked():
    for key in block.keys():
      if key not in config.rl:
        config.rl[key] = block[key]


def grpo_config_of(config) -> GRPOConfig:
  rl = config.rl
  return GRPOConfig(**{k: rl[k] for k in GRPO_KEYS if k in rl})


def grpo_state_factory(config):
  """(make_state, lr schedule): `make_state()` builds the GRPO train state — policy + frozen reference
  (`GRPOPolicy`) and the optimizer over the policy only — from `config.model` (tools/plan.py and
  param_count use it abstractly)."""
  from jaxmodels.trainer.optim import make_optimizer, trainable_filter
  from jaxmodels.trainer.setup import model_factory
  from jaxmodels.trainer.train_state import TrainState
  gcfg = grpo_config_of(config)
  tx, lr = make_optimizer(config.optim.to_dict(), config.train.total_steps)
  make_model = model_factory(config)
  # config.optim.trainable / frozen name paths in the model: here they are under policy/; the
  # reference is never trained.
  under = lambda patterns: [f"policy/{p}" for p in patterns or ()] or None  # noqa: E731
  wrt = trainable_filter(under(config.optim.trainable) or ["policy/.*"],
                         (under(config.optim.frozen) or []) + ["reference/.*"])

  def make_state():
    return TrainState(GRPOPolicy(make_model(), make_model(), gcfg), tx, wrt=wrt)

  return make_state, lr


def grpo_batch_spec(config, mesh, policy: GRPOPolicy, rules=None) -> dict:
  """The abstract batch of one GRPO update (tools/plan.py): prompts_per_step × group_size rollouts of
  `data.gen_len` prompt tokens and the policy's token slots, split over the batch rules."""
  from jaxmodels import sharding
  n = config.rl.prompts_per_step * grpo_config_of(config).group_size
  t = data_section(config.data, also="shapes_world").gen_len
  c = policy.policy.config
  slots = (c.patch_tokens.num_slots if policy.token_keys == ("pos", "pattern", "colour")
           else policy.policy.image_tokenizer.grid_size(c.image_tokenizer.scale) ** 2)
  shapes = {"ids": ((n, t), jnp.int32), "mask": ((n, t), jnp.int32), "old_logp": ((n, slots), jnp.float32),
            "ref_logp": ((n, slots), jnp.float32), "advantages": ((n,), jnp.float32),
            **{k: ((n, slots), jnp.int32) for k in policy.token_keys}}
  complete_rl(config)
  if config.rl.edit_prompts:
    size = c.und_encoder.image_size
    shapes["cond_image"] = ((n, size, size, 3), jnp.float32)
    if c.patch_tokens is not None and c.patch_tokens.copy_keep and grpo_config_of(config).keep_action:   # keep actions: one slot per source token
      shapes.update(keep=((n, slots, 2), jnp.float32), old_logp=((n, 2 * slots), jnp.float32),
                    ref_logp=((n, 2 * slots), jnp.float32))
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, len(s), rules))
          for k, (s, d) in shapes.items()}


def source_run(config):
  """(workdir, step, stored config) of the supervised run GRPO starts from (`config.init.checkpoint`)."""
  from jaxmodels.run_dir import checkpoint_step, run_workdir, stored_config
  from jaxmodels.config_utils import init_sources
  path = init_sources(config).get("checkpoint")
  if not path:
    raise ConfigError("config.init.checkpoint: GRPO starts from a trained run; name its workdir "
                      "(e.g. --config.init.checkpoint=runs/shapes_tiny)")
  workdir = run_workdir(path)
  step = checkpoint_step(workdir)
  return workdir, step, stored_config(workdir, step)


def with_source_model(config, src_config):
  """`config` with the source run's `model` and `data` (a copy; the rest is the GRPO config's) when
  `config.rl.model_from_init` (default True); else `config` itself (its model must be the run's)."""
  import ml_collections
  if not config.rl.model_from_init:
    return config
  merged = ml_collections.ConfigDict(config.to_dict())
  merged.model = ml_collections.ConfigDict(src_config.model.to_dict())
  merged.data = ml_collections.ConfigDict(src_config.data.to_dict())
  return merged


PHASE_KEYS = ("after_supervised", "train", "optim", "supervised_evals")


def phase_configs(config, workdir: str):
  """(supervised config, RL config, RL workdir) of a two-phase run (`config.rl.after_supervised`):
  train.py first trains `config` without its `rl` block in `workdir` (final evaluations
  `rl.supervised_evals`, default none), then runs GRPO from that run's weights in `<workdir>/rl`, with
  `config.train` / `config.optim` updated by `rl.train` / `rl.optim` (keys they must already have)."""
  import ml_collections
  d = config.to_dict()
  rl = d.pop("rl")
  sup = ml_collections.ConfigDict(d)
  sup.evals.which = rl.get("supervised_evals") or ""   # rl: a plain dict here
  post = ml_collections.ConfigDict(config.to_dict())
  for name in ("train", "optim"):
    extra = dict(rl.get(name) or {})
    unknown = sorted(set(extra) - set(d[name]))
    if unknown:
      raise ConfigError(f"config.rl.{name}: unknown key(s) {unknown}; they update config.{name}, whose keys "
                        f"are {sorted(d[name])}")
    post[name].update(extra)
  for key in PHASE_KEYS:
    if key in post.rl:
      del post.rl[key]
  post.init.checkpoint = workdir
  return sup, post, os.path.join(workdir, "rl")


def carry_tokenizer(src_dir: str, workdir: str) -> None:
  """Copies the source run's tokenizer (`tokenizer.json`, or the `tokenizer/` folder of a Hugging Face
  one) into `workdir`, unless it is there already."""
  import shutil
  from input_pipeline.tokenizers import RUN_TOKENIZER_DIR
  for name in ("tokenizer.json", RUN_TOKENIZER_DIR):
    src, dst = os.path.join(src_dir, name), os.path.join(workdir, name)
    if os.path.exists(dst) or not os.path.exists(src):
      continue
    if os.path.isdir(src):
      shutil.copytree(src, dst + ".tmp", dirs_exist_ok=True)
    else:
      shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


class PromptStream:
  """The GenEval-schema records of a ShapesWorld split, `per_step` a step: step s takes rows s·k ..
  s·k + k - 1 of an endless sequence of permutations keyed by `seed` (restartable at any step)."""

  def __init__(self, records: list[dict], per_step: int, seed: int):
    if not records:
      raise ConfigError("config.rl: the ShapesWorld train split has no prompt records")
    self.records, self.per_step, self.seed = records, per_step, seed

  def at(self, step: int) -> list[dict]:
    n = len(self.records)
    out = []
    for i in range(step * self.per_step, (step + 1) * self.per_step):
      epoch, j = divmod(i, n)
      order = np.random.default_rng([self.seed, epoch]).permutation(n)
      out.append(self.records[int(order[j])])
    return out


def train_records(data_dir: str, cfg_name: str, limit: int | None = None) -> list[dict]:
  from jaxmodels import shapes_world as sw
  split = sw.load_split(data_dir, "train", cfg_name, decode="lazy")
  n = len(split) if not limit else min(limit, len(split))
  return [dict(split[i]["metadata"]) for i in range(n)]


class EditPrompts:
  """GRPO's edit prompts (`rl.edit_prompts` a step): train-split edit tasks (`train_edit_tasks`) taken as
  `PromptStream` takes prompts, encoded as the ShapesWorld evaluations encode edits (the run's
  data.edit_layout, left-padded to data.gen_len; longer instructions are left out), with their sources
  [k, S, S, 3] in [-1, 1] and the dense ROVER reward (`rl.rewards.EditReward`)."""

  def __init__(self, model, tokenizer, data, data_dir: str, limit: int, per_step: int, seed: int):
    from input_pipeline.shapes_tasks import edit_prompt, left_pad
    from jaxmodels.rl.rewards import EditReward
    if getattr(model, "patch_head", None) is None or getattr(model.patch_head, "reference", None) is None:
      raise ConfigError("config.rl.edit_prompts: GRPO on edits needs a patch-token model whose edit prompts "
                        "hold the source's own tokens (model.patch_tokens.edit_reference 'patch_tokens' or "
                        "'copy')")
    n_img, length = model.num_edit_image_tokens, data.gen_len
    prompt = lambda text: edit_prompt(tokenizer, text, n_img, data.edit_layout)  # noqa: E731
    self.encode = lambda text: left_pad(prompt(text), length, tokenizer.pad_id)  # noqa: E731
    tasks = train_edit_tasks(data_dir, data.config, lambda text: len(prompt(text)) <= length, limit)
    if not tasks:
      raise ConfigError(f"config.rl.edit_prompts: no train-split edit of {data.config!r} fits data.gen_len="
                        f"{length} with {n_img} source tokens")
    self.stream = PromptStream(tasks, per_step, seed + 1)
    self.size = model.config.und_encoder.image_size
    self.reward = EditReward()

  def at(self, step: int, offset: int):
    """Step `step`'s tasks and their (ids, mask [k, T], sources [k, S, S, 3]); rows of the rollout's
    text-to-image prompts (`offset` of them) come first and get a blank source."""
    from input_pipeline.shapes_tasks import to_unit_range
    tasks = self.stream.at(step)
    rows = [self.encode(t["prompt"]) for t in tasks]
    src = np.stack([to_unit_range(t["source_image"], self.size) for t in tasks])
    blank = np.zeros((offset,) + src.shape[1:], src.dtype)
    return (tasks, np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
            np.concatenate([blank, src]))


def train_edit_tasks(data_dir: str, cfg_name: str, fits, limit: int | None = None) -> list[dict]:
  """ShapesWorld-ROVER IG tasks (the fields `shapes_rover.score_ig` reads, plus the source image uint8
  [S, S, 3] as "source_image") from the train split's edit pairs whose instruction `fits(text)` the
  prompt length: the edits supervised training saw, none of the evaluation's."""
  from jaxmodels import shapes_world as sw
  split = sw.load_split(data_dir, "train", cfg_name, decode="lazy")
  n = len(split) if not limit else min(limit, len(split))
  tasks = []
  for i in range(n):
    ex = split[i]
    edit = ex["edit"]
    if edit and fits(edit["instruction"]):
      tasks.append({"id": f"train_{i}", "kind": edit["kind"], "prompt": edit["instruction"], "source": ex["scene"],
                    "target": edit["target"], "steps": edit["steps"], "source_image": ex["image"]})
  return tasks


def diversity(images: np.ndarray, group: int) -> float:
  """The mean fraction of distinct images within each prompt's group (1: all G differ)."""
  n = images.shape[0] // group
  flat = images.reshape(n, group, -1)
  return float(np.mean([len({row.tobytes() for row in g}) / group for g in flat]))


def train_grpo(config, workdir: str, report: bool = True) -> dict:
  """Runs GRPO (module docstring) in `workdir` and returns the final scores (`report`: also print
  the score table)."""
  from input_pipeline.datasets import default_data_dir
  from jaxmodels import sharding
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.evals import shapes_eval
  from jaxmodels.rl.rewards import make_rewards
  from jaxmodels.serving.loader import run_tokenizer
  from jaxmodels.trainer import MetricWriter, make_train_step
  from jaxmodels.trainer.optim import ScheduleClock
  from jaxmodels.trainer.setup import mesh_and_rules, restore_eval_model, run_keys
  from jaxmodels.trainer.workdir import write_config
  from jaxmodels.unified.sampling import to_uint8

  complete_rl(config)
  rl = config.rl
  gcfg = grpo_config_of(config)
  src_dir, src_step, src_config = source_run(config)
  config = with_source_model(config, src_config)
  mesh, rules = mesh_and_rules(config)
  total = config.train.total_steps
  make_state, lr = grpo_state_factory(config)
  ts = sharding.create_sharded(make_state, mesh, rules)
  graphdef, state = nnx.split(ts)
  shardings = sharding.state_shardings(state, mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                      async_save=config.checkpoint.async_save, cleanup_tmp=True)
  ckpt.quarantine_incomplete()
  # rl.und_weight / edit_weight > 0: every update also takes a supervised batch from the source run's
  # data pipeline (its tokenizer, its Q/A mix; with edit_weight every generation row an edit pair); the
  # iterator's position is checkpointed with the state.
  und_data, kept = None, tuple(p for p, w in (("und_", gcfg.und_weight), ("gen_", gcfg.edit_weight)) if w)
  if kept:
    from input_pipeline.datasets import make_train_data
    from jaxmodels.unified.model_io import model_io
    data_config = config
    if gcfg.edit_weight:
      data_config = config.copy_and_resolve_references()
      with data_config.unlocked():
        data_config.data.edit_fraction = 1.0
    und_data = make_train_data(data_config, src_dir, io=model_io(config.model))
  data_iter = und_data.iterator if und_data is not None else None
  start, restored = ckpt.restore_latest(sharding.abstract_state(state, shardings), data_iter=data_iter)
  if start is not None:
    state = restored
    logging.info("resumed GRPO from %s at step %d", ckpt.directory, start)
  else:
    start = 0
    source, _ = restore_eval_model(src_config, src_dir, src_step)   # EMA weights where kept
    weights = nnx.state(source, nnx.Param)
    for part in (ts.model.policy, ts.model.reference):
      placed = jax.device_put(weights, sharding.state_shardings(nnx.state(part, nnx.Param), mesh, rules))
      nnx.update(part, jax.tree.map(jnp.copy, placed))   # own buffers: the step donates both
    state = nnx.state(ts)
    logging.info("GRPO starts from %s step %d", src_dir, src_step)
  if jax.process_index() == 0:
    write_config(workdir, config)

  tokenizer = run_tokenizer(src_dir, src_config)
  if jax.process_index() == 0:   # the run carries its tokenizer, so evaluate.py / serve.py read it here
    carry_tokenizer(src_dir, workdir)
  data = data_section(config.data, also="shapes_world")
  data_dir = data.data_dir or default_data_dir()
  gen_len, layout = data.gen_len, data.und_layout
  n_edit = int(rl.edit_prompts)
  if not 0 <= n_edit <= rl.prompts_per_step:
    raise ConfigError(f"config.rl.edit_prompts={n_edit}: must be in [0, rl.prompts_per_step="
                      f"{rl.prompts_per_step}]")
  prompts = PromptStream(train_records(data_dir, data.config, rl.prompt_pool), rl.prompts_per_step - n_edit,
                         config.seed)
  policy_now = lambda: nnx.merge(graphdef, state).model.policy  # noqa: E731
  edit_prompts = None
  if n_edit:
    edit_prompts = EditPrompts(policy_now(), tokenizer, data, data_dir, rl.prompt_pool, n_edit, config.seed)
  # The VQA reward's judge is the frozen reference: a judge that moved with the policy could be gamed.
  answer_fn = (shapes_eval.model_answer_fn(nnx.merge(graphdef, state).model.reference, tokenizer, batch_size=config.evals.batch_size,
                                           prompt_len=data.und_len, layout=layout)
               if "vqa" in rl.rewards else None)
  rewards = make_rewards(rl.rewards.to_dict(), answer_fn=answer_fn,
                         external=rl.external.to_dict())

  batch_sh = lambda x: sharding.batch_sharding(mesh, x.ndim, rules)  # noqa: E731
  put = lambda b: {k: jax.device_put(jnp.asarray(v), batch_sh(np.asarray(v))) for k, v in b.items()}  # noqa: E731
  clock = config.optim.clock       # "time": the schedule spans the time limit (trainer/optim.py)
  step_fn = make_train_step(ts, lr_schedule=lr, state_shardings=shardings, clock=clock)

  @jax.jit
  def rollout(state, ids, mask, key, cond=None):
    return nnx.merge(graphdef, state).model.rollout(ids, mask, key, cond)

  rng, eval_rng = run_keys(config.seed)
  g = gcfg.group_size
  limit = config.train.time_limit_minutes
  writer = MetricWriter(workdir, total_steps=total, batch_size=rl.prompts_per_step * g, start_step=start,
                        time_limit_minutes=limit)
  t0, step = time.time(), start
  schedule_clock = ScheduleClock(clock, start=start, total=total, limit_minutes=limit)
  for step in range(start + 1, total + 1):
    records = prompts.at(step)
    ids, mask, _ = shapes_eval.encode_prompts(tokenizer, [r["prompt"] for r in records], gen_len)
    cond, tasks = None, []
    if edit_prompts is not None:     # edit prompts after the text-to-image ones; their sources as cond
      tasks, e_ids, e_mask, cond = edit_prompts.at(step, len(records))
      ids, mask = np.concatenate([ids, e_ids]), np.concatenate([mask, e_mask])
      cond = np.repeat(cond, g, axis=0)
    ids, mask = np.repeat(ids, g, axis=0), np.repeat(mask, g, axis=0)     # [P·G, T]: groups adjacent
    key = jax.random.fold_in(rng, step)
    with sharding.use_mesh(mesh, rules):
      tokens, images, old, ref, _ = rollout(state, *map(jnp.asarray, (ids, mask)), key,
                                            None if cond is None else jnp.asarray(cond))
    images_u8 = to_uint8(images)
    n_t2i = len(records) * g
    total_reward, parts = rewards(images_u8[:n_t2i], [r for r in records for _ in range(g)])
    if tasks:
      edit_reward, edit_parts = edit_prompts.reward(images_u8[n_t2i:], [t for t in tasks for _ in range(g)])
      total_reward, parts = np.concatenate([total_reward, edit_reward]), {**parts, **edit_parts}
    adv = group_advantages(total_reward.reshape(-1, g), scale=gcfg.scale).reshape(-1)
    und = {} if data_iter is None else {k: v for k, v in next(data_iter).items() if k.startswith(kept)}
    extra = {} if cond is None else {"cond_image": cond}
    batch = put(dict(ids=ids, mask=mask, **tokens, old_logp=old, ref_logp=ref, advantages=adv, **extra,
                     **und))
    with sharding.use_mesh(mesh, rules):
      for epoch in range(rl.inner_epochs):
        state, metrics = step_fn(state, batch, jax.random.fold_in(key, epoch + 1), *schedule_clock.args(step))
    out_of_time = limit is not None and (time.time() - t0) / 60 > limit
    if step % config.train.log_every == 0 or step == total or out_of_time:
      logged = {**{k: float(v) for k, v in metrics.items()}, "rl/reward": float(total_reward.mean()),
                **{f"rl/reward/{k}": float(np.nanmean(v)) for k, v in parts.items() if np.isfinite(v).any()},
                "rl/diversity": diversity(images_u8, g)}
      writer.write(step, logged)
    if step % config.train.ckpt_every == 0 or step == total or out_of_time:
      ckpt.save(step, state, data_iter=data_iter, config=json.loads(config.to_json_best_effort()))
    if step % config.train.eval_every == 0 and step != total and not out_of_time:
      scores = shapes_eval.evaluate_model(policy_now(), tokenizer, config, data_dir, workdir,
                                          rng=jax.random.fold_in(eval_rng, step), final=False,
                                          evals=("geneval",))
      writer.write(step, {f"{b}/{k}": v for b, t in scores.items() for k, v in t.items()}, prefix="eval")
      writer.pause()
    if out_of_time:
      logging.info("time limit of %.1f minutes reached at step %d", limit, step)
      break
  ckpt.wait()
  if und_data is not None:
    from input_pipeline import pipeline
    pipeline.close(data_iter)
  train_minutes = (time.time() - t0) / 60
  which = shapes_eval.selected_evals(config)
  scores = shapes_eval.evaluate_model(policy_now(), tokenizer, config, data_dir, workdir, rng=eval_rng,
                                      final=True, evals=which)
  writer.write(step, {f"{b}/{k}": v for b, t in scores.items() for k, v in t.items()}, prefix="final")
  writer.close()
  ckpt.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "scores.json"), "w") as f:
      json.dump({"step": step, "train_minutes": train_minutes, "source": src_dir, "source_step": src_step,
                 **scores}, f, indent=2)
    if report:
      shapes_eval.print_scores(scores)
  return scores
