"""evaluate.py's score-only mode on a GenEval-layout folder of clean ShapesWorld renders."""
import json

import pytest

import evaluate
from input_pipeline import shapes_world as sw
from jaxmodels.evals import EvalInputError, geneval


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("geneval")
  records = []
  for i in range(12):
    ex = sw.generate_example("test", i, num_examples=553, image_size=64)
    records.append(ex.record)
    geneval.write_prompt_images(root / "images", i, ex.record, [ex.rendering.image])
  (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return root


def test_score_only_clean_renders_are_all_correct(folder, tmp_path):
  scores = evaluate.score_only(str(folder / "images"), str(folder / "prompts.jsonl"), str(tmp_path),
                               allow_incomplete=False, images_per_prompt=1)
  assert scores["geneval"]["overall"] == 1.0
  assert (tmp_path / "results.jsonl").is_file() and (tmp_path / "summary_scores.txt").is_file()


def test_score_only_refuses_an_incomplete_folder(folder, tmp_path):
  records = (folder / "prompts.jsonl").read_text() * 2   # 24 prompts, only 12 folders
  (tmp_path / "more.jsonl").write_text(records)
  with pytest.raises(EvalInputError, match="missing|incomplete"):
    evaluate.score_only(str(folder / "images"), str(tmp_path / "more.jsonl"), str(tmp_path / "out"),
                        allow_incomplete=False, images_per_prompt=1)
