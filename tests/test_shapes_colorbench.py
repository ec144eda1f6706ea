"""ShapesWorld-ColorBench: the official row schema, all 11 tasks, determinism, answers that follow
from the pixels (re-derived here from the images with the shapes detector or pixel counts), the
recolourings of the robustness groups, and the model runner feeding `colorbench.score`."""
import collections

import numpy as np
import pytest

from jaxmodels.shapes_world import palette, shapes
from jaxmodels.evals import EvalInputError, colorbench
from jaxmodels.evals import shapes_colorbench as S
from jaxmodels.shapes_world import colorbench_tasks as T
from jaxmodels.evals.detectors import ShapesDetector

PER_TASK, SEEDS = 6, 4


@pytest.fixture(scope="module")
def rows():
  return S.make_rows(seed=0, per_task=PER_TASK, robustness_seeds=SEEDS, image_size=32)


def _by_task(rows, task):
  return [r for r in rows if r["task"] == task]


def _answer_text(row):
  return row["choices"][colorbench.LETTERS.index(colorbench.answer_letter(row["answer"]))]


def _subject(question, before, after):
  return question.split(before, 1)[1].split(after, 1)[0].strip()


def test_schema_tasks_and_determinism(rows):
  counts = collections.Counter(r["task"] for r in rows)
  assert set(counts) == set(S.TASKS) and len(S.TASKS) == 11
  assert all(counts[t] == PER_TASK for t in S.TASKS if t != "Color Robustness")
  assert counts["Color Robustness"] == SEEDS * 10
  for i, r in enumerate(rows):
    assert set(colorbench.FIELDS) <= set(r) and r["idx"] == i
    assert r["type"] == S.TASKS[r["task"]]
    assert 3 <= len(r["choices"]) <= 6 and len(set(r["choices"])) == len(r["choices"])
    assert r["prompt"] == "\n".join([r["question"], S.SELECT] + [
        f"({colorbench.LETTERS[k]}) {c}" for k, c in enumerate(r["choices"])])
    assert S.row_pixels(r).shape == (32, 32, 3)
  assert len({r["id"] for r in rows if r["task"] != "Color Robustness"}) == PER_TASK * 10
  again = S.make_rows(seed=0, per_task=PER_TASK, robustness_seeds=SEEDS, image_size=32)
  assert again == rows
  other = S.make_rows(seed=1, per_task=PER_TASK, robustness_seeds=SEEDS, image_size=32)
  assert [r["image"] for r in other] != [r["image"] for r in rows]
  assert S.row_pixels(S.make_rows(per_task=1, robustness_seeds=0, image_size=48,
                                  tasks=["Color Blindness"])[0]).shape == (48, 48, 3)
  with pytest.raises(EvalInputError, match="unknown task"):
    S.make_rows(tasks=["Color Smell"])


def test_score_runs_unchanged_on_the_rows(rows):
  truth = {r["idx"]: _answer_text(r) for r in rows}
  perfect = colorbench.score(rows, {r["idx"]: r["answer"] for r in rows})
  assert S.summary(perfect) == {"perception": 1.0, "reasoning": 1.0, "overall": 1.0,
                                "robustness": 1.0}
  assert perfect["perception"]["total"] == 3 * PER_TASK
  assert perfect["robustness"]["seeds"] == SEEDS
  # One wrong recoloured variant makes its seed not robust; P&R are unaffected.
  variant = next(r for r in rows if r["filename"] == "0_5.png")
  wrong = {r["idx"]: r["answer"] for r in rows} | {variant["idx"]: "(Z)"}
  assert colorbench.score(rows, wrong)["robustness"]["robust"] == SEEDS - 1
  # A model answering in option text (open-answer training) is read through match_option.
  assert all(S.match_option(t + ".", r["choices"]) == r["answer"] for r in rows
             for t in [truth[r["idx"]]])
  assert S.match_option("no idea", ["a", "b", "c"]) is None


