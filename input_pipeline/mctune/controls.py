"""MCTune's 14 linguistic-complexity controls of a text (arXiv 2406.16229; tianyi-lab/mctune, which
computes them with spaCy en_core_web_sm + lftk). No JAX here.

    measure("The cat sat on the mat. It was happy.")
    # {'t_word': 9, 'n_noun': 2, 'n_verb': 1, 'n_adj': 1, 't_uword': ..., ..., 'fkre': ..., ...}

Foundational (counted on the tagger's tokens, `taggers.py`):
  t_word     words: tokens that are not punctuation (lftk: stop words kept, punctuation dropped)
  n_noun / n_verb / n_adj        tokens tagged NOUN / VERB / ADJ (spaCy coarse tags: PROPN and AUX
                                 are not nouns / verbs)
  t_uword    distinct lemmas
  n_unoun / n_uverb / n_uadj     distinct lemmas among the NOUN / VERB / ADJ tokens
  fkre       Flesch reading ease 206.835 − 1.015·(t_word / sentences) − 84.6·(syllables / t_word)
Derived: simp_ttr = t_uword / t_word, simp_noun_var = n_unoun / n_noun, simp_verb_var =
n_uverb / n_verb, simp_adj_var = n_uadj / n_adj (0 when the denominator is 0), rt_average =
t_word / 240 (minutes at 240 words a minute).

lftk's exact behaviour (quirks="lftk", the default, so our numbers match the paper's pipeline):
  * syllables: per word, +1 if it starts with a vowel (aeiouy), +1 for each vowel after a non-vowel,
    −1 if it ends in "e"; lftk keeps ONE running total over the text, and its "at least one
    syllable" fix-up adds 1 only when that running total is 0 — so "the" after a word counts 0.
  * t_uword counts distinct lemmas over ALL tokens, punctuation included (lftk reads `doc`, not its
    filtered token list), so a short text can have t_uword > t_word.
quirks="none": per-word syllable counts (each at least 1) and distinct lemmas of words only.
Responses with fkre > 121.22 (the formula's value at one one-syllable word per sentence) are dropped
by the data pipeline (`FKRE_MAX`). Whitespace tokens, which spaCy makes for "\\n\\n" and lftk counts as
words, are never counted here (UNCONFIRMED whether the paper's data had many).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from input_pipeline.mctune.taggers import Token, get_tagger

FOUNDATIONAL = ("t_word", "n_noun", "n_verb", "n_adj", "t_uword", "n_unoun", "n_uverb", "n_uadj", "fkre")
DERIVED = ("simp_ttr", "simp_noun_var", "simp_verb_var", "simp_adj_var", "rt_average")
TAGS = FOUNDATIONAL + DERIVED          # the order MCTune's prompts and tables use
FLOAT_TAGS = frozenset({"fkre"} | set(DERIVED))
FKRE_MAX = 121.22
WORDS_PER_MINUTE = 240
DESCRIPTIONS = {
    "t_word": "the total number of words", "n_noun": "the total number of nouns",
    "n_verb": "the total number of verbs", "n_adj": "the total number of adjectives",
    "t_uword": "the total number of unique words", "n_unoun": "the total number of unique nouns",
    "n_uverb": "the total number of unique verbs", "n_uadj": "the total number of unique adjectives",
    "simp_ttr": "the simple type-token ratio", "simp_noun_var": "simple noun variation",
    "simp_verb_var": "simple verb variation", "simp_adj_var": "simple adjective variation",
    "fkre": "the Flesch-Kincaid Reading Ease", "rt_average": "the average reading time",
}
_VOWELS = "aeiouy"


def word_syllables(word: str) -> int:
  """lftk's per-word rule before its fix-up: vowel-group starts, −1 for a final "e" (may be 0 or −1)."""
  w = word.lower()
  if not w:
    return 0
  n = int(w[0] in _VOWELS)
  n += sum(1 for i in range(1, len(w)) if w[i] in _VOWELS and w[i - 1] not in _VOWELS)
  return n - int(w.endswith("e"))


def count_syllables(words: Sequence[str], quirks: str = "lftk") -> int:
  """Syllables of a word list: lftk's running total (see the module docstring) or per-word ≥ 1."""
  if quirks == "none":
    return sum(max(word_syllables(w), 1) for w in words)
  total = 0
  for w in words:
    total += word_syllables(w)
    if total == 0:
      total += 1
  return total


