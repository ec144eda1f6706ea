"""GenEval rules (evals.md §1.4–1.8) on hand-built detections, the real prompt file, the
image-folder layout with its completeness check, and the summary arithmetic."""
import collections
import json

import numpy as np
import pytest

from jaxmodels.evals import EvalInputError
from jaxmodels.evals import geneval as G

from conftest import TEST_DATA  # noqa: E402

METADATA = TEST_DATA / "geneval/evaluation_metadata.jsonl"


def det(cls, box, score=0.95, color=None):
  return {"class": cls, "box": list(box), "score": score, "color": color}


def sq(x, y, size=50):
  """A size×size box with top-left corner (x, y)."""
  return [x, y, x + size, y + size]


COUNT2 = {"tag": "counting", "prompt": "a photo of two cats",
          "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]}
DOG_RIGHT_OF_BEAR = {"tag": "position", "prompt": "a photo of a dog right of a teddy bear",
                     "include": [{"class": "teddy bear", "count": 1},
                                 {"class": "dog", "count": 1, "position": ["right of", 0]}]}


# --------------------------------------------------------------------------- real prompt file

def test_real_metadata_file():
  prompts = G.read_metadata(METADATA)
  assert len(prompts) == 553
  tags = collections.Counter(p["tag"] for p in prompts)
  assert tags == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                  "position": 100, "color_attr": 100}
  assert list(dict.fromkeys(p["tag"] for p in prompts)) == list(G.TAGS)
  counting = [p for p in prompts if p["tag"] == "counting"]
  assert collections.Counter(p["include"][0]["count"] for p in counting) == {2: 26, 3: 28, 4: 26}
  assert all(p["exclude"] == [{"class": p["include"][0]["class"],
                               "count": p["include"][0]["count"] + 1}] for p in counting)
  rels = collections.Counter(p["include"][1]["position"][0] for p in prompts
                             if p["tag"] == "position")
  assert rels == {"left of": 19, "right of": 27, "above": 26, "below": 28}
  assert not any(c["class"] == "person" for p in prompts if p["tag"] == "colors"
                 for c in p["include"])


def test_bad_metadata_line_names_file(tmp_path):
  path = tmp_path / "meta.jsonl"
  path.write_text('{"tag": "colors", "prompt": "p", "include": [{"class": "cat", "count": 1, '
                  '"color": "teal"}]}\n')
  with pytest.raises(EvalInputError, match=r"meta.jsonl.*'color'"):
    G.read_metadata(path)
  path.write_text("{not json\n")
  with pytest.raises(EvalInputError, match=r"meta.jsonl:1: invalid JSON"):
    G.read_metadata(path)


# --------------------------------------------------------------------------- filtering and counting

def test_threshold_is_strict_and_per_class():
  meta = {"tag": "single_object", "prompt": "p", "include": [{"class": "cow", "count": 1}]}
  assert G.evaluate_detections(meta, [det("cow", sq(0, 0), 0.31)]) == (True, "")
  assert G.evaluate_detections(meta, [det("cow", sq(0, 0), 0.3)]) == \
      (False, "expected cow>=1, found 0")
  # A confident detection of another class does not help.
  assert not G.evaluate_detections(meta, [det("horse", sq(0, 0), 0.99)])[0]
  assert G.evaluate_detections(meta, [det("cow", sq(0, 0), 0.5)], threshold=0.6)[0] is False


def test_counting_uses_0_9_threshold():
  two_sure = [det("cat", sq(0, 0), 0.95), det("cat", sq(100, 0), 0.92)]
  assert G.evaluate_detections(COUNT2, two_sure) == (True, "")
  # A third cat at 0.85 would pass 0.3 but not the counting threshold, so it does not count.
  assert G.evaluate_detections(COUNT2, two_sure + [det("cat", sq(200, 0), 0.85)]) == (True, "")
  assert G.evaluate_detections(COUNT2, [det("cat", sq(0, 0), 0.95), det("cat", sq(100, 0), 0.85)]
                               ) == (False, "expected cat>=2, found 1")
  # The same detections on a non-counting prompt use 0.3.
  two_obj = {"tag": "two_object", "prompt": "p", "include": [{"class": "cat", "count": 2}]}
  assert G.evaluate_detections(two_obj, [det("cat", sq(0, 0), 0.95),
                                         det("cat", sq(100, 0), 0.85)])[0]
  assert G.evaluate_detections(COUNT2, [det("cat", sq(0, 0), 0.5)], counting_threshold=0.4)[0] \
      is False  # one cat only