def test_counting_answers_equal_the_objects_drawn(rows):
  det = ShapesDetector()
  for r in _by_task(rows, "Object Counting"):
    color = _subject(r["question"], "How many ", " objects")
    found = [d for d in det.detect(S.row_pixels(r)) if d["color"] == color]
    assert str(len(found)) == _answer_text(r)
  for r in _by_task(rows, "Color Counting"):
    colors = {d["color"] for d in det.detect(S.row_pixels(r))}
    assert str(len(colors)) == _answer_text(r)
  for r in _by_task(rows, "Color Mimicry"):   # the background is 28 from the hidden colour
    image = S.row_pixels(r)
    shape = _subject(r["question"], "How many ", " are")
    found = ShapesDetector(color_tolerance=10).detect(image)
    assert sum(shapes.plural(d["class"]) == shape for d in found) == int(_answer_text(r))
    assert any(0 < np.linalg.norm(image[0, 0].astype(float) - palette.COLOR_RGB[d["color"]]) < 30
               for d in found)   # at least one object is camouflaged


def test_perception_answers_follow_from_pixels(rows):
  det = ShapesDetector()
  for task in ("Color Recognition", "Color Extraction"):
    for r in _by_task(rows, task):
      shape = r["question"].rsplit(" ", 1)[1].rstrip("?")
      found = [d for d in det.detect(S.row_pixels(r)) if d["class"] == shape]
      assert len(found) == 1
      want = found[0]["color"] if task == "Color Recognition" else \
          "[" + ", ".join(map(str, palette.COLOR_RGB[found[0]["color"]])) + "]"
      assert _answer_text(r) == want
  for r in _by_task(rows, "Object Recognition"):
    color = _subject(r["question"], "Which shape is ", "?")
    assert [d["class"] for d in det.detect(S.row_pixels(r)) if d["color"] == color] == [
        _answer_text(r)]


