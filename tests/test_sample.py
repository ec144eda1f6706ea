"""sample.py on a random-weight ShapesWorld run: text -> PNGs + grid + records (same command, same
bytes; a seeded prompts-file row gives the same pixels whatever else is in the file), image +
question -> answer, image + instruction -> edited images, and one-line errors for bad input (missing
checkpoint, unreadable image, malformed prompts file, a model that cannot do the task, an --out
holding an earlier call's records)."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import sample
from random_run import random_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "what color is the red blue green circle square triangle ? a an image of make it"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from configs import shapes_tiny
  config = shapes_tiny.get_config("runlocal")
  config.data.edit_fraction = 0.25          # a run that trained on edits: sample.py may edit with it
  return random_run(tmp_path_factory.mktemp("sample") / "shapes_sample", WORDS, config)


@pytest.fixture(scope="module")
def serving(run_dir):
  from jaxmodels.serving.offline import open_model
  from jaxmodels.serving.schema import Limits
  model = open_model(str(run_dir), limits=Limits(max_tokens=8, max_n=8))
  return model, model.sm


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
  path = tmp_path_factory.mktemp("img") / "scene.png"
  img = np.full((32, 32, 3), 255, np.uint8)
  img[8:24, 8:24] = (220, 30, 30)
  Image.fromarray(img).save(path)
  return str(path)


def _run(sm, tasks, out, **kw):
  opts = dict(seed=0, steps=2, guidance=1.0, image_guidance=1.5, max_tokens=4, temperature=0.0, batch=4)
  opts.update(kw)
  sample.prepare_out(str(out), overwrite=False)
  return sample.run(sm, tasks, out=str(out), **opts)


def _tasks(**kw):
  args = dict(prompts=[], prompts_file=None, image=None, question=None, edit=None, n=1)
  args.update(kw)
  return sample.read_tasks(**args)


def test_text_to_images_files_records_and_determinism(serving, tmp_path):
  sm, _ = serving
  prompts = ["a red circle", "a blue square and a green triangle"]
  out = tmp_path / "a"
  summary = _run(sm, _tasks(prompts=prompts, n=3), out)   # 6 rows in calls of 4: padded last call
  assert summary["images"] == 6
  rows = [json.loads(line) for line in open(out / "samples.jsonl")]
  assert [r["text"] for r in rows] == [prompts[0]] * 3 + [prompts[1]] * 3
  side = serving[1].output_side
  for r in rows:
    assert r["steps"] == 2 and r["seed"] == 0
    img = np.asarray(Image.open(out / r["file"]))
    assert img.shape == (side, side, 3) and img.dtype == np.uint8
  assert rows[0]["file"] == "0000_a_red_circle_0.png" and rows[5]["file"].endswith("_2.png")
  grid = np.asarray(Image.open(out / "grid.png"))
  assert grid.shape == (2 * side + 2, 3 * side + 4, 3)          # one row per prompt, 2-px gaps
  again = tmp_path / "b"
  _run(sm, _tasks(prompts=prompts, n=3), again)
  for r in rows:
    assert (out / r["file"]).read_bytes() == (again / r["file"]).read_bytes()


def test_seeded_row_is_independent_of_the_rest_of_the_file(serving, tmp_path):
  sm, _ = serving
  one = tmp_path / "one.jsonl"
  one.write_text(json.dumps({"prompt": "a red circle", "seed": 5, "n": 2}) + "\n")
  two = tmp_path / "two.jsonl"
  two.write_text("# comment lines and blank lines are skipped\n\n" +
                 json.dumps({"prompt": "a green square", "n": 3}) + "\n" +
                 json.dumps({"prompt": "a red circle", "seed": 5, "n": 2}) + "\n")
  _run(sm, _tasks(prompts_file=str(one)), tmp_path / "o1")
  _run(sm, _tasks(prompts_file=str(two)), tmp_path / "o2")
  a = [json.loads(x) for x in open(tmp_path / "o1" / "samples.jsonl")]
  b = [json.loads(x) for x in open(tmp_path / "o2" / "samples.jsonl")]
  assert [r["seed"] for r in b] == [0, 0, 0, 5, 5]
  for ra, rb in zip(a, b[3:]):
    assert (tmp_path / "o1" / ra["file"]).read_bytes() == (tmp_path / "o2" / rb["file"]).read_bytes()
  # a different seed gives different pixels
  three = tmp_path / "three.jsonl"
  three.write_text(json.dumps({"prompt": "a red circle", "seed": 6, "n": 2}) + "\n")
  _run(sm, _tasks(prompts_file=str(three)), tmp_path / "o3")
  c = [json.loads(x) for x in open(tmp_path / "o3" / "samples.jsonl")]
  assert any((tmp_path / "o1" / ra["file"]).read_bytes() != (tmp_path / "o3" / rc["file"]).read_bytes()
             for ra, rc in zip(a, c))


def test_answer_and_edit(serving, scene_png, tmp_path, capsys):
  sm, _ = serving
  rows = tmp_path / "mixed.jsonl"
  rows.write_text(json.dumps({"image": os.path.basename(scene_png), "question": "what color is the square ?"})
                  + "\n" + json.dumps({"image": scene_png, "edit": "make it blue", "n": 2}) + "\n")
  os.link(scene_png, tmp_path / os.path.basename(scene_png))     # relative image paths: the file's folder
  tasks = _tasks(prompts_file=str(rows))
  assert [t.kind for t in tasks] == ["answer", "edit"]
  summary = _run(sm, tasks, tmp_path / "out")
  assert summary == dict(images=2, answers=1, out=str(tmp_path / "out"))
  answers = [json.loads(x) for x in open(tmp_path / "out" / "answers.jsonl")]
  assert answers[0]["question"] == "what color is the square ?"
  # the answer is the greedy decode of the same prompt through the server's chat path
  assert answers[0]["answer"] in capsys.readouterr().out
  edits = [json.loads(x) for x in open(tmp_path / "out" / "samples.jsonl")]
  assert [e["kind"] for e in edits] == ["edit", "edit"] and edits[0]["image_guidance"] == 1.5
  assert np.asarray(Image.open(tmp_path / "out" / edits[1]["file"])).shape == (serving[1].output_side,) * 2 + (3,)


@pytest.mark.parametrize("kw, message", [
    (dict(question="what ?"), "--question needs --image"),
    (dict(image="x.png"), "--image needs --question"),
    (dict(), "nothing to do"),
    (dict(prompts=["a"], n=0), "--n=0"),
    (dict(prompts=[" "]), "--prompt[0]: empty text"),
    (dict(image="/no/such.png", question="what ?"), "--question: cannot read image /no/such.png"),
])
def test_flag_errors(kw, message):
  from jaxmodels.errors import ConfigError
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
    _tasks(**kw)


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["a"]', "a row must be a JSON object"),
    ('{"prompt": "a", "colour": 1}', "unknown keys"),
    ('{"prompt": "a", "question": "b"}', "exactly one of"),
    ('{"question": "what ?"}', "question needs image"),
    ('{"prompt": "a", "image": "x.png"}', "prompt rows take no image"),
    ('{"prompt": "a", "n": 0}', "n must be an integer >= 1"),
    ('{"prompt": "a", "seed": "1"}', "seed must be an integer"),
])
def test_prompts_file_errors_name_the_line(tmp_path, line, message):
  from jaxmodels.errors import ConfigError
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "fine"}\n' + line + "\n")
  with pytest.raises(ConfigError, match=f"{path}:2: .*{message}"):
    _tasks(prompts_file=str(path))


def test_unreadable_image_and_out_refusal(tmp_path):
  from jaxmodels.errors import ConfigError
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(ConfigError, match=f"--edit: .*{bad}"):
    _tasks(image=str(bad), edit="make it blue")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "samples.jsonl").write_text("{}\n")
  with pytest.raises(ConfigError, match="already holds samples.jsonl"):
    sample.prepare_out(str(tmp_path / "out"), overwrite=False)
  sample.prepare_out(str(tmp_path / "out"), overwrite=True)
  assert (tmp_path / "out" / "samples.jsonl").read_text() == "{}\n"   # untouched until written anew


def test_capability_errors(serving):
  from jaxmodels.errors import ConfigError
  sm, _ = serving
  image = sample.Task("image", "a red circle", "--prompt[0]")
  edit = sample.Task("edit", "make it blue", "--edit")
  answer = sample.Task("answer", "what ?", "--question")
  sample.check_capabilities(sm, [image, edit, answer])           # this run does all three
  no_gen = types.SimpleNamespace(generates=False, edit_why="x", reads_images=True)
  with pytest.raises(ConfigError, match=r"--prompt\[0\]: this model does not generate images"):
    sample.check_capabilities(no_gen, [image])
  no_edit = types.SimpleNamespace(generates=True, edit_why="this model does not edit (reason)", reads_images=True)
  with pytest.raises(ConfigError, match="--edit: this model does not edit"):
    sample.check_capabilities(no_edit, [edit])
  blind = types.SimpleNamespace(generates=True, edit_why=None, reads_images=False)
  with pytest.raises(ConfigError, match="--question: this model reads no images"):
    sample.check_capabilities(blind, [answer])


@pytest.mark.slow
def test_cli(run_dir, tmp_path):
  """The command itself: images written, progress on stderr, and a bad checkpoint is one line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = tmp_path / "cli"
  r = subprocess.run([sys.executable, "sample.py", f"--checkpoint={run_dir}", "--prompt=a red circle",
                      "--n=2", "--steps=2", f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["0000_a_red_circle_0.png", "0000_a_red_circle_1.png", "grid.png",
                                     "samples.jsonl"]
  assert "sample: 2/2 images" in r.stderr and "ETA" in r.stderr
  r = subprocess.run([sys.executable, "sample.py", f"--checkpoint={tmp_path / 'nope'}", "--prompt=a",
                      f"--out={tmp_path / 'o'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "nope" in last and "Traceback" not in r.stderr
