"""evaluate.py's score-only mode on a GenEval-layout folder of clean ShapesWorld renders."""
import json

import pytest

import evaluate
from jaxmodels import shapes_world as sw
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


# --------------------------------------------------------------------------- ColorBench / ROVER

@pytest.fixture(scope="module")
def colorbench_parquet(tmp_path_factory):
  import pyarrow as pa
  import pyarrow.parquet as pq
  from jaxmodels.evals import shapes_colorbench
  rows = shapes_colorbench.make_rows(per_task=2, robustness_seeds=2)
  path = tmp_path_factory.mktemp("cb") / "test-00000-of-00001.parquet"
  fields = ("idx", "id", "type", "task", "filename", "image", "prompt", "question", "choices",
            "answer")
  pq.write_table(pa.Table.from_pylist([{k: r[k] for k in fields} for r in rows]), path)
  return path, rows


def test_score_only_colorbench_parquet_and_official_result_file(colorbench_parquet, tmp_path):
  path, rows = colorbench_parquet
  preds = tmp_path / "preds.json"
  preds.write_text(json.dumps({str(r["idx"]): r["answer"] for r in rows}))
  scores = evaluate.score_only(None, None, str(tmp_path), colorbench_data=str(path),
                               colorbench_predictions=str(preds))
  assert scores["colorbench"]["Overall Acc"] == 1.0 and scores["colorbench"]["Color Robustness"] == 1.0
  official = tmp_path / "model.json"   # the official inference output: idx -> row + model_ans
  official.write_text(json.dumps({str(r["idx"]): {"idx": r["idx"], "model_ans": "(Z)"}
                                  for r in rows}))
  scores = evaluate.score_only(None, None, str(tmp_path), colorbench_data=str(path),
                               colorbench_predictions=str(official))
  assert scores["colorbench"]["Overall Acc"] == 0.0
  evaluate.write_outputs(str(tmp_path), scores)
  assert "| Overall Acc | 0 |" in (tmp_path / "scores.md").read_text()
  assert (tmp_path / "colorbench.png").is_file() and (tmp_path / "results.json").is_file()


def test_score_only_rover_folders(tmp_path):
  from jaxmodels.evals import shapes_rover
  tasks = shapes_rover.make_tasks(num_ig=4, num_tg=4)
  shapes_rover.run(tasks, lambda images, prompts: (images, ["Change it."] * len(prompts)),
                   out_dir=str(tmp_path / "rover"))
  scores = evaluate.score_only(None, None, str(tmp_path / "out"), shapes_rover_dir=str(tmp_path / "rover"),
                               shapes_rover_tasks=4, rover_metrics=str(tmp_path / "rover" / "IG"))
  assert scores["shapes_rover_ig"]["RV"] == 0.0 and scores["shapes_rover_ig"]["VC"] == 100.0
  assert scores["shapes_rover_tg"] == {"accuracy": 0.0, "image": 0.0}
  # The judged-records summary (official rover.summarize) of the same IG records.
  assert scores["rover_ig"]["RV"] == 0.0 and scores["rover_ig"]["RP"] == 0.0
  assert (tmp_path / "out" / "rover_summary.json").is_file()


@pytest.mark.parametrize("content, match", [
    ("not json", "invalid JSON"), ("[1, 2]", "JSON object"), ('{"0": {"answer": "A"}}', "model_ans"),
    ('{"0": 3}', "not a response string")])
def test_bad_prediction_files_name_the_file(colorbench_parquet, tmp_path, content, match):
  preds = tmp_path / "bad.json"
  preds.write_text(content)
  with pytest.raises(EvalInputError, match=match) as error:
    evaluate.score_only(None, None, str(tmp_path), colorbench_data=str(colorbench_parquet[0]),
                        colorbench_predictions=str(preds))
  assert str(error.value).startswith(str(preds)) and "\n" not in str(error.value)


def test_score_only_input_errors(tmp_path):
  with pytest.raises(EvalInputError, match="nothing to score"):
    evaluate.score_only(None, None, str(tmp_path))
  with pytest.raises(EvalInputError, match="--colorbench_predictions"):
    evaluate.score_only(None, None, str(tmp_path), colorbench_data=str(tmp_path))
  with pytest.raises(EvalInputError, match="rover_metrics.jsonl"):
    evaluate.score_only(None, None, str(tmp_path), rover_metrics=str(tmp_path))
  with pytest.raises(EvalInputError, match="no IG/ or TG/"):
    evaluate.score_only(None, None, str(tmp_path), shapes_rover_dir=str(tmp_path))


def test_unknown_eval_is_a_config_error(tmp_path):
  from jaxmodels.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown benchmark"):
    evaluate.evaluate_checkpoint(None, str(tmp_path), str(tmp_path), evals=("geneval", "mmlu"))
