"""ShapesWorld as training elements: fixed shapes, understanding masks, and the edit mixture."""
import collections

import numpy as np
import pytest

from jaxmodels import shapes_world as sw
from input_pipeline.shapes_tasks import ShapesTaskSource, edit_prompt, shapes_tokenizer, to_unit_range


@pytest.fixture(scope="module")
def scenes(data_dir):
  return sw.load_split(data_dir, "train", "tiny", decode=True)


@pytest.fixture(scope="module")
def tok(scenes):
  return shapes_tokenizer([scenes[i] for i in range(len(scenes))])


def test_elements_have_fixed_shapes_and_answer_masks(scenes, tok):
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=40, gen_len=16, und_image_size=16,
                         gen_image_size=32)
  assert len(src) == 4 * len(scenes)
  for i in (0, 5, len(src) - 1):
    ex = src[i]
    assert ex["und_image"].shape == (16, 16, 3) and ex["gen_image"].shape == (32, 32, 3)
    assert "gen_cond_image" not in ex                       # no edits: the t2i-only key set
    ids, loss = ex["und_ids"], ex["und_loss_mask"]
    assert (ids[1:5] == tok.image_id).all() and ids[0] == tok.bos_id
    first = int(np.argmax(loss))
    assert loss[first:].sum() == ex["und_mask"][first:].sum() > 0   # answer + <eos>, then padding
    question, answer = tok.decode(ids[5:first]), tok.decode(ids[first:][loss[first:] > 0][:-1])
    scene = scenes[i % len(scenes)]
    qa = {tok.decode(tok.encode(q["question"])): str(q["answer"]) for q in scene["qa"]}
    assert answer == tok.decode(tok.encode(qa[question]))


def test_edit_mixture_elements_follow_their_instruction(scenes, tok):
  n_img = 4
  src = ShapesTaskSource(scenes, tok, num_image_tokens=n_img, gen_len=40, und_image_size=16,
                         gen_image_size=64, edit_fraction=0.3)
  flags = [src.is_edit(i) for i in range(len(src))]
  assert 0.2 < np.mean(flags) < 0.4
  for i in range(len(src)):
    ex, scene = src[i], scenes[i % len(scenes)]
    assert ex["gen_cond_image"].shape == (16, 16, 3) and ex["gen_ids"].shape == (40,)
    ids = ex["gen_ids"][ex["gen_mask"] > 0]
    if flags[i]:
      assert list(ids) == edit_prompt(tok, scene["edit_instruction"], n_img)
      np.testing.assert_array_equal(ex["gen_image"], to_unit_range(scene["edit_image"], 64))
      np.testing.assert_array_equal(ex["gen_cond_image"], to_unit_range(scene["image"], 16))
    else:
      assert tok.image_id not in ids and (ex["gen_cond_image"] == -1).all()
      assert tok.decode(ids[1:]) == tok.decode(tok.encode(scene["prompt"]))
      np.testing.assert_array_equal(ex["gen_image"], to_unit_range(scene["image"], 64))


def test_edit_prompt_longer_than_gen_len_is_an_error(scenes, tok):
  src = ShapesTaskSource(scenes, tok, num_image_tokens=16, gen_len=16, edit_fraction=1.0)
  with pytest.raises(ValueError, match="data.gen_len"):
    src[0]
  with pytest.raises(ValueError, match="edit_fraction"):
    ShapesTaskSource(scenes, tok, num_image_tokens=16, edit_fraction=1.5)
  # long_edits="text_to_image": an edit that does not fit is its scene's caption pair instead
  fits = ShapesTaskSource(scenes, tok, num_image_tokens=4, gen_len=16, edit_fraction=1.0,
                          long_edits="text_to_image")
  kinds = set()
  for i in range(len(scenes)):
    ex, scene = fits[i], scenes[i]
    ids = list(ex["gen_ids"][ex["gen_mask"] > 0])
    if ids == edit_prompt(tok, scene["edit_instruction"], 4):
      kinds.add("edit")
      np.testing.assert_array_equal(ex["gen_image"], to_unit_range(scene["edit_image"], 32))
    else:
      kinds.add("caption")
      assert len(edit_prompt(tok, scene["edit_instruction"], 4)) > 16 and tok.image_id not in ids
      assert (ex["gen_cond_image"] == -1).all()
  assert kinds == {"edit", "caption"}


