"""GenQA (arXiv 2406.10323): instruction data from a handful of "generator prompts" — templates,
robust parsing of the model's list / pick / question / answer output, exact and near-duplicate
removal, GenQA's row schema and a diversity report. No JAX here; `tools/genqa.py` runs it against a
model (our `generate`, or any OpenAI-compatible endpoint).

    tpl = TEMPLATES["generator_nested"]
    text = tpl.render(domain="biology", rng=np.random.default_rng(0))     # the prompt sent
    parsed = parse_output(model_output, tpl)          # Parsed(turns=[(q, a)], options, chosen) or
                                                      # Malformed(reason)
    dedup = Deduplicator(threshold=0.8); dedup.add(parsed.turns[0][0])    # False if a (near) duplicate
    row = make_row(parsed, text, tpl.name, idx=0)     # {"user", "assistant", "prompt", "template", "idx"}

Variants (the paper's, from least to most diverse):
  static                  one fixed request for a question and answer in a domain
  conditional             the same, about a topic drawn at random from a fixed topic list (`topics`)
  generator_conditional   the model lists `n` topics of the domain, then takes the one at a random
                          index, and writes a question *related to* it but not about it, and its answer
  generator_nested        lists within lists: `n` topics, pick one, `n` subtopics of it, pick one, then
                          the question and answer
  dialog                  a generator-conditional prompt whose answer is a conversation of up to
                          `max_turns` (4) user / assistant turns (GenQA's dialog split)
The paper picks "by index" or "at random"; we state the index in the prompt (the rng draws it), so
the pick is checkable: a stated choice that disagrees with the listed option is counted
(`Parsed.pick_mismatch`) but kept. Booster phrases (UNCONFIRMED wording: the paper appends phrases
that push the model to be more creative; we could not read its exact list) are an option:
`boosters` (default BOOSTERS) — one drawn per prompt, "" disables.

Output format asked of the model (the parser is lenient: markdown bold / headings, "Q:" / "A:",
"User:" / "Assistant:", numbered "1." / "1)" / bullets, any case, extra chatter before or after):
  Topics:\\n1. ...\\n2. ...\\nChosen topic: ...\\nQuestion: ...\\nAnswer: ...
Malformed outputs are counted by reason (empty, no_question, no_answer, empty_answer,
question_too_short) and never raise.

Row schema (GenQA's raw rows): {"user": str, "assistant": str, "prompt": str, "template": str,
"idx": int}; dialog rows hold lists of up to 4 turns in "user" / "assistant". Such a JSONL trains
through `config.data.name="mctune"` with `data.controls=False` (input_pipeline/mctune/data.py reads
user/assistant rows).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import string
from typing import Iterable, Sequence

import numpy as np

BOOSTERS = ("Be creative.", "Be original and surprising.", "Make it unusual.", "Be smart.")  # UNCONFIRMED
FORMAT_SINGLE = ("Write your reply in exactly this format:\n{listing}Question: <the question>\n"
                 "Answer: <the answer>")


@dataclasses.dataclass(frozen=True)
class Template:
  """A generator prompt. `text` may use {domain}, {topic}, {n}, {k}, {n2}, {k2}, {booster}, {max_turns}."""
  name: str
  variant: str
  text: str
  n: int = 20                 # options listed (generator variants)
  n2: int = 10                # inner options (nested)
  max_turns: int = 1          # >1: dialog rows

  def render(self, *, domain: str, rng: np.random.Generator, topics: Sequence[str] = (),
             boosters: Sequence[str] = BOOSTERS) -> tuple[str, dict]:
    """(prompt text, the draws: topic / k / k2 / booster). `conditional` needs `topics`."""
    if self.variant == "conditional" and not topics:
      raise ValueError(f"template {self.name!r}: the conditional variant needs a topic list (--topics)")
    draws = {"topic": topics[int(rng.integers(len(topics)))] if topics else "",
             "k": int(rng.integers(1, self.n + 1)), "k2": int(rng.integers(1, self.n2 + 1)),
             "booster": boosters[int(rng.integers(len(boosters)))] if boosters else ""}
    text = self.text.format(domain=domain, n=self.n, n2=self.n2, max_turns=self.max_turns, **draws)
    return re.sub(r"[ \t]+\n", "\n", text).strip(), draws


def _fmt(listing: str) -> str:
  return FORMAT_SINGLE.format(listing=listing)


TEMPLATES = {t.name: t for t in (
    Template("static", "static",
             "Write a challenging question about {domain} and a complete, correct answer to it. {booster}\n\n"
             + _fmt("")),
    Template("conditional", "conditional",
             "Write a question that is related to {topic} (it need not be about {topic} itself) and a "
             "complete, correct answer to it. {booster}\n\n" + _fmt("")),
    Template("generator_conditional", "generator_conditional",
             "List {n} different topics in {domain}, numbered 1 to {n}. Then take topic number {k} from "
             "your list and write a question that is related to that topic but not directly about it, "
             "and a complete, correct answer. {booster}\n\n"
             + _fmt("Topics:\n1. <topic>\n...\n{n}. <topic>\nChosen topic: <topic {k}>\n")),
    Template("generator_nested", "generator_nested",
             "List {n} different topics in {domain}, numbered 1 to {n}. Take topic number {k} and list {n2} "
             "subtopics of it, numbered 1 to {n2}. Take subtopic number {k2} and write a question that is "
             "related to that subtopic but not directly about it, and a complete, correct answer. "
             "{booster}\n\n"
             + _fmt("Topics:\n1. <topic>\n...\nChosen topic: <topic {k}>\nSubtopics:\n1. <subtopic>\n...\n"
                    "Chosen subtopic: <subtopic {k2}>\n")),
    Template("dialog", "dialog",
             "List {n} different topics in {domain}, numbered 1 to {n}. Take topic number {k} and write a "
             "conversation of up to {max_turns} turns between a curious user and a helpful assistant about "
             "something related to it. {booster}\n\nWrite your reply in exactly this format:\n"
             "Topics:\n1. <topic>\n...\nChosen topic: <topic {k}>\nUser: <message>\nAssistant: <reply>\n"
             "User: <message>\nAssistant: <reply>", max_turns=4),
)}
VARIANTS = ("static", "conditional", "generator_conditional", "generator_nested", "dialog")


def load_templates(path: str) -> dict[str, Template]:
  """A JSON list of {"name", "variant", "text", optional "n", "n2", "max_turns"} -> templates;
  errors name the file and entry."""
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read templates ({e})") from None
  if not isinstance(raw, list):
    raise ValueError(f"{path}: expected a JSON list of templates")
  out = {}
  for i, t in enumerate(raw):
    if not isinstance(t, dict) or not {"name", "variant", "text"} <= set(t):
      raise ValueError(f"{path} entry {i}: needs 'name', 'variant' and 'text'")
    if t["variant"] not in VARIANTS:
      raise ValueError(f"{path} entry {i}: variant {t['variant']!r} is not one of {VARIANTS}")
    unknown = set(t) - {"name", "variant", "text", "n", "n2", "max_turns"}
    if unknown:
      raise ValueError(f"{path} entry {i}: unknown field {sorted(unknown)[0]!r}")
    out[t["name"]] = Template(**t)
  return out


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Parsed:
  turns: list[tuple[str, str]]          # (question / user, answer / assistant)
  options: list[str]                    # the first list the model wrote (topics)
  chosen: str | None                    # the chosen topic it stated (inner one for nested)
  pick_mismatch: bool = False


@dataclasses.dataclass
class Malformed:
  reason: str


_MARK = r"(?:^|\n)[ \t>#*_]*(?:\*\*|__)?\s*"
_Q = re.compile(_MARK + r"(question|q|user|instruction)\s*(?:\d+\s*)?(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?",
                re.IGNORECASE)
_A = re.compile(_MARK + r"(answer|a|assistant|response)\s*(?:\d+\s*)?(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?",
                re.IGNORECASE)
_CHOSEN = re.compile(_MARK + r"chosen\s+(sub)?topic\s*(?:\*\*|__)?\s*[:：]\s*(.+)", re.IGNORECASE)
_ITEM = re.compile(r"^[ \t]*(?:(\d+)[.)]|[-*•])\s+(.+?)\s*$")


def _clean(text: str) -> str:
  text = re.sub(r"(\*\*|__)", "", text)
  return re.sub(r"[ \t]+", " ", text).strip().strip('"').strip()


def _list_items(text: str) -> list[tuple[int | None, str]]:
  out = []
  for line in text.splitlines():
    m = _ITEM.match(line)
    if m:
      out.append((int(m.group(1)) if m.group(1) else None, _clean(m.group(2))))
  return out


def parse_output(text: str | None, template: Template, *, min_question_words: int = 3,
                 draws: dict | None = None) -> Parsed | Malformed:
  """A model's reply -> Parsed, or Malformed(reason) (see the module docstring); never raises."""
  if not text or not text.strip():
    return Malformed("empty")
  text = text.replace("\r\n", "\n")
  marks = sorted([(m.start(), m.end(), "q") for m in _Q.finditer(text)] +
                 [(m.start(), m.end(), "a") for m in _A.finditer(text)])
  if not any(k == "q" for *_, k in marks):
    return Malformed("no_question")
  first_q = next(s for s, _, k in marks if k == "q")
  head = text[:first_q]
  # Segments between consecutive markers; pair each question with the answer that follows it.
  turns, pending = [], None
  for i, (s, e, kind) in enumerate(marks):
    if s < first_q:
      continue
    end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
    body = _clean(text[e:end])
    if kind == "q":
      pending = body if pending is None else pending   # a second "Question:" before any answer: keep the first
    elif pending is not None:
      turns.append((pending, body))
      pending = None
  if not turns:
    return Malformed("no_answer")
  limit = max(template.max_turns, 1)
  turns = turns[:limit]
  if any(not a for _, a in turns):
    return Malformed("empty_answer")
  if len(turns[0][0].split()) < min_question_words:
    return Malformed("question_too_short")
  first_pick = _CHOSEN.search(head)
  options = [t for _, t in _list_items(head if first_pick is None else head[:first_pick.start()])]
  chosen_all = [_clean(m.group(2)) for m in _CHOSEN.finditer(head)]
  chosen = chosen_all[-1] if chosen_all else None
  mismatch = False
  if draws is not None and first_pick is not None and template.variant != "static":
    numbered = {n: t for n, t in _list_items(head[:first_pick.start()]) if n is not None}
    want = numbered.get(draws.get("k"))
    mismatch = want is not None and _norm(want) != _norm(chosen_all[0])
  return Parsed(turns, options, chosen, mismatch)


