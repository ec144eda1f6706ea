r"""Paper findings at toy scale: trains the arms of an ablation on ShapesWorld under one budget and the
same seeds, evaluates each run, and writes a table with means, spreads and differences plus a plot.

    python tools/ablate.py --ablation=gen_target --seeds=3 --minutes=10 --workdir=runs/ablations
    python tools/ablate.py --ablation=all --seeds=3 --minutes=10 --workdir=runs/ablations --json
    python tools/ablate.py --ablation=sequential --runlocal --seeds=1 --workdir=/tmp/ablate_smoke  # seconds
    python tools/ablate.py --ablation=dbfusion --report_only --workdir=runs/ablations   # table + plot again

Ablations (configs/ablations/<name>.py; docs/ablations.md says what each tests): pisces_encoders,
gen_target, dbfusion, latte_groups, sequential. An ablation module has `get_config(arg)` with `arg` =
"<arm>[,runlocal][,stage=<stage>]", `ARMS` (the first arm is the reference of the differences),
`METRICS` ("bench/key", or "bench/*" for every key of a benchmark) and optionally `STAGES` ({arm:
(stage, ...)}: trainings run in turn, each with an equal share of the budget, stage k > 1 initialised
from stage k-1 through `config.init.checkpoint`), `MEASURE` (("sampling",): seconds per generated image,
timed from the final checkpoint), `LOWER_IS_BETTER` and `OVERRIDES` ({arm: {"dotted.key": value}}).

Budget: `--minutes` sets `train.time_limit_minutes` (the run stops at that time or at the config's
`train.total_steps`, 2000); `--steps` sets `train.total_steps` (and no time limit); `--runlocal` uses
each config's smoke settings (3 steps, tiny eval sets). Seeds are `config.seed` = 0 .. seeds-1.

Outputs in `<workdir>/<ablation>/`: `<arm>/seed<k>[/<stage>]/` (each run's train.py workdir),
`results.jsonl` (one line per arm × seed, appended as runs finish: a rerun skips finished runs of the
same budget, and an interrupted run resumes from its checkpoint), `table.md` (per arm: mean ± std over
seeds of each metric; each arm's difference from the reference with its standard error and direction)
and `plot.png` (one panel per metric, bars with ±std error bars).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxmodels.errors import ConfigError, JaxModelsError  # noqa: E402

ABLATIONS = ("pisces_encoders", "gen_target", "dbfusion", "latte_groups", "sequential")


############################ Ablation specs ##################################

def load_ablation(name: str):
  """The module `configs.ablations.<name>` (checked: ARMS, METRICS, get_config)."""
  if name not in ABLATIONS:
    raise ConfigError(f"--ablation={name!r}: expected one of {', '.join(ABLATIONS)} or 'all'")
  module = importlib.import_module(f"configs.ablations.{name}")
  for attr in ("ARMS", "METRICS", "get_config"):
    if not hasattr(module, attr):
      raise ConfigError(f"configs/ablations/{name}.py has no {attr}")
  return module


def stages_of(module, arm: str) -> tuple[str, ...]:
  """The trainings of an arm, in order ("" = one plain training)."""
  return tuple(getattr(module, "STAGES", {}).get(arm, ("",)))


def budget_name(*, minutes: float | None, steps: int | None, runlocal: bool) -> str:
  """The budget signature stored with each result (resume only reuses results of the same budget)."""
  if runlocal:
    return "runlocal" + (f",{steps}steps" if steps else "")
  parts = [f"{minutes:g}min" if minutes else "", f"{steps}steps" if steps else ""]
  return ",".join(p for p in parts if p) or "config"


def set_path(config, path: str, value: Any) -> None:
  """`config.a.b = value` for the dotted `path`; None or missing parents become empty dicts."""
  import ml_collections
  node, parts = config, path.split(".")
  for part in parts[:-1]:
    if part not in node or node[part] is None:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  node[parts[-1]] = value


def arm_config(module, arm: str, seed: int, *, stage: str = "", minutes: float | None = None,
               steps: int | None = None, runlocal: bool = False, init_from: str | None = None):
  """The ConfigDict of one training: the module's config for `arm` (and `stage`), the module's
  OVERRIDES for the arm, then seed and budget (`minutes` / `steps` already divided among stages)."""
  arg = ",".join(x for x in (arm, "runlocal" if runlocal else "", f"stage={stage}" if stage else "") if x)
  config = module.get_config(arg)
  overrides = dict(getattr(module, "OVERRIDES", {}).get(arm, {}))
  overrides["seed"] = int(seed)
  if minutes:
    overrides["train.time_limit_minutes"] = float(minutes)
  if steps:
    overrides["train.total_steps"] = int(steps)
    if not minutes:
      overrides["train.time_limit_minutes"] = None
  if init_from:
    overrides["init.checkpoint"] = init_from
  for path, value in overrides.items():
    set_path(config, path, value)
  return config


############################ Results #########################################

def flatten(scores: dict, prefix: str = "") -> dict[str, float]:
  """{"qa": {"overall": 0.5}} -> {"qa/overall": 0.5}; non-numbers are dropped."""
  out = {}
  for key, value in scores.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      out[name] = float(value)
  return out


def read_results(path: str) -> list[dict]:
  """results.jsonl rows (a torn last line, from a killed writer, is ignored)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def append_result(path: str, row: dict) -> None:
  torn = False
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"        # a killed writer's partial last line: start a new one
  with open(path, "a", encoding="utf-8") as f:
    f.write(("\n" if torn else "") + json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def select_metrics(patterns: Sequence[str], rows: Sequence[dict]) -> list[str]:
  """The metric names of `patterns` ("bench/key" or "bench/*") in pattern order; a wildcard expands to
  the keys the rows hold, in the order of their first appearance."""
  seen = []
  for row in rows:
    seen += [k for k in row["metrics"] if k not in seen]
  out = []
  for pattern in patterns:
    names = [k for k in seen if k.startswith(pattern[:-1])] if pattern.endswith("/*") else [pattern]
    out += [n for n in names if n not in out]
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


def summarize(name: str, arms: Sequence[str], patterns: Sequence[str], rows: Sequence[dict], *,
              lower_is_better: Sequence[str] = (), budget: str = "") -> dict:
  """Per arm and metric: mean, std, n over seeds; per non-reference arm and metric: the difference
  from the reference arm (arms[0]), its standard error sqrt(s_a²/n_a + s_r²/n_r), how many standard
  errors that is, and the direction ("clear" beyond 2 se with ≥ 2 seeds per arm)."""
  metrics = select_metrics(patterns, rows)
  per_arm, seeds = {}, {}
  for arm in arms:
    mine = [r for r in rows if r["arm"] == arm]
    seeds[arm] = sorted(r["seed"] for r in mine)
    per_arm[arm] = {}
    for m in metrics:
      values = [r["metrics"][m] for r in mine if m in r["metrics"]]
      if values:
        mean, std = mean_std(values)
        per_arm[arm][m] = {"mean": mean, "std": std, "n": len(values)}
  ref, diffs = arms[0], []
  for arm in arms[1:]:
    for m in metrics:
      a, r = per_arm[arm].get(m), per_arm[ref].get(m)
      if not (a and r):
        continue
      diff = a["mean"] - r["mean"]
      se = math.sqrt(a["std"] ** 2 / a["n"] + r["std"] ** 2 / r["n"])
      z = diff / se if se > 0 else None
      better = None if diff == 0 else (arm if (diff > 0) != (m in lower_is_better) else ref)
      if min(a["n"], r["n"]) < 2:
        verdict = "single seed"
      elif z is None or abs(z) <= 2:
        verdict = "within noise"
      else:
        verdict = "clear"
      diffs.append({"metric": m, "arm": arm, "reference": ref, "diff": diff, "se": se, "z": z,
                    "direction": ("=" if diff == 0 else f"{arm} {'>' if diff > 0 else '<'} {ref}"),
                    "better": better, "verdict": verdict})
  return {"ablation": name, "budget": budget, "arms": list(arms), "metrics": metrics, "seeds": seeds,
          "per_arm": per_arm, "differences": diffs, "lower_is_better": list(lower_is_better)}


def fmt(x: float | None) -> str:
  if x is None:
    return "—"
  a = abs(x)
  if a and a < 0.001:
    return f"{x:.2e}"
  return f"{x:.1f}" if a >= 100 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def table_markdown(summary: dict, *, claim: str = "", command: str = "") -> str:
  """table.md: the per-arm table (mean ± std, n) and the differences from the reference arm."""
  arms, s = summary["arms"], summary
  lines = [f"# Ablation `{s['ablation']}`", ""]
  if claim:
    lines += [claim, ""]
  lines += [f"Budget per run: {s['budget']} · seeds per arm: " +
            ", ".join(f"{a}: {len(s['seeds'][a])}" for a in arms) +
            " · mean ± sample std over seeds" +
            (f" · lower is better: {', '.join(s['lower_is_better'])}" if s["lower_is_better"] else ""), ""]
  if command:
    lines += [f"Command: `{command}`", ""]
  lines += ["| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
  for m in s["metrics"]:
    cells = []
    for arm in arms:
      v = s["per_arm"][arm].get(m)
      cells.append("—" if v is None else f"{fmt(v['mean'])} ± {fmt(v['std'])} (n={v['n']})")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  if s["differences"]:
    lines += ["", f"Differences from the reference arm `{arms[0]}` (difference ± standard error; "
              "'clear' = beyond 2 standard errors with ≥ 2 seeds per arm):", "",
              "| metric | comparison | difference | se | direction | better | verdict |",
              "|---|---|---|---|---|---|---|"]
    for d in s["differences"]:
      lines.append(f"| {d['metric']} | {d['arm']} − {d['reference']} | {fmt(d['diff'])} | {fmt(d['se'])} "
                   f"| {d['direction']} | {d['better'] or '—'} | {d['verdict']} |")
  return "\n".join(lines) + "\n"


COLORS = ((66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193))


def plot_png(summary: dict, path: str) -> None:
  """plot.png: one panel per metric (own y scale from 0), a bar per arm with a ±std error bar."""
  from PIL import Image, ImageDraw, ImageFont
  arms, metrics = summary["arms"], summary["metrics"] or ["(no results)"]
  font = ImageFont.load_default()
  cols = min(4, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  pw, ph, top = 240, 220, 50
  img = Image.new("RGB", (cols * pw, top + rows * ph + 20), "white")
  draw = ImageDraw.Draw(img)
  draw.text((10, 8), f"{summary['ablation']} ({summary['budget']}): mean ± std over seeds", fill="black",
            font=font)
  for i, arm in enumerate(arms):   # legend
    x = 10 + i * 120
    draw.rectangle((x, 28, x + 10, 38), fill=COLORS[i % len(COLORS)])
    draw.text((x + 14, 27), arm[:16], fill="black", font=font)
  for k, m in enumerate(metrics):
    r, c = divmod(k, cols)
    x0, y0 = c * pw, top + r * ph
    draw.text((x0 + 8, y0 + 4), m[:36], fill="black", font=font)
    values = [summary["per_arm"].get(a, {}).get(m) for a in arms]
    hi = max([v["mean"] + v["std"] for v in values if v] + [0.0]) or 1.0   # all zero: a 0..1 axis
    lo = min([min(0.0, v["mean"] - v["std"]) for v in values if v] + [0.0])
    bx0, bx1, by0, by1 = x0 + 30, x0 + pw - 10, y0 + 24, y0 + ph - 24   # plot box
    scale = (by1 - by0) / ((hi - lo) * 1.15 or 1.0)
    y_of = lambda v: by1 - (v - lo) * scale  # noqa: E731
    draw.line((bx0, by0, bx0, by1), fill="gray")
    draw.line((bx0, y_of(0.0), bx1, y_of(0.0)), fill="gray")
    draw.text((x0 + 2, by0 - 4), fmt(lo + (hi - lo) * 1.15), fill="gray", font=font)
    slot = (bx1 - bx0) / max(1, len(arms))
    for i, v in enumerate(values):
      left = bx0 + i * slot + slot * 0.15
      right = bx0 + (i + 1) * slot - slot * 0.15
      if v is None:
        draw.text((left, by1 - 12), "n/a", fill="gray", font=font)
        continue
      draw.rectangle((left, min(y_of(v["mean"]), y_of(0.0)), right, max(y_of(v["mean"]), y_of(0.0))),
                     fill=COLORS[i % len(COLORS)])
      mid = (left + right) / 2
      if v["std"] > 0:
        ya, yb = y_of(v["mean"] + v["std"]), y_of(v["mean"] - v["std"])
        draw.line((mid, ya, mid, yb), fill="black", width=1)
        draw.line((mid - 4, ya, mid + 4, ya), fill="black")
        draw.line((mid - 4, yb, mid + 4, yb), fill="black")
      draw.text((left, min(y_of(v["mean"] + v["std"]), y_of(v["mean"])) - 12), fmt(v["mean"]),
                fill="black", font=font)
      draw.text((left, by1 + 4), arms[i][:10], fill="black", font=font)
  img.save(path)


def write_report(out_dir: str, module, name: str, budget: str, *, command: str = "") -> dict:
  """Reads results.jsonl (rows of this budget), writes table.md and plot.png; returns the summary."""
  rows = [r for r in read_results(os.path.join(out_dir, "results.jsonl")) if r.get("budget") == budget]
  summary = summarize(name, module.ARMS, module.METRICS, rows, budget=budget,
                      lower_is_better=getattr(module, "LOWER_IS_BETTER", ()))
  claim = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table_markdown(summary, claim=claim, command=command))
  plot_png(summary, os.path.join(out_dir, "plot.png"))
  return summary


############################ Extra measurements ##############################

def restore_model(config, run_dir: str):
  """The trained model of a finished run (its latest checkpoint; built abstractly, as evaluate.py)."""
  from flax import nnx

  from jaxmodels import sharding
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.errors import CheckpointFormatError
  from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory
  mesh, rules = mesh_and_rules(config)
  make_state, _ = train_state_factory(config)
  graphdef, state = nnx.split(nnx.eval_shape(make_state))
  target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise CheckpointFormatError(f"{run_dir}/checkpoints: no checkpoint to measure")
    return nnx.merge(graphdef, ckpt.restore(step, target)).model
  finally:
    ckpt.close()


def _tokenizer_and_data(config, run_dir: str):
  from input_pipeline.datasets import default_data_dir
  from input_pipeline.tokenizers import WordTokenizer
  return (WordTokenizer.load(os.path.join(run_dir, "tokenizer.json")),
          config.data.get("data_dir") or default_data_dir())


def measure_sampling(config, run_dir: str, *, repeats: int = 3) -> dict:
  """Seconds per generated image: `generate_image` on one batch of test prompts (evals.batch_size,
  evals.sample_steps, evals.guidance), compiled and warmed up first; the median of `repeats` calls."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from jaxmodels import shapes_world as sw
  from jaxmodels.config_schema import data_section
  from input_pipeline.shapes_tasks import left_pad
  model = restore_model(config, run_dir)
  tok, data_dir = _tokenizer_and_data(config, run_dir)
  ev, batch = config.evals, int(config.evals.batch_size)
  test = sw.load_split(data_dir, "test", data_section(config.data, also="shapes_world").config, decode=True)
  prompts = [left_pad([tok.bos_id] + tok.encode(test[i % len(test)]["metadata"]["prompt"]),
                      config.data.gen_len, tok.pad_id) for i in range(batch)]
  ids = jnp.asarray(np.stack([p[0] for p in prompts]))
  mask = jnp.asarray(np.stack([p[1] for p in prompts]))

  @nnx.jit(static_argnames=("num_steps", "guidance"))
  def sample(model, ids, mask, rng, num_steps, guidance):
    return model.generate_image(ids, mask, rng, num_steps=num_steps, guidance=guidance)

  kw = dict(num_steps=int(ev.sample_steps), guidance=float(ev.guidance))
  jax.block_until_ready(sample(model, ids, mask, jax.random.key(0), **kw))   # compile + warm-up
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(sample(model, ids, mask, jax.random.key(i + 1), **kw))
    times.append(time.perf_counter() - t)
  per_batch = sorted(times)[len(times) // 2]
  return {"s_per_image": per_batch / batch, "s_per_batch": per_batch, "batch": batch,
          "sample_steps": kw["num_steps"]}


############################ Runner ##########################################

def _train(config, workdir: str) -> dict:
  import train
  return train.train_and_evaluate(config, workdir)


def run_one(module, arm: str, seed: int, run_dir: str, *, minutes: float | None, steps: int | None,
            runlocal: bool, train_fn: Callable[[Any, str], dict]) -> dict:
  """Trains (every stage of) one arm × seed and measures it; returns the results.jsonl row fields."""
  stages = stages_of(module, arm)
  budget = budget_name(minutes=minutes, steps=steps, runlocal=runlocal)
  marker = os.path.join(run_dir, "ablate_budget.txt")
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      if f.read().strip() != budget:
        raise ConfigError(f"{run_dir} holds a run of another budget; use another --workdir")
  else:
    os.makedirs(run_dir, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
      f.write(budget)
  share_min = minutes / len(stages) if minutes else None
  share_steps = max(1, steps // len(stages)) if steps else None
  metrics, info, prev, t0 = {}, {}, None, time.time()
  for k, stage in enumerate(stages):
    sdir = os.path.join(run_dir, stage) if stage else run_dir
    config = arm_config(module, arm, seed, stage=stage, minutes=share_min, steps=share_steps,
                        runlocal=runlocal, init_from=prev)
    done = os.path.join(sdir, "scores.json")
    if os.path.exists(done):          # a finished stage of an interrupted arm: not trained again
      with open(done, encoding="utf-8") as f:
        scores = {k2: v for k2, v in json.load(f).items() if isinstance(v, dict)}
    else:
      os.makedirs(sdir, exist_ok=True)
      scores = train_fn(config, sdir)
      if "stopped_by" in scores:
        raise JaxModelsError(f"{sdir}: stopped by {scores['stopped_by']} at step {scores.get('step')}; "
                             "rerun the same command to resume")
    flat = flatten(scores)
    if os.path.exists(done):
      with open(done, encoding="utf-8") as f:
        run_info = json.load(f)
      info[stage or "run"] = {key: run_info.get(key) for key in ("step", "train_minutes", "params")}
    if k < len(stages) - 1:
      metrics.update({f"{stage}/{m}": v for m, v in flat.items()})
    else:
      metrics.update(flat)
    prev = sdir
  if "sampling" in getattr(module, "MEASURE", ()):
    metrics.update({f"sampling/{k}": v for k, v in measure_sampling(config, prev).items()})
  return {"metrics": metrics, "runs": info, "wall_s": time.time() - t0}


def run_ablation(name: str, workdir: str, *, seeds: int = 3, minutes: float | None = None,
                 steps: int | None = None, runlocal: bool = False, train_fn: Callable | None = None,
                 command: str = "", log: Callable[[str], None] = print) -> dict:
  """Runs the missing arm × seed runs of one ablation, then writes table.md / plot.png; returns the
  summary. `train_fn(config, workdir) -> scores` defaults to train.train_and_evaluate."""
  module = load_ablation(name)
  budget = budget_name(minutes=minutes, steps=steps, runlocal=runlocal)
  out_dir = os.path.join(workdir, name)
  os.makedirs(out_dir, exist_ok=True)
  results = os.path.join(out_dir, "results.jsonl")
  done = {(r["arm"], r["seed"]) for r in read_results(results) if r.get("budget") == budget}
  todo = [(arm, s) for s in range(seeds) for arm in module.ARMS if (arm, s) not in done]
  if todo and train_fn is None:
      train_fn = train_fn or _train
  total, t_start, durations = len(todo), time.time(), []
  if len(done):
    log(f"[ablate] {name}: {len(done)} finished run(s) of budget {budget} found in {results}; skipped")
  for i, (arm, seed) in enumerate(todo):
    elapsed = (time.time() - t_start) / 60
    per_run = (sum(durations) / len(durations) if durations else
               (minutes + 5) * 60 if minutes and not runlocal else None)   # + compile and final evals
    eta = f"{per_run * (total - i) / 60:.1f} min" if per_run else "?"
    log(f"[ablate] {name} run {i + 1}/{total}: arm={arm} seed={seed} ({budget}) | "
        f"elapsed {elapsed:.1f} min | ETA {eta}")
    run_dir = os.path.join(out_dir, arm, f"seed{seed}")
    row = run_one(module, arm, seed, run_dir, minutes=minutes, steps=steps, runlocal=runlocal,
                  train_fn=train_fn)
    durations.append(row["wall_s"])
    append_result(results, {"ablation": name, "arm": arm, "seed": seed, "budget": budget,
                            "run_dir": run_dir, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            **row})
    log(f"[ablate] {name} run {i + 1}/{total} done in {row['wall_s'] / 60:.1f} min: " +
        ", ".join(f"{m}={fmt(v)}" for m, v in row["metrics"].items()
                  if m in select_metrics(module.METRICS, [row])))
  summary = write_report(out_dir, module, name, budget, command=command)
  log(f"[ablate] {name}: {os.path.join(out_dir, 'table.md')}, plot.png")
  return summary


def main(argv):
  del argv
  from jaxmodels import host_devices
  from jaxmodels.errors import run_cli
  host_devices.ensure_collective_threads()   # before the first computation (virtual CPU devices)
  run_cli(_run)


def _run():
  names = ABLATIONS if _ABLATION.value == "all" else tuple(_ABLATION.value.split(","))
  minutes, steps = _MINUTES.value, _STEPS.value
  if not (minutes or steps or _RUNLOCAL.value):
    minutes = 10.0
  if _SEEDS.value < 1:
    raise ConfigError(f"--seeds={_SEEDS.value}: need at least 1")
  for name in names:          # every name checked before the first run
    load_ablation(name)
  out = {}
  for name in names:
    command = (f"python tools/ablate.py --ablation={name} --seeds={_SEEDS.value}" +
               (" --runlocal" if _RUNLOCAL.value else "") + (f" --minutes={minutes:g}" if minutes else "") +
               (f" --steps={steps}" if steps else "") + f" --workdir={_WORKDIR.value}")
    if _REPORT_ONLY.value:
      out_dir = os.path.join(_WORKDIR.value, name)
      os.makedirs(out_dir, exist_ok=True)
      out[name] = write_report(out_dir, load_ablation(name),
                               name, budget_name(minutes=minutes, steps=steps, runlocal=_RUNLOCAL.value),
                               command=command)
    else:
      out[name] = run_ablation(name, _WORKDIR.value, seeds=_SEEDS.value, minutes=minutes, steps=steps,
                               runlocal=_RUNLOCAL.value, command=command,
                               log=(lambda s: print(s, file=sys.stderr, flush=True)) if _JSON.value
                               else (lambda s: print(s, flush=True)))
  if _JSON.value:
    print(json.dumps(out, indent=2))
  else:
    for name in names:
      with open(os.path.join(_WORKDIR.value, name, "table.md"), encoding="utf-8") as f:
        print(f.read())


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  from absl import app, flags
  _ABLATION = flags.DEFINE_string("ablation", "all", f"One of {', '.join(ABLATIONS)}, a comma list, or all.")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/ablations", "Output root (<workdir>/<ablation>/...).")
  _SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per arm (config.seed = 0 .. seeds-1).")
  _MINUTES = flags.DEFINE_float("minutes", None, "Training minutes per run (default 10 without --steps).")
  _STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (instead of, or with, --minutes).")
  _RUNLOCAL = flags.DEFINE_bool("runlocal", False, "Smoke settings: 3 steps and tiny evals per run.")
  _JSON = flags.DEFINE_bool("json", False, "Print the summaries as JSON (progress goes to stderr).")
  _REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Rewrite table.md / plot.png from results.jsonl.")
  app.run(main)