def test_exclude_clause_makes_count_exact():
  three = [det("cat", sq(x, 0), 0.95) for x in (0, 100, 200)]
  assert G.evaluate_detections(COUNT2, three) == (False, "expected cat<3, found 3")
  too_few = {"tag": "counting", "prompt": "p", "include": [{"class": "cup", "count": 3}],
             "exclude": [{"class": "cup", "count": 4}]}
  assert G.evaluate_detections(too_few, [det("cup", sq(x, 0)) for x in (0, 100)]) == \
      (False, "expected cup>=3, found 2")


def test_max_objects_caps_each_class():
  meta = {"tag": "counting", "prompt": "p", "include": [{"class": "cat", "count": 4}],
          "exclude": [{"class": "cat", "count": 5}]}
  many = [det("cat", sq(60 * i, 0), 0.99 - 0.001 * i) for i in range(20)]
  assert G.evaluate_detections(meta, many) == (False, "expected cat<5, found 16")
  assert G.evaluate_detections(meta, many, max_objects=4) == (True, "")


def test_box_iou_plus_one_convention():
  assert G.box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
  assert G.box_iou([0, 0, 9, 9], [10, 0, 19, 9]) == 0.0
  assert G.box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)


def test_nms_only_when_enabled():
  overlapping = [det("cat", [0, 0, 99, 99], 0.97), det("cat", [5, 5, 104, 104], 0.95)]
  assert G.evaluate_detections(COUNT2, overlapping) == (True, "")  # max_overlap=1.0: no NMS
  assert G.evaluate_detections(COUNT2, overlapping, max_overlap=0.5) == \
      (False, "expected cat>=2, found 1")
  apart = [det("cat", sq(0, 0), 0.97), det("cat", sq(100, 0), 0.95)]
  assert G.evaluate_detections(COUNT2, apart, max_overlap=0.5) == (True, "")
  far = det("cat", sq(200, 0), 0.93)
  kept = G.filter_detections(overlapping + [far], tag="counting", max_overlap=0.5)
  assert [d["score"] for d in kept["cat"]] == [0.97, 0.93]  # the 0.95 box overlaps the 0.97 one


# --------------------------------------------------------------------------- colour

