"""Tests of ShapesWorld: determinism, GenEval schema, positions, edits, renders, TFDS build.

The GenEval facts (templates, position rule, tag counts) are re-implemented here
from the GenEval rules (djghosh13/geneval), independently of the package's own code.
"""

import itertools
import json
import math
import os
import re
import time

import numpy as np
import pytest
from scipy import ndimage

from jaxmodels import shapes_world as sw
from jaxmodels.shapes_world import edits as edits_lib
from jaxmodels.shapes_world import generator as gen_lib
from jaxmodels.shapes_world import layout

from conftest import TEST_DATA  # noqa: E402

SIZE = 64
GENEVAL_COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                  "white"]
GENEVAL_TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
OFFICIAL = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
            "color_attr": 100}
RELS = ["left of", "right of", "above", "below"]
WORDS = {2: "two", 3: "three", 4: "four"}
OFFICIAL_FILE = TEST_DATA / "geneval" / "evaluation_metadata.jsonl"


# --- independent GenEval rules ------------------------------------------------------------------

def official_relations(box_a, box_b, thr=0.1):
  """GenEval relative_position (evals.md §1.7), written independently."""
  ca = np.array([(box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2], float)
  cb = np.array([(box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2], float)
  dims = np.array([box_a[2] - box_a[0] + box_b[2] - box_b[0],
                   box_a[3] - box_a[1] + box_b[3] - box_b[1]], float)
  off = ca - cb
  shrunk = np.sign(off) * np.maximum(np.abs(off) - thr * dims, 0)
  if np.all(np.abs(shrunk) < 1e-3):
    return set()
  dx, dy = shrunk / np.linalg.norm(off)
  out = set()
  if dx < -0.5: out.add("left of")
  if dx > 0.5: out.add("right of")
  if dy < -0.5: out.add("above")
  if dy > 0.5: out.add("below")
  return out


def art(word):
  return ("an " if word[0] in "aeiou" else "a ") + word


def plural(w):
  return w + "es" if re.search(r"(s|x|z|ch|sh)$", w) else w + "s"


def expected_prompt(rec):
  inc = rec["include"]
  noun = lambda c: (c["color"] + " " if "color" in c else "") + c["class"]
  tag = rec["tag"]
  if tag in ("single_object", "colors"):
    return "a photo of " + art(noun(inc[0]))
  if tag in ("two_object", "color_attr"):
    return f"a photo of {art(noun(inc[0]))} and {art(noun(inc[1]))}"
  if tag == "counting":
    return f"a photo of {WORDS[inc[0]['count']]} {plural(inc[0]['class'])}"
  return f"a photo of {art(noun(inc[1]))} {inc[1]['position'][0]} {art(noun(inc[0]))}"


def check_record_schema(rec):
  assert list(rec) == (["tag", "include", "exclude", "prompt"] if rec["tag"] == "counting"
                       else ["tag", "include", "prompt"])
  assert rec["tag"] in GENEVAL_TAGS
  inc = rec["include"]
  for c in inc:
    assert set(c) <= {"class", "count", "color", "position"}
    assert c["class"] in sw.SHAPES and isinstance(c["count"], int)
    if "color" in c:
      assert c["color"] in GENEVAL_COLORS
  tag = rec["tag"]
  n_inc = {"single_object": 1, "colors": 1, "counting": 1}.get(tag, 2)
  assert len(inc) == n_inc
  has_color = tag in ("colors", "color_attr")
  assert all(("color" in c) == has_color for c in inc)
  assert all("position" not in c for c in inc) or tag == "position"
  if tag == "counting":
    assert inc[0]["count"] in (2, 3, 4)
    assert rec["exclude"] == [{"class": inc[0]["class"], "count": inc[0]["count"] + 1}]
  else:
    assert all(c["count"] == 1 for c in inc)
  if tag == "position":
    assert "position" not in inc[0]
    assert inc[1]["position"][0] in RELS and inc[1]["position"][1] == 0
  if tag in ("two_object", "position", "color_attr"):
    assert inc[0]["class"] != inc[1]["class"]
  if tag == "color_attr":
    assert inc[0]["color"] != inc[1]["color"]
  assert rec["prompt"] == expected_prompt(rec)


def components(image, background):
  """Number of 8-connected components of non-background pixels."""
  fg = np.any(image != np.asarray(background, np.uint8), axis=-1)
  _, n = ndimage.label(fg, structure=np.ones((3, 3)))
  return n


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_split():
  """The full 553-example GenEval-proportioned test split (default resolution)."""
  return list(sw.generate_split("test", 553, image_size=SIZE))


@pytest.fixture(scope="module")
def train_sample():
  return [sw.generate_example("train", i, num_examples=2000, image_size=SIZE) for i in range(120)]


# --- palette, shapes, rendering ------------------------------------------------------------------

def test_palette_is_genevals_and_separated():
  assert list(sw.COLORS) == GENEVAL_COLORS
  rgbs = [np.array(sw.COLOR_RGB[c], float) for c in GENEVAL_COLORS]
  for a, b in itertools.combinations(rgbs + [np.array(sw.BACKGROUND_RGB, float)], 2):
    assert np.linalg.norm(a - b) >= 80
  rng = np.random.default_rng(0)
  for c in GENEVAL_COLORS:  # nearest-palette lookup tolerates +-25 noise per channel
    noisy = np.clip(np.array(sw.COLOR_RGB[c]) + rng.integers(-25, 26, size=(50, 3)), 0, 255)
    assert all(sw.nearest_color(v) == c for v in noisy)
  assert len(sw.SHAPES) == len(set(sw.SHAPES)) >= 5
  assert {"circle", "square", "triangle"} <= set(sw.SHAPES)


def test_render_exact_masks_boxes_and_components(test_split, train_sample):
  for ex in test_split[::5] + train_sample[::3]:
    r = sw.render_with_masks(ex.scene, SIZE)
    assert r.image.dtype == np.uint8 and r.image.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(r.image, ex.image)
    covered = np.zeros((SIZE, SIZE), bool)
    for k, obj in enumerate(ex.scene.objects):
      m = r.masks[k]
      assert m.sum() >= 16
      assert (r.image[m] == np.array(sw.COLOR_RGB[obj.color], np.uint8)).all()
      ys, xs = np.nonzero(m)
      assert list(r.boxes[k]) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      assert not (covered & m).any()
      covered |= m
      assert obj.size * SIZE >= 16  # documented minimum at 64 px
      x0, y0, x1, y1 = obj.extent()
      assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
    assert (r.image[~covered] == np.array(sw.BACKGROUND_RGB, np.uint8)).all()
    assert components(r.image, sw.BACKGROUND_RGB) == len(ex.scene.objects)
    # The edit target obeys the same rules.
    t = sw.render_with_masks(ex.target_scene, SIZE)
    assert components(t.image, sw.BACKGROUND_RGB) == len(ex.target_scene.objects)


def test_png_roundtrip_and_check_scene_rejects_bad_scenes():
  scene = sw.Scene((sw.SceneObject("star", "yellow", (0.5, 0.5), 0.4),))
  img = sw.render(scene, SIZE)
  assert (sw.decode_png(sw.encode_png(img)) == img).all()
  touching = sw.Scene((sw.SceneObject("square", "red", (0.3, 0.5), 0.3),
                       sw.SceneObject("square", "blue", (0.6, 0.5), 0.3)))
  with pytest.raises(sw.SceneError):
    sw.check_scene(touching, SIZE)
  outside = sw.Scene((sw.SceneObject("circle", "red", (0.05, 0.5), 0.3),))
  with pytest.raises(sw.SceneError):
    sw.check_scene(outside, SIZE)
  with pytest.raises(ValueError):
    sw.SceneObject("hexagon", "red", (0.5, 0.5), 0.3)


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_same_bytes_and_records():
  for split, i in [("train", 0), ("train", 37), ("validation", 5), ("test", 300)]:
    a = sw.to_features(sw.generate_example(split, i, num_examples=553, image_size=SIZE))
    b = sw.to_features(sw.generate_example(split, i, num_examples=553, image_size=SIZE))
    assert a["image"] == b["image"] and a["edit_image"] == b["edit_image"]
    for k in a:
      if isinstance(a[k], np.ndarray):
        np.testing.assert_array_equal(a[k], b[k])
      else:
        assert a[k] == b[k], k
  a = sw.generate_example("train", 3, num_examples=553, seed=0)
  c = sw.generate_example("train", 3, num_examples=553, seed=1)
  assert a.scene != c.scene


# --- GenEval schema, proportions, positions --------------------------------------------------------

def test_records_are_geneval_schema_and_match_scene(test_split, train_sample):
  for ex in test_split + train_sample:
    rec = ex.record
    check_record_schema(rec)
    objs = ex.scene.objects
    inc = rec["include"]
    if rec["tag"] == "counting":
      assert [o.shape for o in objs] == [inc[0]["class"]] * inc[0]["count"]
    else:
      assert [o.shape for o in objs] == [c["class"] for c in inc]
      for o, c in zip(objs, inc):
        assert o.color == c.get("color", o.color)
    assert json.loads(sw.to_features(ex)["metadata"]) == rec


def test_records_look_like_the_official_file(test_split):
  with open(OFFICIAL_FILE) as f:
    official = [json.loads(line) for line in f]
  counts = {t: sum(r["tag"] == t for r in official) for t in GENEVAL_TAGS}
  assert counts == OFFICIAL
  ours = {r["tag"]: r for r in (ex.record for ex in test_split)}
  for r in official:  # same key order and clause layout per tag
    assert list(r) == list(ours[r["tag"]])
    assert [sorted(c) for c in r["include"]] == [sorted(c) for c in ours[r["tag"]]["include"]]


def test_test_split_has_official_tag_proportions(test_split):
  tags = [ex.tag for ex in test_split]
  assert {t: tags.count(t) for t in GENEVAL_TAGS} == OFFICIAL
  assert tags == sorted(tags, key=GENEVAL_TAGS.index)  # grouped in GenEval's file order
  for n in (24, 100, 1000):
    counts = sw.tag_counts(n)
    assert sum(counts.values()) == n
    for t in GENEVAL_TAGS:
      assert abs(counts[t] - n * OFFICIAL[t] / 553) < 1
  counting = [ex.record["include"][0]["count"] for ex in test_split if ex.tag == "counting"]
  assert {n: counting.count(n) for n in (2, 3, 4)} == {2: 27, 3: 27, 4: 26}
  rels = [ex.record["include"][1]["position"][0] for ex in test_split if ex.tag == "position"]
  assert all(rels.count(r) == 25 for r in RELS)


def test_position_relations_true_under_official_rule(test_split, train_sample):
  n = 0
  for ex in test_split + train_sample:
    if ex.tag != "position":
      continue
    rel = ex.record["include"][1]["position"][0]
    boxes = sw.render_with_masks(ex.scene, SIZE).boxes  # scene order = include order
    assert official_relations(boxes[1], boxes[0]) == {rel}
    assert official_relations(boxes[0], boxes[1]) == {edits_lib.geneval.OPPOSITE[rel]}
    # Also true when rendered at other resolutions.
    for size in (128, 256):
      b = sw.render_with_masks(ex.scene, size).boxes
      assert rel in official_relations(b[1], b[0])
    n += 1
  assert n >= 100


def test_position_rule_matches_worked_example():
  assert official_relations((0, 0, 50, 50), (100, 0, 150, 50)) == {"left of"}
  for a, b in itertools.product([(0, 0, 10, 30), (5, 40, 25, 50), (30, 5, 60, 12)], repeat=2):
    assert sw.relative_position(a, b) == official_relations(a, b)


# --- Q/A -----------------------------------------------------------------------------------------

def test_qa_answers_are_correct(test_split, train_sample):
  kinds = set()
  for ex in test_split[::3] + train_sample:
    objs = ex.scene.objects
    boxes = ex.rendering.boxes
    for q in ex.qa:
      kinds.add(q.get("task", q["kind"]))
      text, ans = q["question"], q["answer"]
      if q["kind"] == "color":
        shape = re.fullmatch(r"What color is the (\w+)\?", text).group(1)
        (o,) = [o for o in objs if o.shape == shape]
        assert ans == o.color
      elif q["kind"] == "shape":
        color = re.fullmatch(r"What shape is the (\w+) object\?", text).group(1)
        (o,) = [o for o in objs if o.color == color]
        assert ans == o.shape
      elif q["kind"] == "count":
        m = re.fullmatch(r"How many (\w+) are there\?", text).group(1)
        want = len(objs) if m == "objects" else sum(plural(o.shape) == m for o in objs)
        assert ans == str(want)
      elif q["kind"] == "position":
        m = re.fullmatch(r"(?:Where is|Is) the (.+?) (?:relative to|left of|right of|above|below) "
                         r"the (.+?)\?", text)
        ia, ib = (resolve(ex.scene, m.group(g)) for g in (1, 2))
        rels = official_relations(boxes[ia], boxes[ib])
        if text.startswith("Where"):
          assert rels == {ans}
        else:
          asked = re.search(r"(left of|right of|above|below)", text).group(1)
          assert ans == ("yes" if asked in rels else "no")
      else:
        assert q["kind"] == "colorbench"
        assert 3 <= len(q["choices"]) <= 6 and q["choices"].count(ans) == 1
        letter = "ABCDEF"[q["choices"].index(ans)]
        assert q["answer_letter"] == f"({letter})"
        assert f"({letter}) {ans}" in q["prompt"].splitlines()
        assert "Select from the following choices." in q["prompt"]
        if q["task"] == "object_counting":
          color = re.search(r"How many (\w+) objects", text).group(1)
          assert ans == str(sum(o.color == color for o in objs))
        if q["task"] == "color_counting":
          assert ans == str(len({o.color for o in objs}))
        if q["task"] == "color_extraction":
          shape = re.search(r"RGB value of the (\w+)\?", text).group(1)
          (o,) = [o for o in objs if o.shape == shape]
          assert json.loads(ans) == list(sw.COLOR_RGB[o.color])
  assert {"color", "shape", "count", "position"} <= kinds
  assert set(sw.COLORBENCH_TASKS) <= kinds


def resolve(scene, phrase):
  """Index of the single object a referring phrase names."""
  hits = [k for k, o in enumerate(scene.objects)
          if phrase in (o.shape, f"{o.color} object", f"{o.color} {o.shape}")
          and (phrase != o.shape or scene.count(shape=o.shape) == 1)
          and (phrase != f"{o.color} object" or scene.count(color=o.color) == 1)]
  assert len(hits) == 1, (phrase, scene)
  return hits[0]


# --- edits ---------------------------------------------------------------------------------------

SENTENCES = [
    ("recolor", r"change the color of the (?P<ref>.+) to (?P<color>\w+)"),
    ("move_rel", r"move the (?P<ref>.+) so that it is (?P<rel>left of|right of|above|below) "
                 r"the (?P<ref2>.+)"),
    ("move_region", r"move the (?P<ref>.+) to the (?P<region>left|right|top|bottom) half of the image"),
    ("add", r"add (?:an?) (?P<color>\w+) (?P<shape>\w+)"),
    ("add_more", r"add one more (?P<shape>\w+)"),
    ("remove", r"remove the (?P<ref>.+)"),
]


def check_sentence(sentence, src, tgt):
  """Checks that tgt is src edited as `sentence` says; returns the op name."""
  for op, pattern in SENTENCES:
    m = re.fullmatch(pattern, sentence)
    if m:
      break
  else:
    raise AssertionError(f"unparsed instruction {sentence!r}")
  so, to = src.objects, tgt.objects
  if op in ("recolor", "move_rel", "move_region"):
    k = resolve(src, m.group("ref"))
    assert len(so) == len(to)
    changed = [i for i in range(len(so)) if so[i] != to[i]]
    assert changed == [k]
    a, b = so[k], to[k]
    if op == "recolor":
      assert b.color == m.group("color") != a.color
      assert (b.shape, b.center, b.size) == (a.shape, a.center, a.size)
    else:
      assert (b.shape, b.color, b.size) == (a.shape, a.color, a.size) and b.center != a.center
      if op == "move_rel":
        j = resolve(src, m.group("ref2"))
        before = sw.render_with_masks(src, SIZE).boxes
        after = sw.render_with_masks(tgt, SIZE).boxes
        assert m.group("rel") not in official_relations(before[k], before[j])
        assert official_relations(after[k], after[j]) == {m.group("rel")}
      else:
        x0, y0, x1, y1 = b.extent()
        ok = {"left": x1 <= 0.5, "right": x0 >= 0.5, "top": y1 <= 0.5, "bottom": y0 >= 0.5}
        assert ok[m.group("region")]
  elif op in ("add", "add_more"):
    assert len(to) == len(so) + 1 and to[:-1] == so
    assert to[-1].shape == m.group("shape")
    if op == "add":
      assert to[-1].color == m.group("color")
    else:
      assert src.count(shape=to[-1].shape) >= 1
  else:
    k = resolve(src, m.group("ref"))
    assert list(to) == list(so[:k] + so[k + 1:])
  sw.check_scene(tgt, SIZE, layout.MIN_SIZE)
  return op


def test_edit_pairs_match_their_instruction(test_split, train_sample):
  kinds = {}
  for ex in test_split + train_sample:
    e = ex.edit
    src, tgt = ex.scene, ex.target_scene
    assert e["kind"] in ("spatial", "quantitative", "colour", "sequence")
    assert sw.apply_steps(src, e["steps"]) == tgt
    text = e["instruction"]
    if e["kind"] == "sequence":
      m = re.fullmatch(r"First (.+), then (.+)\.", text)
      assert m and len(e["steps"]) == 2
      mid = sw.apply_steps(src, e["steps"][:1])
      ops = [check_sentence(m.group(1), src, mid), check_sentence(m.group(2), mid, tgt)]
    else:
      assert len(e["steps"]) == 1 and text.endswith(".")
      ops = [check_sentence(text[0].lower() + text[1:-1], src, tgt)]
      want = {"colour": {"recolor"}, "spatial": {"move_rel", "move_region"},
              "quantitative": {"add", "add_more", "remove"}}[e["kind"]]
      assert ops[0] in want
      if e["kind"] == "quantitative":
        assert abs(len(tgt.objects) - len(src.objects)) == 1
    kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
  assert all(kinds.get(k, 0) >= 20 for k in ("spatial", "quantitative", "colour", "sequence"))


# --- splits and the TFDS build ---------------------------------------------------------------------

def test_splits_use_disjoint_seeds_and_scenes():
  sizes = {"test": 60, "validation": 40, "train": 150}
  sigs, pngs, taken = {}, {}, set()
  for split in ("test", "validation", "train"):
    exs = list(sw.generate_split(split, sizes[split], image_size=SIZE, exclude=taken))
    sigs[split] = {ex.signature() for ex in exs}
    pngs[split] = {ex.image.tobytes() for ex in exs}
    assert len(sigs[split]) == sizes[split]
    taken |= sigs[split]
  for a, b in itertools.combinations(sizes, 2):
    assert not sigs[a] & sigs[b] and not pngs[a] & pngs[b]
  # Forced collision: excluding a scene makes the generator skip to another attempt.
  first = sw.generate_example("train", 0, num_examples=150)
  again = next(iter(sw.generate_split("train", 150, exclude={first.signature()})))
  assert again.signature() != first.signature() and again.attempt > first.attempt
  assert len({gen_lib.SPLIT_CODES[s] for s in sizes}) == 3


def test_tfds_build_and_reuse(tmp_path, monkeypatch):
  import grain

  t0 = time.time()
  src = sw.load_split(str(tmp_path), "train", config="tiny")
  build_s = time.time() - t0
  assert build_s < 30
  cfg = sw.ShapesWorld.builder_configs["tiny"]
  files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
  mtimes = {p: p.stat().st_mtime_ns for p in files}
  assert any("array_record" in p.name for p in files)

  def no_rebuild(*a, **k):
    raise AssertionError("rebuilt")

  monkeypatch.setattr(sw.ShapesWorld, "_generate_examples", no_rebuild)
  monkeypatch.setattr(gen_lib, "generate_example", no_rebuild)
  splits = {s: sw.load_split(str(tmp_path), s, config="tiny") for s in ("train", "validation", "test")}
  assert {p: p.stat().st_mtime_ns for p in files} == mtimes
  assert {s: len(v) for s, v in splits.items()} == {
      "train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
  assert len(src) == cfg.num_train

  raw = splits["test"][0]
  assert isinstance(raw["image"], bytes) and raw["boxes"].dtype == np.int32
  sigs = {s: {bytes(v[i]["signature"]) for i in range(len(v))} for s, v in splits.items()}
  for a, b in itertools.combinations(sigs, 2):
    assert not sigs[a] & sigs[b]
  for s in ("test", "validation"):
    assert [int(splits[s][i]["index"]) for i in range(len(splits[s]))] == list(range(len(splits[s])))
  test_tags = [bytes(splits["test"][i]["tag"]).decode() for i in range(cfg.num_test)]
  assert {t: test_tags.count(t) for t in GENEVAL_TAGS} == sw.tag_counts(cfg.num_test)

  ds = grain.MapDataset.source(sw.load_split(str(tmp_path), "test", config="tiny", decode=True))
  ex = ds[5]
  assert ex["image"].shape == (cfg.image_size, cfg.image_size, 3) and ex["image"].dtype == np.uint8
  check_record_schema(ex["metadata"])
  assert ex["prompt"] == ex["metadata"]["prompt"] and ex["tag"] == ex["metadata"]["tag"]
  scene = sw.Scene.from_dict(ex["scene"])
  np.testing.assert_array_equal(ex["image"], sw.render(scene, cfg.image_size))
  np.testing.assert_array_equal(ex["boxes"], sw.render_with_masks(scene, cfg.image_size).boxes)
  np.testing.assert_array_equal(
      ex["edit_image"], sw.render(sw.Scene.from_dict(ex["edit"]["target"]), cfg.image_size))
  assert list(ex["shapes"]) == [sw.SHAPES.index(o.shape) for o in scene.objects]
  assert list(ex["colors"]) == [sw.COLORS.index(o.color) for o in scene.objects]
  with pytest.raises(Exception):
    sw.load_split(str(tmp_path), "dev", config="tiny")
  with pytest.raises(Exception):
    sw.load_split(str(tmp_path), "train", config="huge")


def test_lazy_records_equal_the_decoded_ones(tmp_path):
  # load_split(decode="lazy"): the same keys and values as decode=True, each field decoded when first
  # read (the training tasks read four of the 19); picklable for Grain workers.
  import pickle
  cfg = sw.make_config(image_size=32, num_train=4, num_validation=3, num_test=6)
  eager = sw.load_split(str(tmp_path), "test", config=cfg, decode=True)
  lazy = pickle.loads(pickle.dumps(sw.load_split(str(tmp_path), "test", config=cfg, decode="lazy")))
  assert len(lazy) == len(eager) == 6
  first = lazy[2]
  assert first["prompt"] == eager[2]["prompt"] and "decoded=['prompt']" in repr(first)
  for i in range(len(eager)):
    a, b = eager[i], lazy[i]
    assert list(b) == list(a) and len(b) == len(a)
    for key, value in a.items():
      got = b[key]
      assert type(got) is type(value), key
      if isinstance(value, np.ndarray):
        assert got.dtype == value.dtype, key
        np.testing.assert_array_equal(got, value, err_msg=key)
      else:
        assert got == value, key
  with pytest.raises(KeyError):
    lazy[0]["no_such_field"]
  with pytest.raises(Exception, match="decode='yes'"):
    sw.load_split(str(tmp_path), "test", config=cfg, decode="yes")


def test_visible_masks_are_the_renderings_masks():
  # Overlapping hand-made objects (generated scenes never overlap): later objects cover earlier ones.
  scene = sw.Scene((sw.SceneObject("square", "red", (0.4, 0.4), 0.4),
                    sw.SceneObject("circle", "blue", (0.55, 0.55), 0.4),
                    sw.SceneObject("star", "green", (0.5, 0.45), 0.3)))
  masks = sw.visible_masks(scene, 32)
  np.testing.assert_array_equal(masks, sw.render_with_masks(scene, 32).masks)
  assert masks.shape == (3, 32, 32) and not (masks.sum(0) > 1).any() and masks[0].any()


def test_custom_config_at_32px(tmp_path):
  cfg = sw.make_config(image_size=32, num_train=6, num_validation=3, num_test=6)
  src = sw.load_split(str(tmp_path), "test", config=cfg, decode=True)
  assert len(src) == 6
  for i in range(len(src)):
    ex = src[i]
    assert ex["image"].shape == (32, 32, 3)
    scene = sw.Scene.from_dict(ex["scene"])
    assert components(ex["image"], sw.BACKGROUND_RGB) == len(scene.objects)
  assert math.isclose(layout.MIN_SIZE * 32, 8.0)