def test_every_question_kind_is_asked_evenly(scenes, tok):
  """Regression: the first questions of each scene (colour/shape) must not crowd out count/position."""
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=48, questions_per_scene=4)
  kinds = collections.Counter()
  for i in range(len(src)):
    ids, loss = src[i]["und_ids"], src[i]["und_loss_mask"]
    question = tok.decode(ids[5:int(np.argmax(loss))])
    scene = scenes[i % len(scenes)]
    kinds[next(q["kind"] for q in scene["qa"] if tok.decode(tok.encode(q["question"])) == question)] += 1
  assert set(kinds) == {"color", "shape", "count", "position"}
  assert min(kinds.values()) > 0.1 * len(src), kinds


def test_multi_turn_sequences_supervise_every_answer(scenes, tok):
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=64, questions_per_scene=2, turns=3)
  for i in (0, 7, len(src) - 1):
    ex, scene = src[i], scenes[i % len(scenes)]
    ids, loss, mask = ex["und_ids"], ex["und_loss_mask"], ex["und_mask"]
    qa = {tok.decode(tok.encode(q["question"])): tok.decode(tok.encode(str(q["answer"]))) for q in scene["qa"]}
    # split after the image into turns at each <eos>: question tokens (loss 0), then answer + <eos> (loss 1)
    turns, start = [], 5
    for j in range(5, int(mask.sum())):
      if ids[j] == tok.eos_id:
        turns.append((ids[start:j + 1], loss[start:j + 1]))
        start = j + 1
    assert 1 <= len(turns) <= 3 and start == mask.sum()
    questions = []
    for t_ids, t_loss in turns:
      first = int(np.argmax(t_loss))
      assert t_loss[first:].all() and not t_loss[:first].any()
      question = tok.decode(t_ids[:first])
      assert tok.decode(t_ids[first:-1]) == qa[question]
      questions.append(question)
    assert len(set(questions)) == len(questions)
  assert max(int(src[i]["und_mask"].sum()) for i in range(len(src))) <= 64


def test_dense_labels_name_the_object_covering_each_cell(scenes, tok):
  from input_pipeline.shapes_tasks import dense_labels
  from jaxmodels.shapes_world import palette, shapes
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=40, und_image_size=32, dense_grid=8)
  for i in range(6):
    scene = scenes[i]
    labels = src[i]["und_labels"]
    assert labels.shape == (8, 8, 2) and labels.dtype == np.int32
    # every object owns at least one cell, and the cells name only the scene's (shape, colour) pairs
    pairs = {(1 + shapes.shape_id(o["shape"]), 1 + palette.color_id(o["color"]))
             for o in scene["scene"]["objects"]}
    found = {tuple(v) for v in labels.reshape(-1, 2) if v.any()}
    assert found == pairs
    # a cell is background exactly when the 32-px render shows only background there
    image = sw.render(sw.Scene.from_dict(scene["scene"]), 32)
    background = (image == np.asarray(scene["scene"]["background"], np.uint8)).all(-1)
    empty = background.reshape(8, 4, 8, 4).all((1, 3))
    np.testing.assert_array_equal(labels[..., 0] == 0, empty)
    np.testing.assert_array_equal(labels[..., 1] == 0, empty)
  with pytest.raises(ValueError, match="not a multiple of the grid"):
    dense_labels(scenes[0]["scene"], 32, 5)
  assert "und_labels" not in ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=40)[0]


def test_leak_free_turns_never_answer_from_the_conversation(scenes, tok):
  kw = dict(num_image_tokens=4, und_len=80, turns=4)
  leaky, free = ShapesTaskSource(scenes, tok, **kw), ShapesTaskSource(scenes, tok, leak_free=True, **kw)
  leaks = 0
  for src in (leaky, free):
    found = 0
    for i in range(len(scenes)):
      ex = src[i]
      text = tok.decode(list(ex["und_ids"][5:int(ex["und_mask"].sum())]))
      turns = [t.strip() for t in text.split("<eos>") if t.strip()]
      positions = 0
      for k, turn in enumerate(turns):
        question, answer = turn.split("?")
        before = " " + " ".join(turns[:k]).replace("?", " ") + " "
        found += f" {answer.strip()} " in before
        positions += question.startswith(("where is", "is the"))
      found += positions > 1
    leaks = leaks or found
    if src is free:
      assert found == 0
  assert leaks > 0        # without the rule, answers do repeat earlier turns (the rule has work to do)


