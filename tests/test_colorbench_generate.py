"""ColorBench from a checkpoint (evaluate.py --evals=colorbench --colorbench_data): a parquet built from
the real sample rows (plus a robustness group recoloured from one of them, and images in other modes)
answered by a tiny random-weight shapes_tiny:runlocal run, written in the official result-file format,
scored by the official rules, resumed row by row, refused on a settings mismatch or a bad row (before
any model is built)."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import evaluate
from jaxmodels.evals import EvalInputError, colorbench, colorbench_generate
from jaxmodels.shapes_world.colorbench_tasks import hue_rotate
from random_run import random_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "tests", "data", "colorbench")
WORDS = "what color is the a b c d e select from following choices"
ROBUST = 4            # rows of the robustness group: the seed and 3 recolourings


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


def _rows() -> list[dict]:
  """The 5 sample rows (their images as stored, but two re-encoded in other modes: grey PNG, RGBA
  PNG, shrunk so the test stays fast) and a robustness group of the last image: seed "40.jpg" and
  hue-rotated variants "40_<k>.jpg", in the released schema."""
  with open(os.path.join(SAMPLES, "SampleCase.json"), encoding="utf-8") as f:
    raw = json.load(f)
  rows = []
  for i, r in enumerate(raw):
    with open(os.path.join(SAMPLES, r["filename"]), "rb") as f:
      data = f.read()
    if i == 1:
      data = _encode(Image.open(io.BytesIO(data)).convert("L").resize((96, 64)), "PNG")
    if i == 2:
      data = _encode(Image.open(io.BytesIO(data)).convert("RGBA").resize((40, 90)), "PNG")
    rows.append({"idx": i, "id": r["id"], "type": "Perception", "task": "Color Recognition",
                 "filename": r["filename"], "image": {"bytes": data, "path": r["filename"]},
                 "prompt": r["prompt"], "question": r["question"], "choices": r["choices"],
                 "answer": r["answer"], "image_url": r["image_url"]})
  base = np.asarray(Image.open(os.path.join(SAMPLES, "4.jpg")).convert("RGB"))
  seed = raw[4]
  for k, degrees in enumerate((0, 90, 180, 270)):
    name = "40.jpg" if k == 0 else f"40_{k}.jpg"
    image = base if k == 0 else hue_rotate(base, degrees)
    rows.append({"idx": len(rows), "id": 40, "type": "Robustness", "task": "Color Robustness",
                 "filename": name, "image": {"bytes": _encode(Image.fromarray(image), "JPEG"),
                                             "path": name},
                 "prompt": seed["prompt"], "question": seed["question"], "choices": seed["choices"],
                 "answer": seed["answer"], "image_url": seed["image_url"]})
  return rows


def _write_parquet(path, rows) -> str:
  import pyarrow as pa
  import pyarrow.parquet as pq
  columns = {k: [r.get(k) for r in rows] for k in rows[0]}
  pq.write_table(pa.table(columns), path)
  return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return _write_parquet(tmp_path_factory.mktemp("colorbench_data") / "test-00000-of-00001.parquet",
                        _rows())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory as train.py leaves one (checkpoints/0 with its config, tokenizer.json), random
  weights: the files and the bookkeeping are under test, not the answers."""
  return random_run(tmp_path_factory.mktemp("colorbench_run"), WORDS)


def _answer(run, out, data, settings=(), **options):
  options.setdefault("progress", False)
  return evaluate.evaluate_checkpoint(None, str(run), str(out), evals=("colorbench",),
                                      settings=settings, colorbench_data=data,
                                      colorbench_options=options)


def _no_model(*args, **kwargs):
  raise AssertionError("the model must not be built here")


@pytest.fixture(scope="module")
def answered(run, data, tmp_path_factory):
  out = tmp_path_factory.mktemp("colorbench_out")
  return out, _answer(run, out, data, max_new_tokens=3)


def _result_file(out) -> dict:
  files = os.listdir(out / colorbench_generate.RESULTS_DIR)
  assert files == ["colorbench_run0_step0.json"]   # alone: a --result_dir of metrics_eval.py
  return json.loads((out / colorbench_generate.RESULTS_DIR / files[0]).read_text(encoding="utf-8"))


