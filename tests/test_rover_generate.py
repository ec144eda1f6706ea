"""ROVER from a checkpoint (evaluate.py --evals=rover --rover_data): a tiny ROVER dataset in the released
schema (IG and TG parquet, small PNGs of several sizes) done by a tiny random-weight shapes_tiny:runlocal
run into ROVER's output layout, resumed output by output, refused on a settings mismatch or a bad input
(before any model is built), counted by the dry run without a request, then judged against a local fake
OpenAI-compatible endpoint (tests/judge_server.py) that also stalls and talks garbage."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import evaluate
from jaxmodels.evals import EvalInputError
from jaxmodels.evals import judges as J
from jaxmodels.evals import rover_generate as G
from judge_server import SECRET, TIMEOUT, FakeServer, prompt_text
from random_run import random_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "make the tree grow older solve puzzle fill missing piece what falls next answer a b"
DIMENSIONS = ["science", "culture", "common_sense", "logic"]
RUBRICS_PY = '''
prompt_reasoning_process_temporal = """RP temporal {prompt} | {dimension} | {keywords} | {think_output}
Reply {{"reasoning_process_score": X, "reasoning": "..."}}"""
prompt_reasoning_visual_temporal = "RV temporal {prompt} | {target_description}"
prompt_reasoning_process_logical = "RP logical {prompt} {think_output}"
prompt_reasoning_visual_logical = "RV logical {prompt} " + "{keywords}"
prompt_reasoning_alignment = "RA {prompt} {think_output}"
prompt_visual_consistency = "VC {prompt}"
prompt_image_quality = """IQ {"image_quality_score": X}"""
prompt_interleaved_reasoning_jigsaw = "IR jigsaw {prompt} {answer}"
prompt_reasoning_alignment_jigsaw = "TA jigsaw {prompt} {model_answer} vs {answer}"
prompt_interleaved_reasoning_physical = "IR physical {prompt}"
prompt_reasoning_alignment_physical = "TA physical {prompt} {model_answer} vs {answer}"
'''


def png(value, w, h, mode="RGB"):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).convert(mode).save(buf, format="PNG")
  return buf.getvalue()


def ig_rows():
  """Three ROVER-IG tasks: a ClassLabel `dimension`, a math id (logical rubrics), one target image."""
  return [
      {"id": "science_temporal_1", "dimension": 0, "reasoning_type": "temporal",
       "prompt": "make the tree grow older", "target_description": "an old tree",
       "keywords": "growth, age", "image": {"bytes": png(40, 20, 12), "path": None},
       "target_image": {"bytes": png(90, 16, 16), "path": None}},
      {"id": "logic_math_1", "dimension": 3, "reasoning_type": "mathematical",
       "prompt": "solve the puzzle", "target_description": "solved", "keywords": "sum",
       "image": {"bytes": png(120, 33, 47, "L"), "path": None}, "target_image": None},
      {"id": "common_sense_temporal_2", "dimension": 2, "reasoning_type": "temporal",
       "prompt": "what falls next", "target_description": "a leaf on the ground",
       "keywords": "autumn", "image": {"bytes": png(200, 64, 64, "RGBA"), "path": None},
       "target_image": None}]


def tg_rows():
  return [
      {"id": "jigsaw_1", "problem_type": "jigsaw", "prompt": "fill the missing piece answer a or b",
       "image": {"bytes": png(10, 24, 24), "path": None},
       "reasoning_image": {"bytes": png(30, 24, 24), "path": None}, "image2": None, "answer": "A"},
      {"id": "physical_1", "problem_type": "physical", "prompt": "what falls next",
       "image": {"bytes": png(60, 30, 18), "path": None},
       "reasoning_image": {"bytes": png(70, 30, 18), "path": None}, "image2": None, "answer": "B"}]


def write_parquet(path, rows, class_label=False):
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pa.table({k: [r.get(k) for r in rows] for k in rows[0]})
  if class_label:
    meta = {"info": {"features": {"dimension": {"_type": "ClassLabel", "names": DIMENSIONS}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(table, path)
  return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """The dataset root as the HF snapshot has it: ROVER-IG/ and ROVER-TG/ parquet folders."""
  root = tmp_path_factory.mktemp("rover_data")
  write_parquet(root / "ROVER-IG" / "train-00000-of-00001.parquet", ig_rows(), class_label=True)
  write_parquet(root / "ROVER-TG" / "train-00000-of-00001.parquet", tg_rows())
  (root / "prompts.py").write_text(RUBRICS_PY)
  return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory as train.py leaves one (checkpoints/0 with its config, tokenizer.json), random
  weights: the layout and the bookkeeping are under test, not the pictures."""
  return random_run(tmp_path_factory.mktemp("rover_run"), WORDS)