def test_reasoning_answers_follow_from_pixels(rows):
  det = ShapesDetector()
  for r in _by_task(rows, "Color Proportion"):   # pixel counts decide the range
    image = S.row_pixels(r)
    color = _subject(r["question"], "image is ", "?")
    frac = np.all(image == palette.COLOR_RGB[color], -1).mean()
    assert T._proportion_label(frac) == _answer_text(r)
  for r in _by_task(rows, "Color Comparison"):
    found = det.detect(S.row_pixels(r))
    lum = {d["class"]: palette.luminance(palette.COLOR_RGB[d["color"]]) for d in found}
    pick = min if "darkest" in r["question"] else max
    assert pick(lum, key=lum.get) == _answer_text(r) and set(lum) == set(r["choices"])
  for r in _by_task(rows, "Color Illusion"):   # the object pixels' own values decide
    image = S.row_pixels(r)
    surround = {tuple(image[0, 0]), tuple(image[0, -1])}
    lums = []
    for half in (image[:, :16], image[:, 16:]):
      px = half.reshape(-1, 3)
      obj = px[[tuple(p) not in surround for p in px]]
      assert len(np.unique(obj, axis=0)) == 1
      lums.append(palette.luminance(obj[0]))
    want = ("They are the same" if lums[0] == lums[1] else
            "The left one" if lums[0] > lums[1] else "The right one")
    assert want == _answer_text(r)
  for r in _by_task(rows, "Color Blindness"):   # the figure dots draw the answer's shape
    image = S.row_pixels(r).astype(float)
    cell = 2
    centres = image[cell // 2::cell, cell // 2::cell][:16, :16]
    pairs = np.array(T.PLATE_PAIRS, float)  # [P, 2, 3]
    d = np.linalg.norm(centres[..., None, None, :] - pairs, axis=-1)  # [16, 16, P, 2]
    p = int(np.argmin(d.min(-1).sum((0, 1))))
    figure = d[..., p, 0] < d[..., p, 1]
    ious = {}
    for s in shapes.SHAPES:
      m = shapes.shape_mask(s, (16, 16), 0.62 * 32, 32, 32)[cell // 2::cell, cell // 2::cell]
      ious[s] = (m & figure).sum() / (m | figure).sum()
    assert max(ious, key=ious.get) == _answer_text(r) and ious[_answer_text(r)] == 1.0


def test_robustness_groups_recolour_the_right_regions(rows):
  det = ShapesDetector()
  groups = collections.defaultdict(list)
  for r in _by_task(rows, "Color Robustness"):
    groups[r["filename"].split(".")[0].split("_")[0]].append(r)
  assert len(groups) == SEEDS
  for members in groups.values():
    assert [m["variant"] for m in members] == ["original"] + [
        f"{reg}_hue{deg}" for reg in T.REGIONS for deg in T.HUE_SHIFTS]
    assert len({(m["question"], tuple(m["choices"]), m["answer"]) for m in members}) == 1
    shape = _subject(members[0]["question"], "How many ", " are")
    original = S.row_pixels(members[0])
    objects = det.detect(original)
    changed_sets = []
    for m in members:
      image = S.row_pixels(m)
      found = det.detect(image)
      assert sum(shapes.plural(d["class"]) == shape for d in found) == int(_answer_text(m))
      changed = {i for i, d in enumerate(objects)
                 if not np.array_equal(image[d["box"][1]:d["box"][3], d["box"][0]:d["box"][2]],
                                       original[d["box"][1]:d["box"][3], d["box"][0]:d["box"][2]])}
      changed_sets.append(changed)
    assert changed_sets[0] == set()
    assert all(changed_sets[k] == set(range(len(objects))) for k in (1, 2, 3))   # entire image
    assert all(len(changed_sets[k]) == 1 for k in range(4, 10))   # one segment each


def test_hue_rotation():
  px = np.array([[[255, 0, 0], [153, 153, 153], [0, 0, 255]]], np.uint8)
  np.testing.assert_array_equal(T.hue_rotate(px, 120)[0], [[0, 255, 0], [153, 153, 153],
                                                           [255, 0, 0]])
  np.testing.assert_array_equal(T.hue_rotate(px, 360), px)
  only = T.hue_rotate(px, 120, mask=np.array([[True, False, False]]))
  np.testing.assert_array_equal(only[0, 2], [0, 0, 255])


def test_run_model_and_evaluate(rows):
  answers = {(r["question"], r["image"]): r["answer"] for r in rows}
  from jaxmodels.shapes_world.render import encode_png

  def oracle(images, texts):
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3) and len(images) <= 7
    return [answers[(t, encode_png(img))] for img, t in zip(images, texts)]

  result = S.evaluate(oracle, rows, batch_size=7, text="question")
  assert result["overall"]["accuracy"] == 1.0 and result["robustness"]["accuracy"] == 1.0
  seen = []
  S.run_model(rows[:3], lambda im, t: seen.extend(t) or ["A"] * len(t), batch_size=2)
  assert seen == [colorbench.build_prompt(r) for r in rows[:3]]
  with pytest.raises(EvalInputError, match="replies"):
    S.run_model(rows[:3], lambda im, t: ["A"], batch_size=2)
  with pytest.raises(EvalInputError, match="text must be"):
    S.run_model(rows[:3], oracle, text="caption")


def test_match_option_reads_word_tokenizer_spacing():
  """A word-level tokenizer decodes "[30, 160, 50]" as "[ 30, 160, 50 ]" and "5% to 10%" as
  "5 % to 10 %": still the option; a reply that is no option stays unmatched."""
  bins = [b[2] for b in T.PROPORTION_BINS]
  assert S.match_option("[ 30, 160, 50 ]", ["[0, 0, 0]", "[30, 160, 50]"]) == "(B)"
  assert S.match_option("5 % to 10 %.", bins) == "(B)"
  assert S.match_option("10 % to", bins) is None and S.match_option(None, bins) is None
