"""GenQA: templates, parser robustness on malformed outputs, de-duplication, the resumable run against
a fake backend, a local OpenAI-compatible test server and a tiny model, and SFT on the output."""
import http.server
import json
import threading

import numpy as np
import pytest

from input_pipeline import genqa as G
from tools import genqa as tool

GOOD = """Sure, here it is!
**Topics:**
1. Genetics
2. Ecology
3. Cell biology
**Chosen topic:** Ecology
Question: {q}
Answer: {a}"""


def test_templates_render_every_variant():
  rng = np.random.default_rng(0)
  for name, tpl in G.TEMPLATES.items():
    text, draws = tpl.render(domain="biology", rng=rng, topics=["volcanoes", "tea"])
    assert "{" not in text and "biology" in text or tpl.variant == "conditional"
    if tpl.variant in ("generator_conditional", "generator_nested", "dialog"):
      assert f"topic number {draws['k']}" in text and 1 <= draws["k"] <= tpl.n
    if tpl.variant == "conditional":
      assert draws["topic"] in text
    assert draws["booster"] in G.BOOSTERS and draws["booster"] in text
  text, draws = G.TEMPLATES["static"].render(domain="x", rng=rng, boosters=())
  assert draws["booster"] == "" and not text.endswith(" ")
  with pytest.raises(ValueError, match="needs a topic list"):
    G.TEMPLATES["conditional"].render(domain="x", rng=rng)


@pytest.mark.parametrize("text", [
    GOOD.format(q="Why do wolves change rivers?", a="They change grazing by deer."),
    "Q: Why do wolves change rivers?\nA: They change grazing by deer.",
    "## Question:\nWhy do wolves change rivers?\n\n## Answer:\nThey change grazing by deer.",
    "question : Why do wolves change rivers?\nANSWER: They change grazing by deer.",
    "**Question 1:** Why do wolves change rivers?\n**Answer 1:** They change grazing by deer.",
    "Intro text.\r\nQuestion: Why do wolves change rivers?\r\nAnswer: They change grazing by deer.",
])
def test_parser_accepts_format_variations(text):
  p = G.parse_output(text, G.TEMPLATES["generator_conditional"])
  assert isinstance(p, G.Parsed)
  assert p.turns == [("Why do wolves change rivers?", "They change grazing by deer.")]


@pytest.mark.parametrize("text, reason", [
    (None, "empty"), ("", "empty"), ("   \n ", "empty"),
    ("I cannot help with that.", "no_question"),
    ("Question: Why do wolves change rivers?", "no_answer"),
    ("Answer: deer.\nQuestion: Why do wolves change rivers?", "no_answer"),
    ("Question: Why do wolves change rivers?\nAnswer:   ", "empty_answer"),
    ("Question: Why?\nAnswer: Deer.", "question_too_short"),
])
def test_parser_counts_malformed(text, reason):
  assert G.parse_output(text, G.TEMPLATES["static"]) == G.Malformed(reason)


def test_parser_never_raises_and_checks_the_pick():
  rng = np.random.default_rng(0)
  pieces = ["Question:", "Answer:", "Q:", "A:", "User:", "Assistant:", "**", "1.", "2)", "- ", "Chosen topic:",
            "\n", "\n\n", "wolves", "rivers?", "é中", ":", "#", "__", "\r\n", " "]
  for _ in range(300):
    text = "".join(pieces[i] for i in rng.integers(len(pieces), size=int(rng.integers(0, 30))))
    out = G.parse_output(text, G.TEMPLATES["dialog"], draws={"k": 2})
    assert isinstance(out, (G.Parsed, G.Malformed))
  good = GOOD.format(q="Why do wolves change rivers?", a="Deer graze less.")
  p = G.parse_output(good, G.TEMPLATES["generator_conditional"], draws={"k": 2})
  assert p.options == ["Genetics", "Ecology", "Cell biology"] and p.chosen == "Ecology" and not p.pick_mismatch
  assert G.parse_output(good, G.TEMPLATES["generator_conditional"], draws={"k": 3}).pick_mismatch
  dialog = ("Topics:\n1. Bees\nChosen topic: Bees\nUser: How do bees find flowers?\nAssistant: By smell.\n"
            "User: And by colour?\nAssistant: Yes.\nUser: Really?\nAssistant: Really.\nUser: Ok.\n"
            "Assistant: Bye.\nUser: Extra turn here?\nAssistant: Cut.")
  p = G.parse_output(dialog, G.TEMPLATES["dialog"])
  assert len(p.turns) == 4 and p.turns[1] == ("And by colour?", "Yes.")
  row = G.make_row(p, "PROMPT", G.TEMPLATES["dialog"], 7)
  assert row == {"user": [q for q, _ in p.turns], "assistant": [a for _, a in p.turns], "prompt": "PROMPT",
                 "template": "dialog", "idx": 7}