@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _do(run, out, data, config="IG", **options):
  options.setdefault("progress", False)
  return evaluate.evaluate_checkpoint(None, str(run), str(out), evals=("rover",),
                                      rover_data=str(data), rover_options=dict(rover_config=config,
                                                                               **options))


def _no_model(*args, **kwargs):
  raise AssertionError("the model must not be built here")


def _files(folder):
  return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())
          if p.is_file()}


@pytest.fixture(scope="module")
def ig_out(run, data, tmp_path_factory):
  out = tmp_path_factory.mktemp("rover_ig")
  return out, _do(run, out, data, "IG")


@pytest.fixture(scope="module")
def tg_out(run, data, tmp_path_factory):
  out = tmp_path_factory.mktemp("rover_tg")
  return out, _do(run, out, data, "TG")


def test_ig_writes_the_official_layout(ig_out, run):
  out, result = ig_out
  assert result == {"step": 0}                           # no judge given: outputs only
  gen = out / "IG"
  assert sorted(p.name for p in gen.iterdir()) == sorted(
      [G.SETTINGS_FILE] + [f"gen_{r['id']}.png" for r in ig_rows()])   # no think text by default
  for row in ig_rows():
    with Image.open(gen / f"gen_{row['id']}.png") as img:
      assert img.size == (32, 32) and img.mode == "RGB"
  record = json.loads((gen / G.SETTINGS_FILE).read_text())
  s = record["settings"]
  assert record["tasks"] == 3 and s["config"] == "IG" and s["checkpoint"] == os.path.abspath(run)
  assert (s["step"], s["seed"], s["batch_size"], s["image_size"], s["output_size"]) == (0, 0, 8, 32, 32)
  assert (s["ig_text"], s["tg_image"], s["gen_target"]) == ("none", "generated", "patch_tokens")
  assert list(s["data_sha256"]) == ["ROVER-IG/train-00000-of-00001.parquet"]


def test_tg_writes_images_and_answers_and_accuracy(tg_out):
  out, result = tg_out
  gen = out / "TG"
  names = {p.name for p in gen.iterdir()}
  for row in tg_rows():
    assert {f"gen_{row['id']}.png", f"gen_{row['id']}.txt"} <= names
  answers = [(gen / f"gen_{r['id']}.txt").read_text() for r in tg_rows()]
  right = sum(a.strip().lower().split(":")[-1].strip() == r["answer"].lower()
              for a, r in zip(answers, tg_rows()))
  assert result["rover_tg"] == {"accuracy": 100.0 * right / 2}   # judged metrics only with a judge


def test_resume_regenerates_only_the_missing_output(ig_out, run, data, monkeypatch):
  out, _ = ig_out
  gen = out / "IG"
  before = _files(gen)
  (gen / "gen_logic_math_1.png").unlink()
  (gen / ".gen_x.png.tmp.123").write_bytes(b"half")      # a killed run's temporary file
  _do(run, out, data, "IG")
  after = _files(gen)
  assert set(after) == set(before)
  for name, (mtime, content) in before.items():
    if name == "gen_logic_math_1.png":
      assert after[name][0] != mtime and after[name][1] == content   # the same seed: the same image
    else:
      assert after[name] == (mtime, content)
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  _do(run, out, data, "IG")                                # complete: no model built
  assert _files(gen) == after


def test_ig_think_text_from_the_model(run, data, tmp_path):
  _do(run, tmp_path, data, "IG", ig_text="model", answer_tokens=16)
  for row in ig_rows():
    assert (tmp_path / "IG" / f"gen_{row['id']}.txt").is_file()
  record = json.loads((tmp_path / "IG" / G.SETTINGS_FILE).read_text())["settings"]
  assert record["ig_text"] == "model"


def test_settings_mismatch_is_one_line_and_writes_nothing(ig_out, run, data, monkeypatch):
  out, _ = ig_out
  before = _files(out / "IG")
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  with pytest.raises(EvalInputError) as err:
    _do(run, out, data, "IG", seed=1, ig_text="model")
  message = str(err.value)
  assert "\n" not in message and G.SETTINGS_FILE in message
  assert "seed: recorded 0, now 1" in message and "ig_text: recorded 'none', now 'model'" in message
  assert _files(out / "IG") == before