def test_question_first_turns_show_the_image_after_each_question(scenes, tok):
  from input_pipeline.shapes_tasks import und_prompt
  kw = dict(num_image_tokens=4, und_len=80, turns=3)
  image_first = ShapesTaskSource(scenes, tok, **kw)
  question_first = ShapesTaskSource(scenes, tok, layout="question_first", **kw)
  img = tok.image_id
  for i in (0, 3, len(scenes) - 1):
    a, b = image_first[i], question_first[i]
    ids, loss = b["und_ids"][:int(b["und_mask"].sum())], b["und_loss_mask"]
    turns = tok.decode([t for t in ids[1:] if t != img]).split("<eos>")
    # the same questions and answers, each question followed by the image's n placeholders
    assert tok.decode([t for t in a["und_ids"][1:int(a["und_mask"].sum())] if t != img]).split("<eos>") == turns
    n_turns = len([t for t in turns if t.strip()])
    assert (ids == img).sum() == 4 * n_turns
    for j in np.flatnonzero(np.diff(np.r_[0, (ids == img).astype(int)]) == -1):   # first token after a run
      assert loss[j - 1] == 0 and loss[j] == 1        # the answer follows the image directly
    assert loss.sum() == a["und_loss_mask"].sum()
  q = "what color is the circle?"
  assert und_prompt(tok, q, 2, "question_first") == [tok.bos_id] + tok.encode(q) + [img, img]
  assert und_prompt(tok, q, 2) == [tok.bos_id, img, img] + tok.encode(q)
  with pytest.raises(ValueError, match="und_layout='sideways'"):
    ShapesTaskSource(scenes, tok, layout="sideways", **kw)


def test_a_decoded_split_iterates_like_a_list(scenes):
  rows = list(scenes)                        # stops at the end (IndexError), not a ValueError
  assert len(rows) == len(scenes) == 48
  assert rows[-1]["metadata"] == scenes[-1]["metadata"] == scenes[len(scenes) - 1]["metadata"]
  with pytest.raises(IndexError, match="out of range"):
    scenes[len(scenes)]


def _scene(*objs):
  from jaxmodels.shapes_world.scene import Scene, SceneObject
  return Scene(tuple(SceneObject(s, c, xy, 0.25) for s, c, xy in objs))


def test_reasoning_questions_follow_from_the_scene():
  """Darkest / lightest by Rec. 601 luma (black 15, blue ~59, yellow ~218 here), asked only when the
  answer's shape is unique and its luma 20 apart from every other; "which <shape> is lighter" only for
  a shape drawn twice side by side."""
  from jaxmodels.shapes_world.qa import reasoning_questions
  qs = {q["question"]: q["answer"] for q in reasoning_questions(
      _scene(("circle", "black", (0.2, 0.3)), ("star", "yellow", (0.7, 0.3)),
             ("square", "blue", (0.25, 0.75)), ("square", "white", (0.75, 0.75))))}
  assert qs == {"Which shape has the darkest color?": "circle",       # lightest: white's square is not unique
                "Which square is lighter in color?": "The right one",
                **{f"How many {c} objects are there?": "1" for c in ("black", "yellow", "blue", "white")}}
  qs = {q["question"]: q["answer"] for q in reasoning_questions(
      _scene(("cross", "red", (0.2, 0.5)), ("cross", "red", (0.8, 0.5))))}
  assert qs == {"Which cross is lighter in color?": "They are the same", "How many red objects are there?": "2"}
  # the same shape twice, one above the other: no left / right answer
  stacked = reasoning_questions(_scene(("cross", "red", (0.5, 0.2)), ("cross", "blue", (0.55, 0.8))))
  assert [q["question"] for q in stacked] == ["How many red objects are there?", "How many blue objects are there?"]
  assert [q["question"] for q in reasoning_questions(_scene(("star", "green", (0.5, 0.5))))] == \
      ["How many green objects are there?"]              # one object: nothing to compare


