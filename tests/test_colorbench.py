"""ColorBench: loading the official row formats, prompt text, answer extraction (our rule and the
official routes) and metric arithmetic (micro averages, all-variants robustness)."""
import json

import pytest

from jaxmodels.evals import EvalInputError
from jaxmodels.evals import colorbench as C

from conftest import TEST_DATA  # noqa: E402

SAMPLES = TEST_DATA / "colorbench"



# --------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("response, expected", [
    ("C", "C"), ("c", "C"), ("(B)", "B"), ("(b)", "B"), ("C.", "C"), ("[D]", "D"), ("b)", "B"),
    (" A\n", "A"), ("The answer is (B)", "B"), ("Answer: C", "C"), ("Final answer: D.", "D"),
    ("**Answer:** (C) Blue", "C"), ("The correct option is B.", "B"), ("answer: d.", "D"),
    ("The answer is B, not option C", "B"), ("I pick option B", "B"), ("C. Blue", "C"),
    ("B) Green", "B"), ("D: Yellow", "D"), ("A - Black", "A"),
    ("Option (A) is black and (B) is yellow, so it is (B)", "B"), ("Blue, so B.", "B"),
    ("Therefore the answer is \\boxed{C}", "C"), ("The answer is A.", "A"),
    ("Let me think. The trees are green. Answer: (D) Green", "D"),
    # No commitment → None.
    ("Green", None), ("the answer is a blue car", None), ("It is Vitamin C", None),
    ("I cannot tell.", None), ("", None), (None, None),
    # Letters beyond the choices never count.
    ("E", None), ("(F)", None), ("The answer is E", None),
])
def test_extract_choice_styles(response, expected):
  assert C.extract_choice(response, 4) == expected


def test_extract_choice_respects_num_choices():
  assert C.extract_choice("E", 5) == "E"
  assert C.extract_choice("Answer: (F)", 6) == "F"
  assert C.extract_choice("(E) No answer", 5) == "E"
  assert C.extract_choice("(E) No answer", 4) is None


@pytest.mark.parametrize("response, route, expected", [
    ("C", "open", "c"), ("(C)", "open", "c"), ("C.", "open", "c."),  # official quirk: wrong
    ("The answer is (B) Yellow", "open", "b"), ("c) 3 apples", "open", "c"),
    ("Blue", "open", "blue"), ("(C) Blue", "api", "e"), ("Selected: (c)", "api", "c"),
    ("I think (A) then (C)", "cot", "c"), ("no parentheses", "cot", ""), ("", "api", ""),
])
def test_official_routes(response, route, expected):
  assert C.official_answer(response, route) == expected


def test_official_route_for_names():
  assert C.official_route_for("gpt4o_cot") == "cot"
  assert C.official_route_for("gemini_flash") == "api"
  assert C.official_route_for("GPT-4o") == "api"
  assert C.official_route_for("qwen25_7b") == "open"
  with pytest.raises(EvalInputError, match="official_route"):
    C.official_answer("C", "closed")


# --------------------------------------------------------------------------- data formats

def test_sample_case_json_rows_and_prompt():
  rows = C.load_colorbench(SAMPLES / "SampleCase.json")
  assert len(rows) == 5 and [r["idx"] for r in rows] == [0, 1, 2, 3, 4]
  assert rows[1]["choices"][-1] == "No answer" and C.answer_letter(rows[1]["answer"]) == "E"
  assert C.row_image(rows[0]).mode == "RGB"
  text = C.build_prompt(rows[0])
  assert text == C.DIRECT_INSTRUCTION + "\n" + rows[0]["prompt"]
  assert text.endswith("(A) Black (B) Yellow (C) Blue (D) Green")
  assert C.build_prompt(rows[0], cot=True).startswith(C.COT_INSTRUCTION + "\n")
  assert C.build_prompt(rows[0], instruction="X") == "X\n" + rows[0]["prompt"]