def test_colour_check_on_top_count_objects():
  meta = {"tag": "colors", "prompt": "a photo of a blue fire hydrant",
          "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}]}
  assert G.evaluate_detections(meta, [det("fire hydrant", sq(0, 0), color="blue")]) == (True, "")
  assert G.evaluate_detections(meta, [det("fire hydrant", sq(0, 0), color="red")]) == \
      (False, "expected blue fire hydrant>=1, found 0 blue; and 1 red")
  # Only the top-`count` (by score) object is colour-checked: a blue second one does not help.
  dets = [det("fire hydrant", sq(0, 0), 0.9, "red"), det("fire hydrant", sq(100, 0), 0.8, "blue")]
  assert G.evaluate_detections(meta, dets)[0] is False
  assert G.evaluate_detections(meta, [det("fire hydrant", sq(0, 0), color=None)]) == \
      (False, "expected blue fire hydrant>=1, found 0 blue; and ")


def test_color_attr_both_clauses():
  meta = {"tag": "color_attr", "prompt": "a photo of a purple wine glass and a black apple",
          "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                      {"class": "apple", "count": 1, "color": "black"}]}
  good = [det("wine glass", sq(0, 0), color="purple"), det("apple", sq(100, 0), color="black")]
  assert G.evaluate_detections(meta, good) == (True, "")
  bad = [det("wine glass", sq(0, 0), color="purple"), det("apple", sq(100, 0), color="red")]
  assert G.evaluate_detections(meta, bad) == \
      (False, "expected black apple>=1, found 0 black; and 1 red")
  assert G.evaluate_detections(meta, good[:1]) == (False, "expected apple>=1, found 0")


# --------------------------------------------------------------------------- position

def test_position_worked_example():
  a, b = sq(0, 0), sq(100, 0)  # two 50-px boxes, centres 100 px apart horizontally
  assert G.relative_position(a, b) == {"left of"}
  assert G.relative_position(b, a) == {"right of"}
  assert G.relative_position(sq(0, 0), sq(0, 100)) == {"above"}
  assert G.relative_position(sq(0, 100), sq(0, 0)) == {"below"}
  assert G.relative_position(sq(100, 100), sq(0, 0)) == {"right of", "below"}
  # Overlapping boxes: the 0.1 shrink removes the whole offset, so no relation.
  assert G.relative_position(sq(0, 0), sq(10, 0)) == set()
  # 0.5 cut: offset (100, 80) → shrunk (90, 70) / 128.06 = (0.70, 0.55): both hold;
  # offset (100, 60) → (90, 50) / 116.6 = (0.77, 0.43): only "right of".
  assert G.relative_position(sq(100, 80), sq(0, 0)) == {"right of", "below"}
  assert G.relative_position(sq(100, 60), sq(0, 0)) == {"right of"}
  assert G.relative_position(sq(100, 60), sq(0, 0), position_threshold=0.0) == {"right of",
                                                                                 "below"}


def test_position_clause_verdicts():
  bear, dog_right, dog_left = sq(0, 0), sq(100, 0), sq(-100, 0)
  ok = [det("teddy bear", bear), det("dog", dog_right)]
  assert G.evaluate_detections(DOG_RIGHT_OF_BEAR, ok) == (True, "")
  assert G.evaluate_detections(DOG_RIGHT_OF_BEAR, [det("teddy bear", bear), det("dog", dog_left)]
                               ) == (False, "expected dog right of target, found left of target")
  assert G.evaluate_detections(DOG_RIGHT_OF_BEAR, [det("teddy bear", bear), det("dog", sq(5, 0))]
                               ) == (False, "expected dog right of target, found  target")
  assert G.evaluate_detections(DOG_RIGHT_OF_BEAR, [det("dog", dog_right)]) == \
      (False, "expected teddy bear>=1, found 0\nno target for dog to be right of")


# --------------------------------------------------------------------------- records, summary

def test_result_record_schema():
  row = G.result_record("x/00000/samples/0000.png", COUNT2,
                        [det("cat", [0, 0, 50, 50], 0.95), det("cat", sq(100, 0), 0.2)])
  assert set(row) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
  assert row["correct"] is False and row["reason"] == "expected cat>=2, found 1"
  assert json.loads(row["metadata"]) == COUNT2
  assert json.loads(row["details"]) == {"cat": [[0.0, 0.0, 50.0, 50.0, 0.95]]}
  with pytest.raises(EvalInputError, match="detection 0.*'box'"):
    G.evaluate_detections(COUNT2, [{"class": "cat", "score": 0.9}])


def test_summary_arithmetic():
  def rows(tag, prompt, verdicts):
    meta = json.dumps({"tag": tag, "prompt": prompt})
    return [{"tag": tag, "prompt": prompt, "metadata": meta, "correct": v} for v in verdicts]
  results = (rows("single_object", "p1", [True, True, False, False])
             + rows("single_object", "p2", [False] * 4)
             + rows("counting", "p3", [True, True, True, False]))
  s = G.summarize(results)
  assert s["total_images"] == 12 and s["total_prompts"] == 3
  assert s["correct_images"] == pytest.approx(5 / 12)
  assert s["correct_prompts"] == pytest.approx(2 / 3)
  assert s["tags"]["single_object"] == {"correct": 2, "total": 8, "accuracy": 0.25}
  assert s["tags"]["counting"]["accuracy"] == 0.75
  assert s["overall"] == pytest.approx(0.5)  # macro over tags, not 5/12 over images
  text = G.format_summary(s)
  assert "single_object    = 25.00% (2 / 8)" in text
  assert "Overall score (avg. over tasks): 0.50000" in text


# --------------------------------------------------------------------------- folder layout

class BenchDetector:
  """Sees one brown bench in every image."""

  def __init__(self):
    self.calls = 0

  def detect(self, image):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    self.calls += 1
    return [det("bench", [1, 1, 6, 6], 0.9, "brown")]


def make_folder(tmp_path, n_prompts=3, per_prompt=2):
  prompts = [{"tag": "single_object", "prompt": "a photo of a bench",
              "include": [{"class": "bench", "count": 1}]},
             {"tag": "colors", "prompt": "a photo of a blue bench",
              "include": [{"class": "bench", "count": 1, "color": "blue"}]},
             {"tag": "two_object", "prompt": "a photo of a bench and a cat",
              "include": [{"class": "bench", "count": 1},
                          {"class": "cat", "count": 1}]}][:n_prompts]
  meta_path = tmp_path / "evaluation_metadata.jsonl"
  meta_path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
  folder = tmp_path / "images"
  img = np.zeros((8, 8, 3), np.uint8)
  for i, p in enumerate(prompts):
    G.write_prompt_images(folder, i, p, [img] * per_prompt)
  return prompts, meta_path, folder


def test_write_layout_and_score(tmp_path):
  prompts, meta_path, folder = make_folder(tmp_path)
  assert (folder / "00001" / "samples" / "0001.png").is_file()
  assert json.loads((folder / "00002" / "metadata.jsonl").read_text()) == prompts[2]
  detector = BenchDetector()
  out = G.score_folder(folder, meta_path, detector, out_dir=tmp_path / "scores",
                       images_per_prompt=2, progress=False)
  assert detector.calls == 6
  assert [r["correct"] for r in out["results"]] == [True, True, False, False, False, False]
  assert out["results"][2]["reason"] == "expected blue bench>=1, found 0 blue; and 1 brown"
  assert out["summary"]["overall"] == pytest.approx(1 / 3)
  written = G.read_results(tmp_path / "scores" / "results.jsonl")
  assert written == out["results"]
  assert "Overall score (avg. over tasks): 0.33333" in \
      (tmp_path / "scores" / "summary_scores.txt").read_text()
  settings = json.loads((tmp_path / "scores" / "summary.json").read_text())["settings"]
  assert settings["threshold"] == 0.3 and settings["complete"] is True


def test_incomplete_folder_refused_then_reported(tmp_path):
  prompts, meta_path, folder = make_folder(tmp_path)
  (folder / "00001" / "samples" / "0001.png").unlink()
  (folder / "00001" / "samples" / "0001.jpg").write_bytes(b"not really a jpeg")
  for p in (folder / "00002").rglob("*"):
    if p.is_file():
      p.unlink()
  for p in sorted((folder / "00002").rglob("*"), reverse=True):
    p.rmdir()
  (folder / "00002").rmdir()
  with pytest.raises(EvalInputError) as err:
    G.score_folder(folder, meta_path, BenchDetector(), images_per_prompt=2, progress=False)
  message = str(err.value)
  assert "\n" not in message
  assert "1 prompt folders missing: 00002" in message
  assert "1 images missing in 1 folders" in message and "00001 (-1)" in message
  assert "allow_incomplete" in message
  out = G.score_folder(folder, meta_path, BenchDetector(), images_per_prompt=2,
                       allow_incomplete=True, progress=False)
  report = out["report"]
  assert report.missing_folders == [2] and report.missing_images == {1: 1}
  assert report.ignored_files == {1: ["0001.jpg"]}
  assert len(out["results"]) == 3 and out["summary"]["incomplete"]["missing_folders"] == [2]
  assert "non-PNG images ignored" in report.describe()


def test_mismatched_metadata_is_incomplete(tmp_path):
  prompts, meta_path, folder = make_folder(tmp_path, n_prompts=2)
  wrong = dict(prompts[0], include=[{"class": "cat", "count": 1}])
  (folder / "00000" / "metadata.jsonl").write_text(json.dumps(wrong))
  report, _ = G.scan_folder(folder, prompts, images_per_prompt=2)
  assert report.mismatched == [0] and not report.complete
  with pytest.raises(EvalInputError, match="differ from the prompt file: 00000"):
    G.check_folder(folder, prompts, images_per_prompt=2)