def test_dedup_exact_and_near():
  d = G.Deduplicator(threshold=0.8)
  base = "Why do wolves in Yellowstone change the course of rivers over many decades of time?"
  assert d.add(base)
  assert not d.add("why do WOLVES in yellowstone change the course of rivers, over many decades of time")
  assert d.exact_dups == 1
  near = "Why do wolves in Yellowstone change the course of rivers over many decades of history?"
  assert G.jaccard(G.shingles(base), G.shingles(near)) >= 0.8
  assert not d.add(near) and d.near_dups == 1
  assert d.add("How do bees find flowers in a field full of grass on a windy day in spring?")
  assert d.add("Why do wolves hunt?")
  assert G.distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
  assert G.distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)


class FakeModel:
  """Deterministic replies: every 4th malformed, every 5th a repeat of attempt 0's question."""

  def __init__(self):
    self.calls = 0

  def __call__(self, prompts, first_index):
    self.calls += 1
    out = []
    for j, p in enumerate(prompts):
      i = first_index + j
      if i % 4 == 3:
        out.append("I would rather not.")
      elif i % 5 == 4:
        out.append(GOOD.format(q="What keeps the oldest trees alive for so long?", a="Slow growth."))
      else:
        out.append(GOOD.format(q=f"What is unusual fact number {i} about {p.split()[3]} systems?", a=f"Fact {i}."))
    return out


def test_run_counts_and_resume(tmp_path):
  kw = dict(templates=[G.TEMPLATES["generator_conditional"], G.TEMPLATES["static"]], domain="ecology",
            seed=0, batch_size=4, progress=False)
  full = tmp_path / "full.jsonl"
  report = tool.run(FakeModel(), str(full), num=12, **kw)
  rows = [json.loads(ln) for ln in open(full)]
  assert len(rows) == 12 == report["rows"]
  assert all(set(r) == {"user", "assistant", "prompt", "template", "idx"} for r in rows)
  assert report["counts"]["malformed_no_question"] >= 3 and report["counts"]["duplicate"] >= 1
  assert report["per_template"] == {"generator_conditional": 6, "static": 6} or sum(report["per_template"].values()) == 12
  assert 0 < report["questions"]["distinct_1"] <= 1
  # interrupted after 5 rows, with a torn last line, then resumed: the same 12 rows
  part = tmp_path / "part.jsonl"
  tool.run(FakeModel(), str(part), num=5, **kw)
  with open(part, "a") as f:
    f.write('{"user": "torn')
  tool.run(FakeModel(), str(part), num=12, **kw)
  assert [json.loads(ln) for ln in open(part)] == rows
  again = FakeModel()
  tool.run(again, str(part), num=12, **kw)          # nothing left to do
  assert again.calls == 0
  with pytest.raises(ValueError, match="line 1: not a GenQA row"):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"b": 2}\n')
    tool.run(FakeModel(), str(bad), num=3, **kw)


