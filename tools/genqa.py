r"""GenQA: build an instruction dataset from generator prompts (input_pipeline/genqa.py) with our own
model or any OpenAI-compatible endpoint; JSONL in GenQA's row schema, resumable, de-duplicated.

    # any OpenAI-compatible server (e.g. our serve.py): --base_url includes the /v1
    python tools/genqa.py --out=runs/genqa/bio.jsonl --num=1000 --base_url=http://127.0.0.1:8000/v1 \
        --model=default --templates=generator_nested,generator_conditional --domain=biology
    # a trained model.type="lm" run (our library `generate`, sampled)
    python tools/genqa.py --out=runs/genqa/tiny.jsonl --num=50 --config=configs/mctune_llama2_7b.py:tiny \
        --checkpoint=runs/mctune_tiny --templates=conditional --topics=topics.txt
    # the output trains through the SFT pipeline directly:
    python train.py --config=configs/mctune_llama2_7b.py:tiny,controls=False --workdir=runs/sft \
        --config.data.corpus=none --config.data.path=runs/genqa/bio.jsonl --config.data.mctune_filter=False

Attempt i draws its template (round-robin over --templates), topic, pick index and booster from a
generator seeded with (--seed, i), so an interrupted run continues where it stopped: rows already in
--out are kept (their questions re-enter the de-duplicator), `<out>.state.json` holds the attempt
counter and the counts, and the next attempt is the one after both (rows are appended and flushed
one at a time; `--overwrite` starts afresh). Malformed outputs and endpoint errors are counted by
reason and skipped. At the end `<out>.report.json` holds the diversity report (distinct n-grams,
topic coverage, counts), also printed.
"""
from __future__ import annotations

import collections
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from input_pipeline import genqa as G  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Backends: a list of prompts -> a list of replies (None where the backend failed)
# ------------------------------------------------------------------------------------------------
class OpenAIBackend:
  """POST {base_url}/chat/completions, one user message (a plain string) per prompt. HTTP errors,
  time-outs and replies without choices[0].message.content count in `errors` by kind and give None;
  429 / 5xx / connection errors are retried `retries` times with a short back-off. Not
  `jaxmodels.evals.judges.OpenAIJudge`: that one requires an API key in the environment, sends
  content parts (for images) and retries empty replies, where a generator wants no key for a local
  server (serve.py), plain-string content for text-only servers, and empty replies counted as
  malformed."""

  def __init__(self, base_url: str, model: str = "default", *, api_key: str | None = None,
               temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 1024, timeout: float = 120.0,
               retries: int = 2, backoff: float = 0.5):
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model, self.api_key = model, api_key or os.environ.get("OPENAI_API_KEY")
    self.params = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    self.timeout, self.retries, self.backoff = timeout, retries, backoff
    self.errors: collections.Counter = collections.Counter()

  def one(self, prompt: str) -> str | None:
    body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                       **self.params}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    for attempt in range(self.retries + 1):
      retry = False
      try:
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
          payload = json.loads(resp.read().decode("utf-8"))
        content = payload["choices"][0]["message"]["content"]
        if isinstance(content, list):      # some servers return content parts
          content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
          raise TypeError("content is not a string")
        return content
      except urllib.error.HTTPError as e:
        kind, retry = f"http_{e.code}", e.code == 429 or e.code >= 500
      except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        kind, retry = f"connection ({type(getattr(e, 'reason', e)).__name__})", True
      except (ValueError, KeyError, IndexError, TypeError):
        kind = "bad_reply"
      if not retry or attempt == self.retries:
        self.errors[kind] += 1
        return None
      time.sleep(self.backoff * (attempt + 1))
    return None

  def __call__(self, prompts: Sequence[str], first_index: int = 0) -> list[str | None]:
    del first_index
    return [self.one(p) for p in prompts]