def test_parquet_rows_roundtrip(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  raw = json.loads((SAMPLES / "SampleCase.json").read_text())
  table = pa.table({
      "idx": [i for i in range(len(raw))], "id": [r["id"] for r in raw],
      "type": ["Perception"] * len(raw), "task": ["Color Recognition"] * len(raw),
      "filename": [r["filename"] for r in raw],
      "image": [{"bytes": (SAMPLES / r["filename"]).read_bytes(), "path": r["filename"]}
                for r in raw],
      "prompt": [r["prompt"] for r in raw], "question": [r["question"] for r in raw],
      "choices": [r["choices"] for r in raw], "answer": [r["answer"] for r in raw],
      "image_url": [r["image_url"] for r in raw]})
  (tmp_path / "data").mkdir()
  pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
  rows = C.load_colorbench(tmp_path)
  assert len(rows) == 5 and rows[2]["choices"] == raw[2]["choices"]
  assert isinstance(rows[0]["image"], bytes) and C.row_image(rows[0]).size[0] > 0
  assert "image" not in C.load_colorbench(tmp_path, with_images=False)[0]
  pq.write_table(table.drop(["answer"]), tmp_path / "bad.parquet")
  with pytest.raises(EvalInputError, match=r"bad.parquet: missing column\(s\) answer"):
    C.load_colorbench(tmp_path / "bad.parquet")


def test_malformed_rows_are_named(tmp_path):
  path = tmp_path / "rows.json"
  path.write_text(json.dumps([{"type": "Perception", "task": "t", "filename": "0.png",
                               "prompt": "p", "choices": ["a", "b"], "answer": "(C)"}]))
  with pytest.raises(EvalInputError, match=r"rows.json: row 0 field 'answer'"):
    C.load_colorbench(path)


# --------------------------------------------------------------------------- metrics

def row(idx, kind, task, answer="(A)", filename=None, n=4):
  return {"idx": idx, "type": kind, "task": task, "filename": filename or f"{idx}.png",
          "choices": [f"c{i}" for i in range(n)], "answer": answer, "prompt": "p"}


def test_score_micro_averages_and_robustness():
  rows = [row(0, "Perception", "Color Recognition"), row(1, "Perception", "Color Recognition"),
          row(2, "Perception", "Object Recognition"),
          row(3, "Reasoning", "Color Counting", "(B)"), row(4, "Reasoning", "Color Counting"),
          row(5, "Reasoning", "Color Illusion")]
  preds = {0: "A", 1: "(A)", 2: "B", 3: "B", 4: "C", 5: "no idea"}
  # Robustness: seed 7 robust; seed 8 one variant wrong; seed 9 original wrong.
  for seed, verdicts in ((7, [1, 1, 1]), (8, [1, 1, 0]), (9, [0, 1, 1])):
    for j, ok in enumerate(verdicts):
      idx = 100 * seed + j
      name = f"robust/{seed}.png" if j == 0 else f"robust/{seed}_{j}.png"
      rows.append(row(idx, "Robustness", "Color Robustness", filename=name))
      preds[idx] = "A" if ok else "D"
  s = C.score(rows, preds)
  assert s["tasks"]["Color Recognition"] == {"correct": 2, "total": 2, "accuracy": 1.0}
  assert s["tasks"]["Object Recognition"]["accuracy"] == 0.0
  assert "Color Robustness" not in s["tasks"]
  assert s["perception"]["accuracy"] == pytest.approx(2 / 3)  # micro, not (1 + 0) / 2
  assert s["reasoning"]["accuracy"] == pytest.approx(1 / 3)
  assert s["overall"] == {"correct": 3, "total": 6, "accuracy": 0.5}
  assert s["robustness"] == {"robust": 1, "seeds": 3, "accuracy": pytest.approx(1 / 3),
                             "seeds_without_original": 0}
  assert s["unanswered"] == 1 and s["missing"] == 0 and s["rule"] == "extract_choice"
  assert s["per_row"][4] == {"answer": "C", "correct": False}
  table = C.table_row(s)
  assert list(table)[:10] == list(C.PR_TASKS) and table["Color Robustness"] == pytest.approx(1 / 3)
  assert table["Color Extraction"] is None


def test_score_official_route_and_missing():
  rows = [row(0, "Perception", "Color Recognition", "(C)"),
          row(1, "Perception", "Color Recognition", "(C)")]
  preds = {"0": "C.", "1": "(C) Blue"}  # string keys work too
  assert C.score(rows, preds)["overall"]["correct"] == 2
  assert C.score(rows, preds, official_route="open")["overall"]["correct"] == 1  # "C." is wrong
  assert C.score(rows, preds, official_route="api")["overall"]["correct"] == 1  # "(C) Blue" → "e"
  assert C.score(rows, preds, official_route="api")["rule"] == "official:api"
  with pytest.raises(EvalInputError, match="1 rows have no prediction"):
    C.score(rows, {"0": "C"})
  s = C.score(rows, {"0": "C"}, allow_missing=True)
  assert s["missing"] == 1 and s["overall"]["accuracy"] == 0.5
