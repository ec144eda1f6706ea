"""GenEval from a checkpoint (evaluate.py --geneval_metadata): the official prompt file drawn by a tiny
random-weight shapes_tiny:runlocal run into GenEval's folder layout, resumed image by image, refused on
a settings mismatch or a bad prompt line (before any model is built), scored as --score_only scores."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import evaluate
from jaxmodels.evals import EvalInputError, geneval_generate
from random_run import random_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METADATA = os.path.join(REPO, "tests", "data", "geneval", "evaluation_metadata.jsonl")
WORDS = "a photo of red blue green circle square triangle and two three left right"
PROMPTS, IMAGES = 3, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory as train.py leaves one (checkpoints/0 with its config, tokenizer.json), random
  weights: the layout and the bookkeeping are under test, not the pictures."""
  return random_run(tmp_path_factory.mktemp("geneval_run"), WORDS)


def _generate(run, out, settings=(), **kw):
  return evaluate.evaluate_checkpoint(None, str(run), str(out), evals=("geneval",), settings=settings,
                                      geneval_metadata=METADATA, images_per_prompt=IMAGES,
                                      geneval_limit=PROMPTS, **kw)


def _files(out):
  """Relative path -> (mtime_ns, bytes) of everything in the prompt folders."""
  found = {}
  for root, _, names in os.walk(out):
    rel = os.path.relpath(root, out)
    if rel.split(os.sep)[0].isdigit():
      for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          found[os.path.relpath(path, out)] = (os.stat(path).st_mtime_ns, f.read())
  return found


def _no_model(*args, **kwargs):
  raise AssertionError("the model must not be built here")


@pytest.fixture(scope="module")
def generated(run, tmp_path_factory):
  out = tmp_path_factory.mktemp("geneval_out")
  scores = _generate(run, out)
  return out, scores, _files(out)


def test_writes_the_official_layout_and_scores_it(generated, run):
  out, scores, files = generated
  expected = {f"{i:05d}/{name}" for i in range(PROMPTS)
              for name in ["metadata.jsonl"] + [f"samples/{j:04d}.png" for j in range(IMAGES)]}
  assert set(files) == {p.replace("/", os.sep) for p in expected}
  with open(METADATA, encoding="utf-8") as f:
    lines = f.read().splitlines()
  for i in range(PROMPTS):
    assert (out / f"{i:05d}" / "metadata.jsonl").read_text(encoding="utf-8") == lines[i] + "\n"
    for j in range(IMAGES):
      with Image.open(out / f"{i:05d}" / "samples" / f"{j:04d}.png") as img:
        assert (img.format, img.size, img.mode) == ("PNG", (32, 32), "RGB")
  record = json.loads((out / "generation.json").read_text())
  settings = record["settings"]
  assert settings["checkpoint"] == os.path.abspath(run) and settings["step"] == 0
  assert (settings["images_per_prompt"], settings["resolution"], settings["seed"]) == (IMAGES, 32, 42)
  assert (settings["batch_size"], settings["guidance"], settings["temperature"]) == (8, 1.0, 0.7)
  assert settings["prompt_template"] == "{prompt}" and settings["gen_target"] == "patch_tokens"
  assert record["sample_seeds"]["00001/samples/0001.png"] == [0, 3]
  # Scored by the --score_only path: the official results.jsonl rows, the summary files.
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert len(rows) == PROMPTS * IMAGES
  assert {r["filename"] for r in rows} == {str(out / p) for p in expected if p.endswith(".png")}
  assert {r["prompt"] for r in rows} == {"a photo of a bench", "a photo of a cow", "a photo of a bicycle"}
  assert (out / "summary_scores.txt").is_file()
  summary = json.loads((out / "summary.json").read_text())
  assert summary["incomplete"]["missing_folders"][:2] == [3, 4]   # --geneval_limit: partial
  assert scores["step"] == 0 and set(scores["geneval"]) == {"overall", "single_object"}