def make_row(parsed: Parsed, prompt: str, template: Template, idx: int) -> dict:
  """GenQA's raw row: strings for single-turn templates, lists of turns for dialog ones."""
  if template.max_turns > 1:
    user, assistant = [q for q, _ in parsed.turns], [a for _, a in parsed.turns]
  else:
    user, assistant = parsed.turns[0]
  return {"user": user, "assistant": assistant, "prompt": prompt, "template": template.name, "idx": int(idx)}


# ------------------------------------------------------------------------------------------------
# De-duplication
# ------------------------------------------------------------------------------------------------
_PUNCT = str.maketrans("", "", string.punctuation)


def _norm(text: str) -> str:
  return " ".join(text.lower().translate(_PUNCT).split())


def shingles(text: str, n: int = 3) -> set[str]:
  """Word n-grams of the normalised text (the whole text when shorter than n words)."""
  words = _norm(text).split()
  return {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))} if words else set()


def jaccard(a: set, b: set) -> float:
  return len(a & b) / len(a | b) if a or b else 1.0


class Deduplicator:
  """Exact (normalised text) and near-duplicate (word-3-gram Jaccard >= threshold) detection. A
  MinHash signature (num_perm hashes, LSH bands of `rows`) finds candidates; each is confirmed by
  the exact Jaccard, so there are no false positives and (for threshold 0.8, 32 bands × 2 rows) a
  pair at Jaccard 0.8 is missed with probability (1 − 0.8²)^32 < 1e-14."""

  def __init__(self, threshold: float = 0.8, num_perm: int = 64, rows: int = 2, seed: int = 0):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f"threshold={threshold}: expected (0, 1]")
    self.threshold, self.rows = threshold, rows
    self.bands = num_perm // rows
    rng = np.random.default_rng(seed)
    self._a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
    self._b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
    self._exact: set[str] = set()
    self._sets: list[set[str]] = []
    self._buckets: list[dict] = [collections.defaultdict(list) for _ in range(self.bands)]
    self.exact_dups = self.near_dups = 0

  def _signature(self, sh: set[str]) -> np.ndarray:
    h = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") >> 3
                  for s in sh], np.uint64)
    with np.errstate(over="ignore"):
      return (h[None, :] * self._a[:, None] + self._b[:, None]).min(axis=1)

  def is_duplicate(self, text: str) -> str | None:
    """"exact", "near" or None (not recorded)."""
    key = _norm(text)
    if key in self._exact:
      return "exact"
    sh = shingles(text)
    if not sh:
      return None
    sig = self._signature(sh)
    seen = set()
    for b in range(self.bands):
      for j in self._buckets[b].get(sig[b * self.rows:(b + 1) * self.rows].tobytes(), ()):
        if j not in seen:
          seen.add(j)
          if jaccard(sh, self._sets[j]) >= self.threshold:
            return "near"
    return None

  def add(self, text: str) -> bool:
    """Records `text` unless it duplicates one recorded; returns whether it was new."""
    dup = self.is_duplicate(text)
    if dup == "exact":
      self.exact_dups += 1
      return False
    if dup == "near":
      self.near_dups += 1
      return False
    self._exact.add(_norm(text))
    sh = shingles(text)
    j = len(self._sets)
    self._sets.append(sh)
    if sh:
      sig = self._signature(sh)
      for b in range(self.bands):
        self._buckets[b][sig[b * self.rows:(b + 1) * self.rows].tobytes()].append(j)
    return True


