r"""GRPO against continued supervised training, equal wall time, from the same checkpoint (issue 30).

    python tools/grpo_vs_sft.py --source=runs/shapes_tiny --minutes=10 --seeds=0,1,2 --out=runs/grpo_vs_sft

Per seed, two runs start from the source run's weights: `configs/shapes_grpo.py` (GRPO with the dense
GenEval reward) and `configs/shapes_tiny.py` continued (its SFT mix at the source run's final learning
rate, constant), each stopped by `train.time_limit_minutes`; both end with the same final evaluation
(ShapesWorld-GenEval on the 553 test prompts and Q/A). Each run is its own `train.py` process (logs in
`<out>/<arm>_seed<k>.log`; `--parallel` runs a seed's two arms at once, so on a shared machine both see
the same load); a run whose scores.json exists is skipped (resumable). Writes `<out>/results.jsonl`, `<out>/table.md` (mean ±
std over seeds of GenEval overall, every tag and Q/A) and prints the table; the GRPO runs'
metrics.jsonl hold the reward curves (`train/rl/reward/*`) and the in-loop GenEval curve.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arm_command(arm: str, source: str, workdir: str, seed: int, minutes: float, lr: float) -> list[str]:
  common = [f"--workdir={workdir}", f"--config.seed={seed}", f"--config.init.checkpoint={source}",
            f"--config.train.time_limit_minutes={minutes}", "--config.evals.which=qa,geneval"]
  if arm == "grpo":
    return [sys.executable, "train.py", "--config=configs/shapes_grpo.py", *common,
            "--config.train.total_steps=100000", "--config.train.eval_every=100000"]
  return [sys.executable, "train.py", "--config=configs/shapes_tiny.py:grpo=no", *common,
          f"--config.optim.lr={lr}", "--config.optim.min_lr_ratio=1.0", "--config.optim.warmup_steps=0",
          "--config.train.total_steps=100000", "--config.train.eval_every=100000"]


def summarize(rows: list[dict]) -> str:
  keys = ["geneval/overall", "geneval/single_object", "geneval/two_object", "geneval/counting",
          "geneval/colors", "geneval/position", "geneval/color_attr", "qa/color", "qa/shape", "qa/count"]
  lines = ["| arm | steps | " + " | ".join(k.split("/", 1)[1] if k.startswith("geneval") else k for k in keys) + " |",
           "|---" * (len(keys) + 2) + "|"]
  for arm in ("sft", "grpo"):
    got = [r for r in rows if r["arm"] == arm]
    if not got:
      continue
    cells = []
    for k in keys:
      vals = [r["scores"].get(k) for r in got if r["scores"].get(k) is not None]
      cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "—")
    steps = ", ".join(str(r["step"]) for r in got)
    lines.append(f"| {arm} | {steps} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def flat_scores(path: str) -> tuple[int, dict]:
  with open(path) as f:
    data = json.load(f)
  out = {}
  for bench, table in data.items():
    if isinstance(table, dict):
      out.update({f"{bench}/{k}": v for k, v in table.items() if isinstance(v, (int, float))})
  return int(data.get("step", 0)), out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--source", required=True, help="the supervised run both arms start from")
  p.add_argument("--out", required=True)
  p.add_argument("--minutes", type=float, default=10.0, help="training wall time of each run")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--sft_lr", type=float, default=1e-4, help="SFT arm: constant lr (the source's final)")
  p.add_argument("--arms", default="sft,grpo")
  p.add_argument("--parallel", action="store_true", help="run a seed's arms at the same time")
  a = p.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  rows = []
  for seed in [int(s) for s in a.seeds.split(",")]:
    todo = []
    for arm in a.arms.split(","):
      workdir = os.path.join(a.out, f"{arm}_seed{seed}")
      if not os.path.exists(os.path.join(workdir, "scores.json")):
        todo.append((arm, workdir))
    # --parallel: a seed's arms run at the same time, so they share whatever else loads the machine.
    procs = []
    for arm, workdir in todo:
      print(f"== {arm} seed {seed}: {workdir}", flush=True)
      os.makedirs(workdir, exist_ok=True)
      log = open(os.path.join(a.out, f"{arm}_seed{seed}.log"), "w")
      procs.append((arm, workdir, subprocess.Popen(arm_command(arm, a.source, workdir, seed, a.minutes, a.sft_lr),
                                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)))
      if not a.parallel:
        procs[-1][2].wait()
    for arm, workdir, proc in procs:
      if proc.wait():
        raise SystemExit(f"error: {arm} seed {seed} failed (exit {proc.returncode}); see {a.out}/{arm}_seed{seed}.log")
    for arm in a.arms.split(","):
      step, flat = flat_scores(os.path.join(a.out, f"{arm}_seed{seed}", "scores.json"))
      rows.append({"arm": arm, "seed": seed, "step": step, "scores": flat})
  with open(os.path.join(a.out, "results.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  table = summarize(rows)
  with open(os.path.join(a.out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  main()