def test_colorbench_kind_asks_open_colour_questions(scenes, tok):
  """data.qa_kinds with "colorbench": the stored multiple-choice items are asked as bare questions with
  the choice text as the answer (as ShapesWorld-ColorBench asks them), plus the scene's reasoning
  questions; every answer's words are in the tokenizer's vocabulary."""
  from input_pipeline.shapes_tasks import open_questions, scene_questions
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=48,
                         qa_kinds=("color", "shape", "count", "position", "colorbench"))
  asked = collections.Counter()
  for i in range(len(src)):
    ex = src[i]
    ids, loss = ex["und_ids"], ex["und_loss_mask"]
    question = tok.decode(ids[5:int(np.argmax(loss))])
    answer = tok.decode(ids[ids > 0][np.asarray(loss[ids > 0], bool)][:-1])
    items = open_questions(scene_questions(scenes[i % len(scenes)], ("colorbench",)), ("colorbench",))
    match = [q for q in items if tok.decode(tok.encode(q["question"])) == question]
    if match:
      asked["colorbench"] += 1
      assert answer == tok.decode(tok.encode(match[0]["answer"]))
      assert tok.unk_id not in tok.encode(match[0]["answer"])
  assert asked["colorbench"] > 0.1 * len(src), asked
  with pytest.raises(ValueError, match="data.qa_kinds"):
    ShapesTaskSource(scenes, tok, num_image_tokens=4, qa_kinds=("color", "colour"))


def test_colorbench_images_replace_a_fraction_of_the_understanding_rows(scenes, tok):
  """data.und_colorbench = q: a fraction q of the rows ask one ColorBench-style task about an image made
  for it (not the scene's render), in the run's layout, answered in the vocabulary's words, with no
  dense labels; the rest are the scene rows, unchanged."""
  from jaxmodels.shapes_world import colorbench_tasks
  kw = dict(num_image_tokens=4, und_len=48, layout="question_first", dense_grid=8, turns=2)
  plain = ShapesTaskSource(scenes, tok, **kw)
  mixed = ShapesTaskSource(scenes, tok, colorbench_images=0.25, **kw)
  n = min(len(mixed), 200)
  replaced = 0
  for i in range(n):
    a, b = plain[i], mixed[i]
    if (a["und_ids"] == b["und_ids"]).all():
      np.testing.assert_array_equal(a["und_image"], b["und_image"])
      np.testing.assert_array_equal(a["und_labels"], b["und_labels"])
      continue
    replaced += 1
    ids, loss = b["und_ids"], b["und_loss_mask"].astype(bool)
    first_answer = int(np.argmax(loss))
    assert (ids[first_answer - 4:first_answer] == tok.image_id).all()      # question, image, answer
    assert tok.unk_id not in ids[b["und_mask"] > 0]
    assert (b["und_labels"] == -1).all()
    assert not np.array_equal(a["und_image"], b["und_image"])
    answer = tok.decode(ids[loss][:-1])
    assert answer
  assert 0.15 * n < replaced < 0.35 * n, replaced
  for text in colorbench_tasks.TEXTS:
    assert tok.unk_id not in tok.encode(text), text
  with pytest.raises(ValueError, match="und_colorbench"):
    ShapesTaskSource(scenes, tok, colorbench_images=1.5, **kw)


def test_dense_loss_leaves_out_negative_labels():
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jaxmodels.unified.dense_head import DenseLabelHead
  head = DenseLabelHead(8, (3,), rngs=nnx.Rngs(0))
  tokens = jax.random.normal(jax.random.key(0), (2, 4, 8))
  labels = jnp.asarray([[[1], [2], [0], [1]], [[-1], [-1], [-1], [-1]]]).reshape(2, 2, 2, 1)
  loss, m = head.loss(tokens, labels)
  alone, m1 = head.loss(tokens[:1], labels[:1])
  np.testing.assert_allclose(float(loss), float(alone), rtol=1e-6)
  np.testing.assert_allclose(float(m["und_dense_acc_0"]), float(m1["und_dense_acc_0"]), rtol=1e-6)


def test_instruction_first_edits_put_the_source_after_the_instruction(scenes, tok):
  """data.edit_layout="instruction_first": <bos> instruction <image>×n, the same tokens as image_first
  in the other order; an unknown layout is an error naming the key."""
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, gen_len=40, und_image_size=16, gen_image_size=32,
                         edit_fraction=1.0, edit_layout="instruction_first")
  ex, scene = src[0], scenes[0]
  ids = list(ex["gen_ids"][ex["gen_mask"] > 0])
  text = tok.encode(scene["edit_instruction"])
  assert ids == [tok.bos_id] + text + [tok.image_id] * 4
  assert sorted(ids) == sorted(edit_prompt(tok, scene["edit_instruction"], 4))
  with pytest.raises(ValueError, match="data.edit_layout='image_last'"):
    ShapesTaskSource(scenes, tok, num_image_tokens=4, edit_layout="image_last")
