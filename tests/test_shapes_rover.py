"""ShapesWorld-ROVER: tasks from ShapesWorld edit pairs, exact IG / TG metrics on hand-built
outputs (the target itself, the unedited source, a misplaced or dropped object, a wrong reasoning
text, noise), records that `rover.summarize` reads, and the official gen_{id} layout."""
import numpy as np
import pytest

from jaxmodels.shapes_world import edits
from jaxmodels.shapes_world.render import decode_png, render_with_masks
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.evals import EvalInputError, rover
from jaxmodels.evals import shapes_rover as R
from jaxmodels.evals.detectors import ShapesDetector

DET = ShapesDetector()


@pytest.fixture(scope="module")
def tasks():
  return R.make_tasks(seed=0, num_ig=12, num_tg=8, image_size=32)


def _target(task, size=32):
  return render_with_masks(Scene.from_dict(task["target"]), size).image


def _oracle(tasks, text=True):
  table = {(t["prompt"], decode_png(t["image"]).tobytes()): t for c in tasks for t in tasks[c]}

  def edit_fn(images, prompts):
    picked = [table[(p, img.tobytes())] for img, p in zip(images, prompts)]
    texts = [(t["prompt"] + (f" Final answer: {t['answer']}" if "answer" in t else ""))
             if text else "" for t in picked]
    return np.stack([_target(t, images.shape[1]) for t in picked]), texts
  return edit_fn


def test_tasks_are_deterministic_edit_pairs(tasks):
  assert [t["kind"] for t in tasks["IG"]] == list(edits.EDIT_KINDS) * 3
  assert R.make_tasks(seed=0, num_ig=12, num_tg=8, image_size=32) == tasks
  for t in tasks["IG"] + tasks["TG"]:
    source = Scene.from_dict(t["source"])
    assert edits.apply_steps(source, t["steps"]) == Scene.from_dict(t["target"])
    np.testing.assert_array_equal(decode_png(t["image"]), render_with_masks(source, 32).image)
    assert rover.parse_task_id(t["id"]) == ("shapes", t["kind"])
  for t in tasks["TG"]:
    assert t["prompt"].endswith(t["question"]) and t["answer"]
    if t["question"] == "How many objects are there?":
      assert t["answer"] == str(len(t["target"]["objects"]))
  with pytest.raises(EvalInputError, match="unknown edit kind"):
    R.make_tasks(kinds=("rotate",))


def test_the_target_scores_full_marks_and_writes_the_layout(tasks, tmp_path):
  out = R.run(tasks, _oracle(tasks), out_dir=str(tmp_path), batch_size=5)
  assert out["IG"]["exact"] == {"RV": 100.0, "VC": 100.0, "RP": 100.0, "RA": 100.0, "IQ": 100.0}
  assert out["IG"]["overall"]["AVG"] == 100.0 and out["IG"]["leaderboard"]["value"] == 100.0
  assert set(out["IG"]["reasoning_types"]) == set(edits.EDIT_KINDS)
  assert out["TG"]["exact"] == {"accuracy": 100.0, "image": 100.0}
  for config in ("IG", "TG"):
    for t in tasks[config]:
      png, txt = rover.output_paths(tmp_path / config, t["id"])
      assert png.is_file() and txt.read_text().startswith(t["prompt"][:10])
    records = rover.read_records(tmp_path / config / "rover_metrics.jsonl")
    assert rover.summarize(records, config=config)["overall"] == out[config]["overall"]
  again = R.score_folder(tasks, str(tmp_path))
  assert again["IG"]["exact"] == out["IG"]["exact"] and again["records"] == out["records"]
  (tmp_path / "IG" / f"gen_{tasks['IG'][3]['id']}.png").unlink()
  with pytest.raises(EvalInputError, match=f"gen_{tasks['IG'][3]['id']}.png"):
    R.score_folder(tasks, str(tmp_path))


def test_no_edit_and_no_text(tasks):
  out = R.run(tasks, lambda images, prompts: (images, [""] * len(prompts)))
  ig = out["IG"]
  assert ig["exact"]["RV"] == 0.0 and ig["exact"]["VC"] == 100.0 and ig["exact"]["IQ"] == 100.0
  # No reasoning text: RP and RA are missing, never 0.
  assert ig["exact"]["RP"] is None and ig["exact"]["RA"] is None
  assert ig["missing"]["RP"] == ig["missing"]["RA"] == len(tasks["IG"])
  assert "RP" not in ig["overall"] and out["TG"]["exact"] == {"accuracy": 0.0, "image": 0.0}


def _spatial_and_untouched(tasks):
  for t in tasks["IG"]:
    if t["kind"] == "spatial" and len(t["source"]["objects"]) >= 2:
      return t
  raise AssertionError("no spatial task with an untouched object")