def test_dry_run_counts_calls_and_sends_nothing(ig_out, tg_out, run, data, monkeypatch, capsys):
  import urllib.request

  def no_http(*args, **kwargs):
    raise AssertionError("a dry run made an HTTP request")
  monkeypatch.setattr(urllib.request, "urlopen", no_http)
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  for (out, _), config, calls in ((ig_out, "IG", 15), (tg_out, "TG", 4)):
    result = _do(run, out, data, config, rubrics=str(data / "prompts.py"), dry_run=True)
    count = result[f"rover_{config.lower()}_dry_run"]
    assert (count["tasks_to_judge"], count["judge_calls"]) == (len(ig_rows() if config == "IG"
                                                                  else tg_rows()), calls)
    assert count["max_http_requests"] == calls * 5 * 3
    assert json.loads((out / config / G.DRY_RUN_FILE).read_text())["judge_calls"] == calls
    assert not (out / config / "rover_metrics.jsonl").exists()
  assert "15 judge calls for 3 of 3 tasks" in capsys.readouterr().out


def _score_for(text):
  """A valid judge reply for the metric whose rubric `text` is (the rubric names its metric)."""
  for tag, key in (("RP", "reasoning_process"), ("RV", "reasoning_visual"),
                   ("RA", "reasoning_alignment"), ("VC", "visual_consistency"),
                   ("IQ", "image_quality"), ("IR", "interleaved_reasoning"),
                   ("TA", "reasoning_alignment")):
    if text.startswith(tag + " "):
      return key
  raise AssertionError(text)


def _judge(url, **kw):
  return J.OpenAIJudge(url, "judge-model", api_key_env="ROVER_TEST_KEY", api_attempts=2,
                       parse_attempts=2, timeout=0.5, backoff_scale=0.001, sleep=lambda s: None, **kw)


def test_judged_end_to_end_with_garbage_and_a_timeout(ig_out, run, data, monkeypatch, tmp_path):
  monkeypatch.setenv("ROVER_TEST_KEY", SECRET)
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  out = tmp_path / "judged"
  shutil.copytree(ig_out[0], out)
  rubrics = str(data / "prompts.py")

  def respond(body):
    text = prompt_text(body)
    if text.startswith("VC solve the puzzle"):
      return 200, "I cannot decide, it is lovely."       # garbage, every time
    if text.startswith("RA make the tree"):
      return TIMEOUT                                      # stalls past the judge's timeout
    key = _score_for(text)
    return 200, json.dumps({f"{key}_score": 4 if key != "image_quality" else 2, "reasoning": "ok"})

  with FakeServer(respond=respond, limit=40, stall=1.0) as server:
    result = _do(run, out, data, "IG", rubrics=rubrics, judge=_judge(server.url))
  # 15 calls; the garbage one asked twice (parse_attempts), the stalled one tried twice (api_attempts).
  assert len(server.requests) == 17
  assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)
  scores = result["rover_ig"]
  assert scores["judge_failures"] == 2 and scores["RV"] == 75.0 and scores["IQ"] == 25.0
  summary = json.loads((out / "IG" / "rover_summary.json").read_text())["summary"]
  assert summary["failures"] == {"RP": 0, "RV": 0, "RA": 1, "VC": 1, "IQ": 0}
  assert summary["counts"]["VC"] == 2 and summary["task_count"] == 3
  lines = (out / "IG" / "rover_metrics.jsonl").read_text().splitlines()
  by_key = {json.loads(line)["key"]: json.loads(line)["result"] for line in lines}
  assert len(lines) == 3 and by_key["logic_math_1"]["visual_consistency_score"] is None
  assert by_key["logic_math_1"]["visual_consistency_reasoning"].startswith("error: no valid")
  assert "failed after 2 attempt(s)" in by_key["science_temporal_1"]["reasoning_alignment_reasoning"]
  judge_record = json.loads((out / "IG" / G.JUDGE_FILE).read_text())["settings"]
  assert judge_record["model"] == "judge-model" and SECRET not in json.dumps(judge_record)
  for p in (out / "IG").iterdir():
    if p.suffix in (".json", ".jsonl"):
      assert SECRET not in p.read_text()
  # Resume: judged records are kept, nothing asked (a line torn by a kill mid-append is cut, so the
  # next append starts its own line); --rover_redo_missing asks only the two failures.
  with open(out / "IG" / "rover_metrics.jsonl", "a") as f:
    f.write('{"key": "logic_math_1", "res')
  with FakeServer(respond=respond, limit=5) as server:
    _do(run, out, data, "IG", rubrics=rubrics, judge=_judge(server.url))
  assert server.requests == []
  assert (out / "IG" / "rover_metrics.jsonl").read_text().splitlines() == lines
  with FakeServer(respond=lambda b: (200, json.dumps({f"{_score_for(prompt_text(b))}_score": 5})),
                  limit=5) as server:
    result = _do(run, out, data, "IG", rubrics=rubrics, judge=_judge(server.url), redo_missing=True)
  assert len(server.requests) == 2 and result["rover_ig"]["judge_failures"] == 0
  after = (out / "IG" / "rover_metrics.jsonl").read_text().splitlines()
  assert after[:3] == lines and len(after) == 5          # appended, never rewritten
  # Another judge on the same folder: one line, before any request.
  with FakeServer(limit=1) as server, pytest.raises(EvalInputError) as err:
    _do(run, out, data, "IG", rubrics=rubrics,
        judge=J.OpenAIJudge(server.url, "other-judge", api_key_env="ROVER_TEST_KEY"))
  assert "\n" not in str(err.value) and G.JUDGE_FILE in str(err.value)
  assert "model: recorded 'judge-model', now 'other-judge'" in str(err.value)
  assert server.requests == []


