r"""The MCTune demo: a tiny LM trained with controls follows [t_word] / [n_noun] better than the same
model trained without them (configs/mctune_llama2_7b.py:tiny on the generated ShapesWorld
description corpus), over several seeds.

    python tools/mctune_demo.py --out=runs/mctune_demo --seeds=0,1,2 [--steps=600]

Per arm (controls, no_controls) and seed: train.py's loop (`train_and_evaluate`), then the MCTune
evaluation (jaxmodels/evals/mctune.py: 100 held-out examples × 5 perturbed targets, responses
re-measured). Both arms share the split and the test cases; the baseline is asked without tags and
scored against the same targets. Writes `<out>/results.jsonl` (one row per run), `<out>/table.md`
(MAE / exact-match per tag, mean ± std over seeds) and prints the table.

The measured table (3 seeds) is in docs/mctune.md.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "runs/mctune_demo", "Output folder.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps per run (0: the config's).")
_TAGS = ("t_word", "n_noun")


def run_one(controls: bool, seed: int, out: str, steps: int) -> dict:
  import train
  from configs.mctune_llama2_7b import get_config
  from jaxmodels.evals import mctune
  arg = f"tiny,controls={controls},seed={seed}" + (f",steps={steps}" if steps else "")
  config = get_config(arg)
  workdir = os.path.join(out, f"{'controls' if controls else 'no_controls'}_seed{seed}")
  t0 = time.time()
  if not os.path.exists(os.path.join(workdir, "scores.json")):
    train.train_and_evaluate(config, workdir)
  minutes = (time.time() - t0) / 60
  scores = mctune.evaluate_checkpoint(config, workdir, os.path.join(workdir, "eval"))["mctune"]
  with open(os.path.join(workdir, "eval", "mctune_scores.json")) as f:
    full = json.load(f)
  return {"arm": "controls" if controls else "no_controls", "seed": seed, "config": arg,
          "train_minutes": round(minutes, 2), "summary": scores, "per_tag": full["per_tag"]}


def table(rows: list[dict]) -> str:
  import numpy as np
  lines = ["| arm | " + " | ".join(f"{t} MAE | {t} exact" for t in _TAGS) + " | strict | runs |",
           "|---|" + "---|---|" * len(_TAGS) + "---|---|"]
  for arm in ("controls", "no_controls"):
    rs = [r for r in rows if r["arm"] == arm]
    if not rs:
      continue
    cells = []
    for t in _TAGS:
      mae = np.array([r["per_tag"][t]["mae"] for r in rs])
      ex = np.array([r["per_tag"][t]["exact"] for r in rs])
      cells += [f"{mae.mean():.2f} ± {mae.std():.2f}", f"{ex.mean():.3f} ± {ex.std():.3f}"]
    strict = np.array([r["summary"]["strict"] for r in rs])
    lines.append(f"| {arm} | " + " | ".join(cells) + f" | {strict.mean():.3f} | {len(rs)} |")
  return "\n".join(lines)


def main(argv):
  del argv
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  rows = []
  for seed in [int(s) for s in _SEEDS.value]:
    for controls in (True, False):
      row = run_one(controls, seed, out, _STEPS.value)
      rows.append(row)
      with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
      print(json.dumps({k: row[k] for k in ("arm", "seed", "train_minutes")} |
                       {t: row["per_tag"][t] for t in _TAGS}), flush=True)
  text = table(rows)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()
  app.run(main)