def test_misplaced_dropped_and_noisy_outputs(tasks):
  task = _spatial_and_untouched(tasks)
  good = R.score_ig(task, _target(task), task["prompt"], DET)
  assert good["reasoning_visual_exact"] == 1.0 and good["visual_consistency_exact"] == 1.0
  moved = task["steps"][0]["index"]
  # The moved object left where it was: the target state is not met.
  stay = Scene.from_dict(task["target"]).replace(moved, center=tuple(
      task["source"]["objects"][moved]["center"]))
  stayed = R.score_ig(task, render_with_masks(stay, 32).image, task["prompt"], DET)
  assert stayed["reasoning_visual_exact"] == 0.0 and stayed["reasoning_visual_score"] == 1
  # An untouched object dropped: content and consistency fall.
  keep = next(k for k in range(len(task["source"]["objects"])) if k != moved)
  dropped = Scene.from_dict(task["target"]).remove(keep)
  out = R.score_ig(task, render_with_masks(dropped, 32).image, task["prompt"], DET)
  untouched = len(task["source"]["objects"]) - 1
  assert out["reasoning_visual_exact"] == 0.0
  assert out["visual_consistency_exact"] == pytest.approx((untouched - 1) / untouched)
  # Noise and blur lower the detector confidence (IQ) below a clean render's 1.0.
  rng = np.random.default_rng(0)
  noisy = np.clip(_target(task).astype(float) + rng.normal(0, 60, (32, 32, 3)), 0, 255)
  assert R.score_ig(task, noisy.astype(np.uint8), "", DET)["image_quality_exact"] < 0.5
  assert R.score_ig(task, np.full((32, 32, 3), 153, np.uint8), "", DET)[
      "image_quality_exact"] == 0.0


def test_reasoning_text_metrics(tasks):
  task = next(t for t in tasks["IG"] if t["kind"] == "colour")
  new = task["steps"][0]["color"]
  image = _target(task)
  right = R.score_ig(task, image, task["prompt"], DET)
  assert right["reasoning_process_exact"] == 1.0 and right["reasoning_alignment_exact"] == 1.0
  wrong = R.score_ig(task, image, "I will make something else look nicer.", DET)
  assert wrong["reasoning_process_exact"] == 0.0 and wrong["reasoning_alignment_exact"] == 0.0
  half = R.score_ig(task, image, f"It becomes {new}.", DET)
  assert 0.0 < half["reasoning_process_exact"] < 1.0
  # Text names the edit but the image shows no change: they disagree.
  unchanged = R.score_ig(task, decode_png(task["image"]), task["prompt"], DET)
  assert unchanged["reasoning_alignment_exact"] == 0.0


def test_tg_answers_and_score_mapping(tasks):
  task = tasks["TG"][0]
  image = _target(task)
  assert R.tg_answer("I drew it. Final Answer: Left of.") == "left of"
  ok = R.score_tg(task, image, f"answer: {task['answer']}", DET)
  assert ok["reasoning_alignment_exact"] == 1.0 and ok["interleaved_reasoning_exact"] == 1.0
  bad = R.score_tg(task, decode_png(task["image"]), "answer: 42", DET)
  assert bad["reasoning_alignment_score"] == 1 and bad["interleaved_reasoning_score"] == 1
  assert [R.to_score(x) for x in (0.0, 0.3, 0.5, 1.0, None)] == [1, 2, 3, 5, None]
  summary = R.summarize([{"key": "shapes_colour_0", "result": {
      "reasoning_visual_score": 5, "reasoning_visual_exact": 1.0,
      "visual_consistency_score": 4, "visual_consistency_exact": 0.7}}])
  assert summary["overall"]["RV"] == 100.0 and summary["overall"]["VC"] == 75.0
  assert summary["exact"]["VC"] == pytest.approx(70.0)


def test_run_checks_edit_fn_output(tasks):
  with pytest.raises(EvalInputError, match="edit_fn returned"):
    R.run({"IG": tasks["IG"][:2]}, lambda images, prompts: (images[:1], [""]))


def test_unified_model_edit_adapter():
  """`shapes_eval.model_edit_fn` on a stand-in module: <bos> <image>×n instruction prompts (the
  instruction cut to text_len, never the placeholders), batches padded, uint8 images, no text."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from input_pipeline.shapes_tasks import to_unit_range
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels.evals import shapes_eval

  @dataclasses.dataclass(frozen=True)
  class Encoder:
    image_size: int = 16

  @dataclasses.dataclass(frozen=True)
  class Config:
    und_encoder: Encoder = Encoder()

  class Echo(nnx.Module):
    num_image_tokens = 3

    def __init__(self):
      self.config, self.und_encoder = Config(), True

    def generate_image(self, ids, mask, rng, *, num_steps, guidance, cond_images, image_guidance):
      # <bos>, 3 placeholders, the first text_len=4 words: every slot used, placeholders kept.
      ok = ((ids == tok.image_id).sum(1) == 3) & (ids[:, 0] == tok.bos_id) & (mask.sum(1) == 8)
      x = jax.image.resize(cond_images, (ids.shape[0], 24, 24, 3), "nearest")
      return jnp.where(ok[:, None, None, None], x, -1.0)

  tok = WordTokenizer.from_texts(["move the red circle left of the blue square"])
  edit = shapes_eval.model_edit_fn(Echo(), tok, rng=jax.random.key(0), num_steps=1,
                                    batch_size=2, text_len=4)
  sources = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  images, texts = edit(sources, ["move the red circle left of the blue square"] * 3)
  assert images.dtype == np.uint8 and images.shape == (3, 24, 24, 3) and texts == ["", "", ""]
  want = shapes_eval.to_uint8(jax.image.resize(
      np.stack([to_unit_range(s, 16) for s in sources]), (3, 24, 24, 3), "nearest"))
  np.testing.assert_array_equal(images, want)