class _Handler(http.server.BaseHTTPRequestHandler):
  replies = {}
  seen = []

  def log_message(self, *a):
    pass

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    n = len(_Handler.seen)
    _Handler.seen.append(body)
    prompt = body["messages"][0]["content"]
    if self.path != "/v1/chat/completions":
      self.send_response(404), self.end_headers()
      return
    if n == 1:                                   # one transient 500: retried
      self.send_response(500), self.end_headers()
      return
    if n == 3:                                   # one reply that is not JSON
      payload = b"not json"
    else:
      k = prompt.split("topic number ")[1].split()[0] if "topic number" in prompt else "0"
      text = GOOD.format(q=f"What surprising link does topic {k} of call {n} have to rain?", a="Clouds.")
      payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(payload)


def test_openai_endpoint_backend(tmp_path):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    backend = tool.OpenAIBackend(url, "tiny", temperature=0.7, max_tokens=64, timeout=10, backoff=0.01)
    report = tool.run(backend, str(tmp_path / "api.jsonl"), templates=[G.TEMPLATES["generator_nested"]],
                      num=5, domain="weather", batch_size=2, progress=False, max_attempts=8)
    assert report["rows"] == 5
    assert report["counts"]["backend_bad_reply"] == 1 and report["counts"]["backend_error"] == 1
    assert _Handler.seen[0]["model"] == "tiny" and _Handler.seen[0]["temperature"] == 0.7
    bad = tool.OpenAIBackend(url.replace("/v1", "/nope"), retries=0)
    assert bad(["x"]) == [None] and bad.errors == {"http_404": 1}
    dead = tool.OpenAIBackend("http://127.0.0.1:9/v1", retries=0, timeout=2)
    assert dead(["x"]) == [None] and sum(dead.errors.values()) == 1
  finally:
    server.shutdown()


def test_tiny_model_backend_and_sft_on_output(tmp_path):
  """Our own (random, tiny) model through `generate`: nothing parses, nothing crashes, every attempt
  is counted; then a GenQA file trains through the SFT source (data.name="mctune", controls=False)."""
  from flax import nnx
  import ml_collections

  from input_pipeline.mctune.source import make_mctune_data
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels.text_lm import TextLM, text_lm_config
  tok = WordTokenizer.from_texts(["question answer topics chosen topic list write a the of"])
  model = TextLM(text_lm_config(dict(llm=dict(model_type="llama", vocab_size=64, hidden_size=32,
                                              intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                                              max_position_embeddings=512, eos_token_id=2, pad_token_id=0))),
                 rngs=nnx.Rngs(0))
  backend = tool.LocalBackend(model, tok, max_new_tokens=6, batch_size=4, prompt_format="raw")
  report = tool.run(backend, str(tmp_path / "local.jsonl"), templates=[G.TEMPLATES["static"]], num=2,
                    progress=False, max_attempts=4, batch_size=4)
  c = report["counts"]
  assert report["rows"] + sum(v for k, v in c.items() if k.startswith("malformed") or k == "duplicate") == 4
  # SFT on a GenQA file (single-turn and dialog rows)
  path = tmp_path / "genqa.jsonl"
  rows = [G.make_row(G.Parsed([(f"What is fact {i} about rain and wind?", f"Fact {i} is wet.")], [], None),
                     "P", G.TEMPLATES["static"], i) for i in range(12)]
  rows.append({"user": ["Hi there, who are you?", "And?"], "assistant": ["A helper.", "That is all."],
               "prompt": "P", "template": "dialog", "idx": 12})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = ml_collections.ConfigDict(dict(seed=0, data=dict(name="mctune", path=str(path), controls=False,
                                                           mctune_filter=False, test_size=2, max_length=96, batch_size=8,
                                                           worker_count=0)))
  data = make_mctune_data(config, str(tmp_path / "sft"))
  batch = next(data.iterator)
  assert batch["und_ids"].shape == (8, 96) and batch["und_loss_mask"].sum() > 0
  assert (batch["und_loss_mask"] <= batch["und_mask"]).all()