def flesch_reading_ease(words: int, sentences: int, syllables: int) -> float:
  """206.835 − 1.015·words/sentences − 84.6·syllables/words (0 for a zero denominator, as lftk's
  safe_division)."""
  wps = words / sentences if sentences else 0.0
  spw = syllables / words if words else 0.0
  return 206.835 - 1.015 * wps - 84.6 * spw


def safe_div(a: float, b: float) -> float:
  return a / b if b else 0.0


def derive(tags: Mapping[str, float], ndigits: int | None = None) -> dict[str, float]:
  """`tags` (the 8 counts, fkre optional) plus the 5 derived controls; rounded to `ndigits` if set."""
  out = dict(tags)
  derived = {"simp_ttr": safe_div(tags["t_uword"], tags["t_word"]),
             "simp_noun_var": safe_div(tags["n_unoun"], tags["n_noun"]),
             "simp_verb_var": safe_div(tags["n_uverb"], tags["n_verb"]),
             "simp_adj_var": safe_div(tags["n_uadj"], tags["n_adj"]),
             "rt_average": safe_div(tags["t_word"], WORDS_PER_MINUTE)}
  if ndigits is not None:
    derived = {k: round(v, ndigits) for k, v in derived.items()}
  out.update(derived)
  return out


def from_tokens(tokens: Sequence[Token], quirks: str = "lftk") -> dict[str, float]:
  """The 14 controls of a tagged text (see the module docstring)."""
  if quirks not in ("lftk", "none"):
    raise ValueError(f"quirks={quirks!r}: expected 'lftk' or 'none'")
  words = [t for t in tokens if not t.is_punct]
  by = {p: [t.lemma for t in tokens if t.upos == p] for p in ("NOUN", "VERB", "ADJ")}
  lemmas = {t.lemma for t in (tokens if quirks == "lftk" else words)}
  sentences = len({t.sent for t in tokens})
  tags = {"t_word": len(words), "n_noun": len(by["NOUN"]), "n_verb": len(by["VERB"]),
          "n_adj": len(by["ADJ"]), "t_uword": len(lemmas), "n_unoun": len(set(by["NOUN"])),
          "n_uverb": len(set(by["VERB"])), "n_uadj": len(set(by["ADJ"]))}
  tags["fkre"] = flesch_reading_ease(len(words), sentences,
                                     count_syllables([t.text for t in words], quirks))
  return derive(tags)


def measure(text: str, tagger: str | Callable[[str], list[Token]] = "pattern",
            quirks: str = "lftk") -> dict[str, float]:
  """The 14 controls of `text` with `tagger` (a name for `get_tagger`, or a tagger)."""
  tag = get_tagger(tagger) if isinstance(tagger, str) else tagger
  return from_tokens(tag(text), quirks)


def is_consistent(tags: Mapping[str, float]) -> bool:
  """MCTune's validity rule on the foundational controls (all of them must be present): positive
  words, unique ≤ total for words and each part of speech, t_word ≥ nouns + verbs + adjectives,
  t_uword ≥ their unique sum, no negative count, fkre ≤ 121.22."""
  missing = [k for k in FOUNDATIONAL if k not in tags]
  if missing:
    raise ValueError(f"is_consistent: missing foundational controls {missing}")
  t = tags
  if t["t_word"] <= 0 or t["t_uword"] <= 0 or t["t_word"] < t["t_uword"]:
    return False
  if t["t_word"] < t["n_noun"] + t["n_verb"] + t["n_adj"]:
    return False
  if t["t_uword"] < t["n_unoun"] + t["n_uverb"] + t["n_uadj"]:
    return False
  for total, uniq in (("n_noun", "n_unoun"), ("n_verb", "n_uverb"), ("n_adj", "n_uadj")):
    if t[uniq] < 0 or t[total] < t[uniq]:
      return False
  return t["fkre"] <= FKRE_MAX


def round_tag(name: str, value: float) -> float | int:
  """A control's value as prompts state it: counts as integers, float controls to 2 decimals."""
  return round(float(value), 2) if name in FLOAT_TAGS else int(round(value))