class LocalBackend:
  """Our own model through the library's `generate` (sampled): a `model.type="lm"` model (anything
  with `answer(ids, mask, n, **kw)`) and its tokenizer. prompt_format "alpaca" wraps each prompt in
  the Alpaca template (what our SFT runs train on), "chat" in the tokenizer's chat format, "raw"
  sends it as is. Batch b samples with fold_in(key(seed), first attempt index)."""

  def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 0.95,
               max_new_tokens: int = 256, prompt_format: str = "alpaca", batch_size: int = 8, seed: int = 0):
    if prompt_format not in ("alpaca", "chat", "raw"):
      raise ValueError(f"--prompt_format={prompt_format!r}: expected alpaca, chat or raw")
    self.model, self.tok, self.format = model, tokenizer, prompt_format
    self.kw = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size)
    self.seed = seed
    self.errors: collections.Counter = collections.Counter()

  @classmethod
  def from_checkpoint(cls, config, workdir: str, **kw) -> "LocalBackend":
    from flax import nnx

    from input_pipeline.mctune.source import prepare, text_tokenizer
    from jaxmodels import sharding
    from jaxmodels.checkpoint import restore_params
    from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory
    mesh, rules = mesh_and_rules(config)
    graphdef, state = nnx.split(nnx.eval_shape(train_state_factory(config)[0]))
    target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
    params = restore_params(workdir, {k: v for k, v in dict(target).items() if k in ("model", "ema")})
    ts = nnx.merge(graphdef, state)
    nnx.update(ts.model, params["model"])
    if ts.ema is not None:
      nnx.update(ts.ema, params["ema"])
    tok = text_tokenizer(config.data, prepare(config.data, workdir), workdir)
    return cls(ts.eval_model(), tok, **kw)

  def _wrap(self, prompt: str) -> str:
    if self.format == "alpaca":
      from input_pipeline.mctune import data as D
      return D.prompt(D.Example(prompt, ""))
    if self.format == "chat":
      return self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return prompt

  def __call__(self, prompts: Sequence[str], first_index: int = 0) -> list[str | None]:
    import jax

    from jaxmodels.evals.mctune import generate_responses
    greedy = self.kw["temperature"] == 0.0
    return generate_responses(self.model, self.tok, [self._wrap(p) for p in prompts],
                              add_bos=None if self.format != "chat" else False,
                              rng=None if greedy else jax.random.fold_in(jax.random.key(self.seed), first_index),
                              max_new_tokens=self.kw["max_new_tokens"], batch_size=self.kw["batch_size"],
                              **({} if greedy else dict(temperature=self.kw["temperature"], top_p=self.kw["top_p"])))


# ------------------------------------------------------------------------------------------------
# The resumable run
# ------------------------------------------------------------------------------------------------
def _read_rows(path: str) -> list[dict]:
  """The rows of an earlier run's output; a last line cut short by a kill is dropped."""
  with open(path, encoding="utf-8") as f:
    lines = [(n, ln) for n, ln in enumerate(f, 1) if ln.strip()]
  rows = []
  for j, (n, line) in enumerate(lines):
    try:
      row = json.loads(line)
    except ValueError:
      if j == len(lines) - 1:
        break
      raise ValueError(f"{path} line {n}: not valid JSON (not a genqa.py output?)") from None
    if not isinstance(row, dict) or not {"user", "assistant", "prompt", "template", "idx"} <= set(row):
      raise ValueError(f"{path} line {n}: not a GenQA row (user, assistant, prompt, template, idx)")
    rows.append(row)
  return rows