def dedup_key(row: dict) -> str:
  """The text a row is de-duplicated on: its (first) question plus its (first) answer."""
  user, bot = row["user"], row["assistant"]
  first = lambda x: x[0] if isinstance(x, list) and x else x  # noqa: E731
  return f"{first(user)}\n{first(bot)}"


# ------------------------------------------------------------------------------------------------
# Diversity report
# ------------------------------------------------------------------------------------------------
def distinct_n(texts: Iterable[str], n: int) -> float:
  """Distinct-n: unique word n-grams / all word n-grams over the texts (0 with none)."""
  total, seen = 0, set()
  for t in texts:
    w = _norm(t).split()
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    total += len(grams)
    seen.update(grams)
  return len(seen) / total if total else 0.0


def diversity_report(rows: Sequence[dict], *, topics: Sequence[str] = (), chosen: Sequence[str] = (),
                     counts: dict | None = None) -> dict:
  """Distinct-1/2/3 of questions and answers, rows per template, topic coverage (share of the
  topic list that some prompt of a kept row was conditioned on; distinct chosen topics for the
  generator variants), and the run's counters (malformed by reason, duplicates)."""
  flat = lambda key: [t for r in rows for t in (r[key] if isinstance(r[key], list) else [r[key]])]  # noqa: E731
  qs, ans = flat("user"), flat("assistant")
  report = {"rows": len(rows),
            "per_template": dict(collections.Counter(r["template"] for r in rows)),
            "questions": {f"distinct_{n}": distinct_n(qs, n) for n in (1, 2, 3)},
            "answers": {f"distinct_{n}": distinct_n(ans, n) for n in (1, 2, 3)},
            "mean_question_words": float(np.mean([len(q.split()) for q in qs])) if qs else 0.0,
            "mean_answer_words": float(np.mean([len(a.split()) for a in ans])) if ans else 0.0}
  if topics:
    used = {t for t in topics if any(t in r["prompt"] for r in rows)}
    report["topic_coverage"] = len(used) / len(topics)
  if chosen:
    report["distinct_chosen_topics"] = len({_norm(c) for c in chosen if c})
  if counts:
    report["counts"] = dict(counts)
  return report