def test_resume_regenerates_only_what_is_missing_or_broken(generated, run, monkeypatch):
  out, _, before = generated
  gone = out / "00001" / "samples" / "0001.png"
  gone.unlink()
  broken = out / "00002" / "samples" / "0000.png"
  broken.write_bytes(before[os.path.join("00002", "samples", "0000.png")][1][:40])  # a truncated PNG
  stale = out / "00000" / "samples" / ".0001.png.tmp.99999"       # a killed run's temporary file
  stale.write_bytes(b"partial")
  _generate(run, out, detector=None, geneval_score=False)
  after = _files(out)
  assert set(after) == set(before) and not stale.exists()
  redone = {os.path.join("00001", "samples", "0001.png"), os.path.join("00002", "samples", "0000.png")}
  for rel, (mtime, data) in before.items():
    if rel in redone:
      assert after[rel][1] == data             # the same batch and key: the same image again
    else:
      assert after[rel] == (mtime, data), rel  # untouched
  # Complete: scored again without building the model.
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  assert "geneval" in _generate(run, out)
  assert _files(out) == after


def test_settings_mismatch_is_one_line_and_writes_nothing(generated, run, monkeypatch):
  out, _, _ = generated
  before = _files(out)
  record = (out / "generation.json").read_bytes()
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  with pytest.raises(EvalInputError) as err:
    _generate(run, out, settings=["evals.guidance=2.0"])
  message = str(err.value)
  assert "\n" not in message and "generation.json" in message
  assert "guidance: recorded 1.0, now 2.0" in message
  with pytest.raises(EvalInputError, match="images_per_prompt: recorded 2, now 3"):
    evaluate.evaluate_checkpoint(None, str(run), str(out), evals=("geneval",), geneval_metadata=METADATA,
                                 images_per_prompt=3, geneval_limit=PROMPTS)
  assert _files(out) == before and (out / "generation.json").read_bytes() == record


@pytest.mark.parametrize("line, match", [
    ('{"tag": "colours", "prompt": "a photo of a red cow", "include": [{"class": "cow", "count": 1}]}',
     r"bad\.jsonl:3: prompt 2: unknown tag 'colours'"),
    ('{"tag": "single_object", "include": [{"class": "cow", "count": 1}]}',
     r"bad\.jsonl:3: prompt 2: missing string field 'prompt'"),
])
def test_bad_metadata_line_names_file_and_line_before_the_model(run, tmp_path, monkeypatch, line, match):
  with open(METADATA, encoding="utf-8") as f:
    good = f.read().splitlines()[:2]
  bad = tmp_path / "bad.jsonl"
  bad.write_text("\n".join(good + [line]) + "\n")
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(EvalInputError, match=match):
    evaluate.evaluate_checkpoint(None, str(run), str(out), evals=("geneval",), geneval_metadata=str(bad))
  assert not os.listdir(out)


def test_unknown_words_are_counted_not_a_crash(run, tmp_path):
  from input_pipeline.tokenizers import WordTokenizer
  tok = WordTokenizer.load(str(run / "tokenizer.json"))
  settings = dict(images_per_prompt=1, batch_size=4, seed=0, prompt_len=16, sample_steps=1, guidance=1.0,
                  prompt_template="Please draw: {prompt}")
  plan = geneval_generate.prepare(tmp_path / "out", METADATA, tok, settings, limit=2)
  stats = plan.prompt_stats
  assert (stats["prompts"], stats["unknown_words"], stats["truncated"]) == (2, 8, 0)   # please, draw, ":" twice; bench, cow
  assert set(stats["examples"]) == {"please", "draw", ":", "bench", "cow"}
  assert "unknown to the run's tokenizer" in geneval_generate.describe_prompts(plan)
  assert plan.todo == [(0, 0), (1, 0)] and not (tmp_path / "out").exists()
  with pytest.raises(EvalInputError, match=r"prompt_template='draw it'.*\{prompt\}"):
    geneval_generate.prepare(tmp_path / "out", METADATA, tok, dict(settings, prompt_template="draw it"))


def test_cli_writes_without_scoring(run, tmp_path):
  """The command as a user types it (--geneval_detector is --detector's alias), stopping after writing."""
  out = tmp_path / "cli"
  env = dict(os.environ, JAXMODELS_HOST_MALLOC="system")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--checkpoint={run}",
                         "--evals=geneval", f"--geneval_metadata={METADATA}", "--images_per_prompt=1",
                         "--geneval_limit=1", "--geneval_detector=shapes", "--geneval_score=False",
                         f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(_files(out)) == [os.path.join("00000", "metadata.jsonl"),
                                 os.path.join("00000", "samples", "0000.png")]
  assert not (out / "results.jsonl").exists()
  assert "GenEval generate" in proc.stderr and "unknown to the run's tokenizer" in proc.stderr