def _save_json(path: str, obj) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def run(backend: Callable[[Sequence[str], int], list[str | None]], out: str, *, templates: Sequence[G.Template],
        num: int, domain: str = "general knowledge", topics: Sequence[str] = (), seed: int = 0,
        boosters: Sequence[str] = G.BOOSTERS, batch_size: int = 8, dedup_threshold: float = 0.8,
        max_attempts: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
  """Generates until `out` holds `num` rows (or `max_attempts`, default 5·num, are spent); returns
  the diversity report (see the module docstring)."""
  if not templates:
    raise ValueError("no templates")
  if not topics and any(t.variant == "conditional" for t in templates):
    raise ValueError("the conditional template needs a topic list (--topics FILE, one topic a line)")
  state_path, report_path = out + ".state.json", out + ".report.json"
  if overwrite:
    for p in (out, state_path, report_path):
      if os.path.exists(p):
        os.remove(p)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  rows = _read_rows(out) if os.path.exists(out) else []
  state = {"attempts": 0, "counts": {}, "chosen": {}}
  if os.path.exists(state_path):
    with open(state_path, encoding="utf-8") as f:
      state.update(json.load(f))
  counts, chosen = collections.Counter(state["counts"]), collections.Counter(state["chosen"])
  attempts = max([state["attempts"]] + [r["idx"] + 1 for r in rows])
  dedup = G.Deduplicator(threshold=dedup_threshold)
  for r in rows:
    dedup.add(G.dedup_key(r))
  if os.path.exists(out) and rows:         # rewrite without a torn last line before appending
    with open(out + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(out + ".tmp", out)
  limit = max_attempts if max_attempts is not None else 5 * num
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=num, initial=min(len(rows), num), desc="genqa rows", unit="row")
  with open(out, "a", encoding="utf-8") as sink:
    while len(rows) < num and attempts < limit:
      idxs = list(range(attempts, min(attempts + batch_size, limit)))
      jobs = []
      for i in idxs:
        rng = np.random.default_rng([seed, i])
        tpl = templates[i % len(templates)]
        text, draws = tpl.render(domain=domain, rng=rng, topics=topics, boosters=boosters)
        jobs.append((i, tpl, text, draws))
      replies = list(backend([t for _, _, t, _ in jobs], idxs[0]))
      if len(replies) != len(jobs):
        raise RuntimeError(f"backend returned {len(replies)} replies for {len(jobs)} prompts")
      counts["backend_error"] += sum(r is None for r in replies)
      done = idxs[-1]
      for (i, tpl, text, draws), reply in zip(jobs, replies):
        if len(rows) >= num:         # the rest of the batch stays unconsumed: a later run with a
          done = i - 1               # larger --num starts at attempt i, as one long run would
          break
        if reply is None:
          continue
        parsed = G.parse_output(reply, tpl, draws=draws)
        if isinstance(parsed, G.Malformed):
          counts[f"malformed_{parsed.reason}"] += 1
          continue
        row = G.make_row(parsed, text, tpl, i)
        if not dedup.add(G.dedup_key(row)):
          counts["duplicate"] += 1
          continue
        counts["pick_mismatch"] += parsed.pick_mismatch
        if parsed.chosen:
          chosen[parsed.chosen] += 1
        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        sink.flush()
        rows.append(row)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(attempts=i + 1, malformed=sum(v for k, v in counts.items() if k.startswith("malformed")),
                          dups=counts["duplicate"])
      attempts = done + 1
      counts["attempts"] = attempts
      _save_json(state_path, {"attempts": attempts, "counts": dict(counts), "chosen": dict(chosen)})
  if bar is not None:
    bar.close()
  counts.update({f"backend_{k}": v for k, v in getattr(backend, "errors", {}).items()})
  counts["duplicate_exact"], counts["duplicate_near"] = dedup.exact_dups, dedup.near_dups
  report = G.diversity_report(rows, topics=topics, chosen=list(chosen.elements()),
                              counts={k: v for k, v in counts.items() if v})
  _save_json(report_path, report)
  return report


def read_topics(path: str | None) -> list[str]:
  if not path:
    return []
  with open(path, encoding="utf-8") as f:
    topics = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
  if not topics:
    raise ValueError(f"{path}: no topics (one a line)")
  return topics


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  from jaxmodels.errors import run_cli

  def go():
    templates = dict(G.TEMPLATES)
    if f.template_file:
      templates.update(G.load_templates(f.template_file))
    unknown = [n for n in f.templates if n not in templates]
    if unknown:
      raise ValueError(f"--templates: unknown template {unknown[0]!r} (known: {', '.join(templates)})")
    if bool(f.base_url) == bool(f.config):
      raise ValueError("give exactly one of --base_url (an OpenAI-compatible endpoint) or --config/--checkpoint")
    if f.base_url:
      backend = OpenAIBackend(f.base_url, f.model, temperature=f.temperature, top_p=f.top_p,
                              max_tokens=f.max_new_tokens, timeout=f.timeout)
    else:
      if not f.checkpoint:
        raise ValueError("--config needs --checkpoint (the run's workdir)")
      backend = LocalBackend.from_checkpoint(_CONFIG.value, f.checkpoint, temperature=f.temperature, top_p=f.top_p,
                                             max_new_tokens=f.max_new_tokens, prompt_format=f.prompt_format,
                                             batch_size=f.batch_size, seed=f.seed)
    boosters = [b for b in f.boosters.split("|") if b] if f.boosters is not None else G.BOOSTERS
    report = run(backend, f.out, templates=[templates[n] for n in f.templates], num=f.num, domain=f.domain,
                 topics=read_topics(f.topics), seed=f.seed, boosters=boosters, batch_size=f.batch_size,
                 dedup_threshold=f.dedup_threshold, overwrite=f.overwrite, progress=not f.quiet)
    print(json.dumps(report, indent=2))

  def checked():
    from jaxmodels.errors import ConfigError
    try:
      go()
    except ValueError as e:        # bad flags or input files: one line, no traceback
      raise ConfigError(str(e)) from None
  run_cli(checked)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A model.type='lm' run's config (local model).")
  flags.DEFINE_string("checkpoint", None, "That run's workdir (local model).")
  flags.DEFINE_string("base_url", None, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
  flags.DEFINE_string("model", "default", "Model name sent to the endpoint.")
  flags.DEFINE_string("out", None, "Output JSONL.", required=True)
  flags.DEFINE_integer("num", 100, "Rows to produce.")
  flags.DEFINE_list("templates", ["generator_nested"], f"Templates, round-robin (built in: {', '.join(G.TEMPLATES)}).")
  flags.DEFINE_string("template_file", None, "Extra templates (JSON list of {name, variant, text, ...}).")
  flags.DEFINE_string("domain", "general knowledge", "The {domain} of the templates.")
  flags.DEFINE_string("topics", None, "Topic list (one a line) for the conditional variant.")
  flags.DEFINE_string("boosters", None, "Booster phrases separated by '|' ('' for none; default: built in).")
  flags.DEFINE_integer("seed", 0, "Seed of the per-attempt draws.")
  flags.DEFINE_integer("batch_size", 8, "Prompts per backend call.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass.")
  flags.DEFINE_integer("max_new_tokens", 512, "Reply length limit.")
  flags.DEFINE_float("timeout", 120.0, "Seconds per endpoint request.")
  flags.DEFINE_enum("prompt_format", "alpaca", ["alpaca", "chat", "raw"], "Local model prompt wrapping.")
  flags.DEFINE_float("dedup_threshold", 0.8, "Near-duplicate word-3-gram Jaccard threshold.")
  flags.DEFINE_bool("overwrite", False, "Start afresh instead of resuming.")
  flags.DEFINE_bool("quiet", False, "No progress bar.")
  app.run(main)