def _bad(rows, change):
  rows = [dict(r) for r in rows]
  change(rows)
  return rows


@pytest.mark.parametrize("config, change, match", [
    ("IG", lambda rows: [r.pop("keywords") for r in rows], r"missing column\(s\) keywords"),
    ("IG", lambda rows: rows[1].update(prompt=None), r"task logic_math_1: field 'prompt' is missing"),
    ("IG", lambda rows: rows[2].update(image={"bytes": b"not a png", "path": None}),
     r"task common_sense_temporal_2: field 'image' is not a readable image"),
    ("IG", lambda rows: rows[0].update(id="../escape"), r"id '\.\./escape' cannot name"),
    ("TG", lambda rows: rows[1].update(problem_type="cooking"), r"problem_type 'cooking' is not one"),
    ("TG", lambda rows: rows[0].update(reasoning_image={"bytes": b"\x89PNG broken", "path": None}),
     r"task jigsaw_1: field 'reasoning_image' is not a readable image"),
])
def test_bad_input_is_one_line_before_the_model(run, tmp_path, monkeypatch, config, change, match):
  rows = _bad(ig_rows() if config == "IG" else tg_rows(), change)
  bad = write_parquet(tmp_path / "bad" / "bad.parquet", rows, class_label=config == "IG")
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(EvalInputError, match=match) as err:
    _do(run, out, bad, config)
  assert "\n" not in str(err.value) and not os.listdir(out)


def test_missing_rubric_is_one_line_before_the_model(run, data, tmp_path, monkeypatch):
  rubrics = tmp_path / "prompts.py"
  rubrics.write_text(RUBRICS_PY.replace("prompt_reasoning_visual_logical", "renamed"))
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  out = tmp_path / "out"
  with pytest.raises(EvalInputError, match="task logic_math_1: no rubric named "
                                           "'prompt_reasoning_visual_logical'") as err:
    _do(run, out, data, "IG", rubrics=str(rubrics), dry_run=True)
  assert "\n" not in str(err.value) and not out.exists()
  with pytest.raises(EvalInputError, match="cannot read rubric file"):
    _do(run, out, data, "IG", rubrics=str(tmp_path / "absent.py"), dry_run=True)


def test_cli_judges_a_generated_folder(tg_out, run, data, tmp_path):
  """The command as a user types it, on a folder already written (so no model is built): the key
  comes from the environment variable only, the scores reach results.json."""
  out = tmp_path / "cli"
  shutil.copytree(tg_out[0], out)
  env = dict(os.environ, JAXMODELS_HOST_MALLOC="system", MY_JUDGE_KEY=SECRET,
             NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
  with FakeServer(respond=lambda b: (200, json.dumps({f"{_score_for(prompt_text(b))}_score": 3})),
                  limit=10) as server:
    proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--checkpoint={run}",
                           "--evals=rover", f"--rover_data={data}", "--rover_config=TG",
                           f"--rover_rubrics={data / 'prompts.py'}", f"--base_url={server.url}",
                           "--judge_model=judge-model", "--judge_api_key_env=MY_JUDGE_KEY",
                           f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(server.requests) == 4 and server.requests[0]["auth"] == f"Bearer {SECRET}"
  scores = json.loads((out / "results.json").read_text())["rover_tg"]
  assert scores["IR"] == 50.0 and scores["RA"] == 50.0 and scores["judge_failures"] == 0
  assert "accuracy" in scores and SECRET not in proc.stderr + proc.stdout


def test_cli_judge_key_only_from_the_environment(run, data, tmp_path):
  """No key flag exists: --judge_api_key_env names a variable, and an unset one is one line before
  anything is generated."""
  env = dict(os.environ, JAXMODELS_HOST_MALLOC="system")
  env.pop("ROVER_UNSET_KEY", None)
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--checkpoint={run}",
                         "--evals=rover", f"--rover_data={data}", f"--rover_rubrics={data / 'prompts.py'}",
                         "--base_url=http://127.0.0.1:9/v1", "--judge_model=m",
                         "--judge_api_key_env=ROVER_UNSET_KEY", f"--out={out}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert last.startswith("error: ") and "ROVER_UNSET_KEY" in last
  assert not (out / "IG").exists()