def test_result_file_rows_fields_and_official_scores(answered, run, data):
  out, scores = answered
  rows = _rows()
  result = _result_file(out)
  assert list(result) == [str(i) for i in range(len(rows))]
  for i, row in enumerate(rows):
    entry = result[str(i)]
    assert set(entry) == set(row) - {"image"} | {"model_ans"}
    assert {k: entry[k] for k in row if k != "image"} == {k: v for k, v in row.items() if k != "image"}
    assert isinstance(entry["model_ans"], str)
  answers = [json.loads(line) for line in (out / colorbench_generate.ANSWERS_FILE).read_text().splitlines()]
  assert [a["idx"] for a in answers] == list(range(len(rows)))
  assert {str(a["idx"]): a["model_ans"] for a in answers} == {k: v["model_ans"] for k, v in result.items()}
  # The scores are the official rules applied to the written file (as --score_only reads it).
  expected = colorbench.score(colorbench.load_colorbench(data, with_images=False),
                              evaluate.read_predictions(str(out / colorbench_generate.RESULTS_DIR /
                                                            "colorbench_run0_step0.json")))
  assert scores["step"] == 0 and scores["colorbench"] == {
      k: v for k, v in colorbench.table_row(expected).items() if v is not None}
  assert expected["robustness"]["seeds"] == 1 and expected["perception"]["total"] == 5
  written = json.loads((out / "colorbench_scores.json").read_text())
  assert written["robustness"] == expected["robustness"] and written["overall"] == expected["overall"]
  record = json.loads((out / colorbench_generate.SETTINGS_FILE).read_text())["settings"]
  assert record["checkpoint"] == os.path.abspath(run) and record["step"] == 0
  assert (record["max_new_tokens"], record["prompt_len"], record["image_size"]) == (3, 96, 32)
  assert (record["decoding"], record["image_aspect"], record["layout"]) == ("greedy", "pad", "question_first")
  assert record["instruction"] == colorbench.DIRECT_INSTRUCTION
  with open(data, "rb") as f:
    assert record["data_sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_images_of_any_mode_and_size_become_the_model_input():
  rows = _rows()
  for i in (0, 1, 2):
    pixels = colorbench_generate.model_pixels(rows[i]["image"]["bytes"], 32, "pad", "x")
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
  wide = colorbench_generate.model_pixels(rows[0]["image"]["bytes"], 32, "pad", "x")
  assert (wide[0] == 127).all()          # 1546 x 1022: padded top and bottom with grey


def test_resume_answers_only_the_missing_rows(answered, run, data, monkeypatch):
  out, _ = answered
  path = out / colorbench_generate.ANSWERS_FILE
  lines = path.read_text(encoding="utf-8").splitlines()
  kept = [lines[i] for i in range(len(lines)) if i not in (2, 6)]
  torn = lines[6][:10]                                  # a kill mid-append: no newline
  path.write_text("\n".join(kept) + "\n" + torn, encoding="utf-8")
  asked = []
  from jaxmodels.evals import shapes_eval
  real = shapes_eval.model_answer_fn

  def counting(*args, **kwargs):
    fn = real(*args, **kwargs)

    def answer(images, texts):
      asked.append(len(texts))
      return fn(images, texts)
    return answer
  monkeypatch.setattr(shapes_eval, "model_answer_fn", counting)
  _answer(run, out, data, max_new_tokens=3)
  assert asked == [2]
  after = path.read_text(encoding="utf-8").splitlines()
  assert after[:len(kept)] == kept and len(after) == len(kept) + 2
  assert sorted(after) == sorted(lines)                 # greedy: the same answers again
  # Complete: scored again without building the model.
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  assert "colorbench" in _answer(run, out, data, max_new_tokens=3)
  assert path.read_text(encoding="utf-8").splitlines() == after


def test_settings_mismatch_is_one_line_and_writes_nothing(answered, run, data, monkeypatch):
  out, _ = answered
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  with pytest.raises(EvalInputError) as err:
    _answer(run, out, data, max_new_tokens=5)
  message = str(err.value)
  assert "\n" not in message and colorbench_generate.SETTINGS_FILE in message
  assert "max_new_tokens: recorded 3, now 5" in message
  other = _write_parquet(out.parent / "other.parquet", _rows()[:5])
  with pytest.raises(EvalInputError, match="data_sha256: recorded"):
    _answer(run, out, other, max_new_tokens=3)
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("change, match", [
    (lambda rows: rows[3].update(answer=None), r"bad\.parquet: row 3 has no string field 'answer'"),
    (lambda rows: rows[2].update(image=None), r"bad\.parquet: row 2 has no image in column 'image'"),
    (lambda rows: rows[1].update(image={"bytes": b"not an image", "path": "x"}),
     r"bad\.parquet: row 1 column 'image' is not a readable image"),
    (lambda rows: [r.pop("prompt") for r in rows], r"bad\.parquet: missing column\(s\) prompt"),
    (lambda rows: [r.pop("image") for r in rows], r"bad\.parquet: missing column\(s\) image"),
])
def test_bad_row_names_file_row_and_column_before_the_model(run, tmp_path, monkeypatch, change, match):
  rows = _rows()[:5]
  change(rows)
  bad = _write_parquet(tmp_path / "bad.parquet", rows)
  monkeypatch.setattr("jaxmodels.trainer.setup.restore_eval_model", _no_model)
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(EvalInputError, match=match) as err:
    _answer(run, out, bad)
  assert "\n" not in str(err.value) and not os.listdir(out)


def test_cli_answers_scores_and_reports(run, data, tmp_path):
  """The command as a user types it: the answers, the official result file and the score table."""
  import subprocess
  import sys
  out = tmp_path / "cli"
  env = dict(os.environ, JAXMODELS_HOST_MALLOC="system")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--checkpoint={run}",
                         "--evals=colorbench", f"--colorbench_data={data}", "--colorbench_model_name=tiny",
                         "--colorbench_max_new_tokens=2", "--colorbench_prompt_len=48",
                         f"--out={out}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / colorbench_generate.RESULTS_DIR / "tiny.json").read_text())
  assert len(result) == 9 and "ColorBench answer" in proc.stderr
  assert "9 longer than the 31 text tokens" in proc.stderr     # 48 - <bos> - 16 image tokens
  assert "unknown to the run's tokenizer" in proc.stderr
  scores = json.loads((out / "results.json").read_text())
  assert set(scores["colorbench"]) >= {"Perception Acc", "Overall Acc", "Color Robustness"}
  assert (out / "scores.md").is_file()
