"""MCTune data and evaluation: record formats, prompts, tag sampling, the perturbed test set's
consistency, the training rows, the paper's metrics, and a tiny train -> evaluate run."""
import json
import os

import numpy as np
import pytest

from input_pipeline.mctune import controls as C
from input_pipeline.mctune import data as D
from input_pipeline.sources import DataError


def write(path, rows, jsonl=False):
  with open(path, "w", encoding="utf-8") as f:
    if jsonl:
      f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
      json.dump(rows, f)
  return str(path)


def test_read_all_record_formats(tmp_path):
  rows = [{"instruction": "Say hi.", "input": "", "output": "Hi there."},
          {"id": "7", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                          {"from": "gpt", "value": "A cat."}]},
          {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Red."}]},
          {"user": ["Q1?", "Q2?"], "assistant": ["A1.", "A2."], "prompt": "p", "template": "t", "idx": 3}]
  for jsonl in (False, True):
    exs = D.read_instructions(write(tmp_path / f"d{jsonl}.json{'l' * jsonl}", rows, jsonl))
    assert [(e.instruction, e.input, e.output) for e in exs] == [
        ("Say hi.", "", "Hi there."), ("What is it?", "", "A cat."), ("Name a colour.", "", "Red."),
        ("Q1?", "", "A1.")]
    assert exs[1].id == "7" and exs[3].id == "3"


@pytest.mark.parametrize("row, message", [
    ({"instruction": "x"}, "record 1: field 'output' missing"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, "record 1: no user turn followed"),
    ({"messages": [{"role": "user"}]}, "record 1: turn 0 lacks a string 'content'"),
    ({"question": "q"}, "record 1: not an instruction record"),
    (["not", "a", "dict"], "record 1: expected a JSON object"),
])
def test_malformed_records_name_file_and_record(tmp_path, row, message):
  path = write(tmp_path / "bad.json", [{"instruction": "a", "output": "b"}, row])
  with pytest.raises(DataError, match=message) as e:
    D.read_instructions(path)
  assert "bad.json" in str(e.value) and "\n" not in str(e.value)
  with open(tmp_path / "broken.jsonl", "w") as f:
    f.write('{"instruction": "a", "output": "b"}\n{oops\n')
  with pytest.raises(DataError, match="broken.jsonl line 2: not valid JSON"):
    D.read_instructions(str(tmp_path / "broken.jsonl"))


def test_prompt_template_and_tags():
  ex = D.Example("Write a poem.", "", "")
  p = D.prompt(ex, {"n_noun": 20, "t_word": 87.0, "fkre": 71.234})
  assert p == (D.CONTROL_META + "\n\n### Instruction:\nWrite a poem.\n\n### Input:\n"
               "[t_word: 87] [n_noun: 20] [fkre: 71.23]\n\n### Response:\n")
  p = D.prompt(D.Example("Summarise.", "", "Some text."), {"t_word": 5})
  assert "### Input:\nSome text. [t_word: 5]\n\n" in p
  assert D.prompt(D.Example("Hi.", "", "")) == D.PLAIN_META + "\n\n### Instruction:\nHi.\n\n### Response:\n"
  assert "[t_word]" in D.CONTROL_META and "[rt_average]" in D.CONTROL_META
  with pytest.raises(ValueError, match="meta"):
    D.prompt(ex, {"t_word": 1}, meta="long")


def test_choose_tags_counts_and_order():
  rng = np.random.default_rng(0)
  sizes = set()
  for _ in range(300):
    names = D.choose_tags(rng, max_tags=5)
    sizes.add(len(names))
    assert names == [t for t in C.TAGS if t in names]     # canonical order, no repeats
  assert sizes == {1, 2, 3, 4, 5}


def corpus(n=120, seed=0):
  from input_pipeline.mctune.demo import shapes_descriptions
  exs = [D.parse_record(r, "demo") for r in shapes_descriptions(n, seed)]
  return D.measure_examples(exs)


def test_test_set_targets_are_consistent_and_derived():
  measured, dropped = corpus()
  assert dropped["empty"] == 0 and dropped["fkre"] > 0 and len(measured) + dropped["fkre"] == 120
  assert all(e.controls["fkre"] <= C.FKRE_MAX for e in measured)     # MCTune's filter
  train, test = D.split(measured, 20, seed=3)
  assert len(train) == len(measured) - 20 and len(test) == 20
  assert {e.id for e in train}.isdisjoint({e.id for e in test})
  assert [e.id for e in D.split(measured, 20, seed=3)[1]] == [e.id for e in test]   # deterministic
  stats = D.tag_stats(train)
  cases = D.make_test_set(test, stats, per_example=5, seed=0)
  assert len(cases) == 100
  moved = 0
  for case in cases:
    assert 1 <= len(case["tags"]) <= 5
    full, ok, _ = D.perturb(test[case["example"]].controls, stats, np.random.default_rng(1))
    assert ok and C.is_consistent({k: full[k] for k in C.FOUNDATIONAL})
    assert full["simp_ttr"] == round(full["t_uword"] / full["t_word"], 2)
    assert full["rt_average"] == round(full["t_word"] / 240, 2)
    assert all(isinstance(full[k], int) for k in C.FOUNDATIONAL if k != "fkre")
    moved += any(case["tags"][t] != case["truth"][t] for t in case["tags"])
  assert moved > 20          # N(0, 0.1·std) moves many targets off the truth
  # scale 0: the truth itself (when consistent); an impossible rule: the truth, marked unperturbed
  ex = next(e for e in test if C.is_consistent({k: C.round_tag(k, e.controls[k]) for k in C.FOUNDATIONAL}))
  same, ok, tries = D.perturb(ex.controls, stats, np.random.default_rng(0), scale=0.0)
  assert ok and tries == 1 and same["t_word"] == ex.controls["t_word"]
  bad = dict(ex.controls, t_uword=ex.controls["t_word"] + 50)
  truth, ok, tries = D.perturb(bad, stats, np.random.default_rng(0), scale=0.01, max_tries=50)
  assert not ok and tries == 50 and truth["t_uword"] == bad["t_uword"]


def test_training_rows_state_the_true_controls():
  from input_pipeline.mctune.source import MCTuneSource, TextSFTPreprocess
  from input_pipeline.tokenizers import WordTokenizer
  measured, _ = corpus(40)
  src = MCTuneSource(measured, max_tags=5, augmentations=2, seed=0)
  assert len(src) == 2 * len(measured)
  for i in range(0, len(src), 5):
    row = src[i]
    ex = measured[i // 2]
    assert row["response"] == ex.output
    tags = json.loads(row["tags"])
    assert 1 <= len(tags) <= 5 and row["prompt"].endswith("\n\n### Response:\n")
    assert D.format_tags(tags) in row["prompt"]
    again = C.measure(row["response"])          # re-measuring the response gives the stated values
    assert all(C.round_tag(t, again[t]) == v for t, v in tags.items())
  assert src[3] == src[3]                                   # a row's tags depend on (seed, index) only
  assert [src[2 * i]["tags"] for i in range(10)] != [src[2 * i + 1]["tags"] for i in range(10)]
  plain = MCTuneSource(measured, controls=False)[0]
  assert json.loads(plain["tags"]) == {} and plain["prompt"].startswith(D.PLAIN_META)
  tok = WordTokenizer.from_texts([r["prompt"] + " " + r["response"] for r in (src[0], plain)])
  with pytest.raises(ValueError, match="max_length=100: the prompt has .* leaves no room"):
    TextSFTPreprocess(tok, 100)(src[0])
  prep = TextSFTPreprocess(tok, 400)
  out = prep(src[0])
  ids, loss = prep.encode(src[0]["prompt"], src[0]["response"])
  n_resp = len(tok.encode(src[0]["response"])) + 1
  assert out["und_loss_mask"].sum() == n_resp and out["und_mask"].sum() == len(ids)
  assert out["und_ids"][len(ids) - 1] == tok.eos_id and out["und_loss_mask"][len(ids) - n_resp - 1] == 0
  assert out["und_ids"].shape == (400,) and out["und_ids"].dtype == np.int32


def test_metrics_by_hand():
  from jaxmodels.evals.mctune import score, summary_table
  cases = [{"tags": {"t_word": 3}}, {"tags": {"t_word": 5, "n_noun": 1}}, {"tags": {"fkre": 100.0}}]
  responses = ["I like cats.", "Dogs run.", "Go."]
  r = score(cases, responses)
  # case 1: 3 words (match); case 2: 2 words (error -3), one noun (match); case 3: fkre of "Go."
  go = 206.835 - 1.015 - 84.6
  assert r["per_tag"]["t_word"] == {"count": 2, "exact": 0.5, "mae": 1.5, "mse": 4.5}
  assert r["per_tag"]["n_noun"]["exact"] == 1.0
  assert r["per_tag"]["fkre"]["mae"] == pytest.approx(abs(go - 100.0))
  assert r["strict"] == pytest.approx(1 / 3) and r["loose"] == pytest.approx(2 / 3)
  assert r["tag_accuracy"] == pytest.approx(2 / 4)
  assert summary_table(r)["t_word_mae"] == 1.5
  from jaxmodels.evals import EvalInputError
  with pytest.raises(EvalInputError, match="unknown tag 'words'"):
    score([{"tags": {"words": 3}}], ["x"])
  with pytest.raises(EvalInputError, match="2 test cases but 1 responses"):
    score(cases[:2], ["x"])


def test_tiny_run_trains_and_evaluates(tmp_path):
  """configs/mctune_llama2_7b.py:runlocal through train.py's loop and evaluate.py --evals=mctune."""
  import evaluate
  import train
  from configs.mctune_llama2_7b import get_config
  config = get_config("runlocal")
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  rows = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["train/und_loss"] for r in rows if "train/und_loss" in r]
  assert losses and all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert os.path.exists(os.path.join(workdir, "mctune_controls.json"))
  scores = evaluate.evaluate_checkpoint(config, workdir, str(tmp_path / "eval"), evals=["mctune"])
  assert scores["step"] == 3 and 0.0 <= scores["mctune"]["strict"] <= 1.0
  responses = [json.loads(ln) for ln in open(tmp_path / "eval" / "mctune_responses.jsonl")]
  assert len(responses) == 8 and all("measured" in r and "tags" in r for r in responses)
  from jaxmodels.errors import ConfigError
  with pytest.raises(ConfigError, match="not combined"):
    evaluate.evaluate_checkpoint(config, workdir, str(tmp_path / "eval"), evals=["mctune", "qa"])


def test_full_size_config_shapes():
  """The full-size config builds Llama-2-7B's shape (abstractly: jax.eval_shape, nothing allocated)."""
  import jax
  from flax import nnx
  from configs.mctune_llama2_7b import get_config
  from jaxmodels.trainer.setup import model_factory
  config = get_config()
  model = nnx.eval_shape(model_factory(config))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == 6_738_415_616          # Llama-2-7B's published parameter count
  assert config.data.meta == "paper" and config.optim.lr == 2e-5
