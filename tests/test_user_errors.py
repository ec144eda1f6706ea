"""Issue 28: every mistake a user can make in a config value, a checkpoint path or an evaluation input
is a project exception whose one line names the file / key / record, raised before any model or
detector is built. The CLI cases run `python evaluate.py` end to end and check the last stderr line."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import evaluate
from jaxmodels.config_utils import set_values
from jaxmodels.errors import CheckpointFormatError, ConfigError, JaxModelsError
from jaxmodels.evals import EvalInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = {"tag": "single_object", "prompt": "a photo of a cow", "include": [{"class": "cow", "count": 1}]}


def _cli(*args, cwd=REPO):
  """Runs evaluate.py; returns (exit status, stderr). No malloc re-exec: these runs are short."""
  env = dict(os.environ, JAXMODELS_HOST_MALLOC="system")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stderr


def _one_line_error(rc, stderr, *names):
  """The run failed with one `error:` line naming every one of `names`, and no traceback."""
  assert rc != 0, stderr
  assert "Traceback" not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), stderr
  for name in names:
    assert str(name) in last, last
  return last


def _save_checkpoint(workdir, step=1, config=None):
  """A real (tiny) Orbax checkpoint in `<workdir>/checkpoints/<step>`, with a config item or not."""
  from jaxmodels.checkpoint import Checkpointer
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(step, {"x": np.zeros(2, np.float32)}, config=config)
  ckpt.close()


@pytest.fixture(scope="module")
def run_with_config_json(tmp_path_factory):
  """A run directory as train.py leaves it, minus the tokenizer: a checkpoint without a config item
  and `<run>/config.json` (the stored-config fallback)."""
  workdir = tmp_path_factory.mktemp("run")
  _save_checkpoint(str(workdir), step=3)
  config = {"seed": 0, "evals": {"batch_size": 64, "which": "qa"}, "train": {"total_steps": 10}}
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


# --------------------------------------------------------------------------- config_utils.set_values

def test_set_values_converts_to_the_type_of_the_replaced_value():
  c = ml_collections.ConfigDict({"a": {"n": 1, "x": 0.5, "flag": False, "name": "s", "values_": [1],
                                       "unset": None}})
  set_values(c, ["a.n=3", "a.x=2", "a.flag=true", "a.name=hello=world", "a.values_=[4, 5]",
                 "a.unset=runs/other"])
  assert (c.a.n, c.a.x, c.a.flag, c.a.name, c.a.values_, c.a.unset) == (
      3, 2.0, True, "hello=world", [4, 5], "runs/other")


@pytest.mark.parametrize("pair, match", [
    ("a.nn=3", r"--set a.nn=3: config.a has no key 'nn' \(did you mean 'n'\?\)"),
    ("b.n=3", r"config has no key 'b'"),
    ("a.n=three", r"--set a.n=three: expected an integer"),
    ("a.flag=maybe", r"--set a.flag=maybe: expected a boolean"),
    ("a.values_=7", r"--set a.values_=7: expected a list"),
    ("a.n.deeper=1", r"config.a.n holds a value of type int"),
    ("a.n", r"--set a.n: expected KEY=VALUE"),
])
def test_set_values_errors_name_the_setting(pair, match):
  c = ml_collections.ConfigDict({"a": {"n": 1, "flag": False, "values_": [1]}})
  with pytest.raises(ConfigError, match=match) as err:
    set_values(c, [pair])
  assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- evaluate.py: config flags

def test_cli_unknown_config_override_is_one_line_with_did_you_mean(tmp_path):
  rc, err = _cli("--config=configs/shapes_tiny.py", "--config.train.totl_steps=3",
                 f"--checkpoint={tmp_path}", f"--out={tmp_path / 'out'}")
  _one_line_error(rc, err, "--config.train.totl_steps", "did you mean 'total_steps'")


def test_cli_missing_config_file(tmp_path):
  rc, err = _cli("--config=configs/no_such_file.py", f"--checkpoint={tmp_path}", f"--out={tmp_path}")
  _one_line_error(rc, err, "configs/no_such_file.py")


def test_cli_bad_config_value(tmp_path):
  rc, err = _cli("--config=configs/shapes_tiny.py", "--config.train.total_steps=many",
                 f"--checkpoint={tmp_path}", f"--out={tmp_path}")
  _one_line_error(rc, err, "--config.train.total_steps", "many")


def test_cli_bad_config_argument(tmp_path):
  rc, err = _cli("--config=configs/shapes_tiny.py:no_such_arg", f"--checkpoint={tmp_path}",
                 f"--out={tmp_path}")
  _one_line_error(rc, err, "no_such_arg")


# --------------------------------------------------------------------------- evaluate.py: the run

def test_cli_wrong_checkpoint_path_creates_nothing(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  rc, err = _cli("--config=configs/shapes_tiny.py", f"--checkpoint={run}", f"--out={tmp_path / 'out'}")
  _one_line_error(rc, err, str(run), "no checkpoints/")
  assert not (run / "checkpoints").exists()     # restoring never makes the folder it looks for
  rc, err = _cli("--config=configs/shapes_tiny.py", f"--checkpoint={tmp_path / 'nope'}",
                 f"--out={tmp_path / 'out'}")
  _one_line_error(rc, err, str(tmp_path / "nope"), "no such run directory")
  assert not (tmp_path / "nope").exists()


def test_cli_without_config_or_stored_config_names_both_places(tmp_path):
  _save_checkpoint(str(tmp_path), step=2)      # no config item, no config.json
  rc, err = _cli(f"--checkpoint={tmp_path}", f"--out={tmp_path / 'out'}")
  _one_line_error(rc, err, "no stored config", os.path.join(str(tmp_path), "config.json"),
                  os.path.join(str(tmp_path), "checkpoints", "2", "config"), "--config")


def test_cli_stored_config_then_set_unknown_key(run_with_config_json, tmp_path):
  rc, err = _cli(f"--checkpoint={run_with_config_json}", f"--out={tmp_path}",
                 "--set", "evals.batchsize=8")
  _one_line_error(rc, err, "--set evals.batchsize=8", "did you mean 'batch_size'")


def test_cli_stored_config_then_set_bad_type(run_with_config_json, tmp_path):
  rc, err = _cli(f"--checkpoint={run_with_config_json}", f"--out={tmp_path}",
                 "--set=evals.batch_size=8", "--set=train.total_steps=ten")
  _one_line_error(rc, err, "--set train.total_steps=ten", "expected an integer")


def test_cli_stored_config_is_used_without_config(run_with_config_json, tmp_path):
  """Past the config (read from <run>/config.json, --set applied) the next check is the tokenizer:
  the run's config was found and accepted without --config, and no model was built for this error."""
  rc, err = _cli(f"--checkpoint={run_with_config_json}", f"--out={tmp_path}",
                 "--set=evals.batch_size=8")
  _one_line_error(rc, err, os.path.join(str(run_with_config_json), "tokenizer.json"), "missing")


def test_cli_checkpoints_folder_itself_is_accepted(run_with_config_json, tmp_path):
  rc, err = _cli(f"--checkpoint={run_with_config_json / 'checkpoints'}", f"--out={tmp_path}")
  _one_line_error(rc, err, os.path.join(str(run_with_config_json), "tokenizer.json"))


def test_cli_missing_step_lists_the_steps(run_with_config_json, tmp_path):
  rc, err = _cli(f"--checkpoint={run_with_config_json}", f"--out={tmp_path}", "--step=7")
  _one_line_error(rc, err, "--step=7", "complete ones: 3")


def test_cli_empty_checkpoints_folder(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  rc, err = _cli(f"--checkpoint={tmp_path}", f"--out={tmp_path / 'out'}")
  _one_line_error(rc, err, str(tmp_path / "checkpoints"), "no complete checkpoint")


def test_stored_config_prefers_the_checkpoint_item(tmp_path):
  _save_checkpoint(str(tmp_path), step=5, config={"seed": 7, "evals": {"batch_size": 4}})
  (tmp_path / "config.json").write_text(json.dumps({"seed": 1}))
  config = evaluate.stored_config(str(tmp_path), 5)
  assert config.seed == 7 and config.evals.batch_size == 4


def test_stored_config_json_that_is_not_json(tmp_path):
  _save_checkpoint(str(tmp_path), step=1)
  (tmp_path / "config.json").write_text('{"seed": 0,\n  oops}')
  with pytest.raises(ConfigError, match=r"config.json:2: invalid JSON"):
    evaluate.stored_config(str(tmp_path), 1)


def test_checkpoint_mode_needs_a_checkpoint(tmp_path):
  rc, err = _cli(f"--out={tmp_path}")
  _one_line_error(rc, err, "--checkpoint")


# --------------------------------------------------------------------------- score-only inputs

def _png(path, size=8):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def _geneval_folder(root, prompts=(PROMPT,), images=1):
  """A GenEval-layout folder: `<root>/images/<i>/{metadata.jsonl, samples/<j>.png}` + prompts.jsonl."""
  for i, prompt in enumerate(prompts):
    sub = root / "images" / f"{i:05d}"
    for j in range(images):
      _png(sub / "samples" / f"{j:04d}.png")
    (sub / "metadata.jsonl").write_text(json.dumps(prompt) + "\n")
  (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
  return root / "images", root / "prompts.jsonl"


def _no_detector():
  raise AssertionError("the detector was built before the inputs were checked")


def _score(folder, metadata, out, images_per_prompt=1):
  return evaluate.score_only(str(folder), str(metadata), str(out), images_per_prompt=images_per_prompt,
                             detector=_no_detector)


def test_cli_missing_geneval_folder(tmp_path):
  _, metadata = _geneval_folder(tmp_path)
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--geneval_dir={tmp_path / 'absent'}",
                 f"--metadata={metadata}")
  _one_line_error(rc, err, str(tmp_path / "absent"), "not found")


def test_cli_bad_json_line_in_the_prompt_file(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  metadata.write_text(json.dumps(PROMPT) + "\n\n{bad json\n")
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--geneval_dir={folder}",
                 f"--metadata={metadata}")
  _one_line_error(rc, err, f"{metadata}:3", "invalid JSON")


def test_missing_field_names_the_line_and_field(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  metadata.write_text("\n" + json.dumps({"tag": "single_object", "include": PROMPT["include"]}) + "\n")
  with pytest.raises(EvalInputError, match=r"prompts.jsonl:2: prompt 0: missing string field 'prompt'"):
    _score(folder, metadata, tmp_path / "out")


def test_missing_metadata_jsonl_in_a_prompt_folder(tmp_path):
  folder, metadata = _geneval_folder(tmp_path, prompts=(PROMPT, PROMPT))
  os.remove(folder / "00001" / "metadata.jsonl")
  with pytest.raises(EvalInputError) as err:
    _score(folder, metadata, tmp_path / "out")
  assert f"{folder / '00001' / 'metadata.jsonl'}: missing" in str(err.value)
  assert "\n" not in str(err.value)


def test_malformed_metadata_jsonl_in_a_prompt_folder(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  (folder / "00000" / "metadata.jsonl").write_text('{"tag": "single_object"')
  with pytest.raises(EvalInputError, match=r"00000/metadata.jsonl: invalid JSON"):
    _score(folder, metadata, tmp_path / "out")


def test_unreadable_image_is_refused_before_the_detector(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  bad = folder / "00000" / "samples" / "0000.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(EvalInputError, match="unreadable image") as err:
    _score(folder, metadata, tmp_path / "out")
  assert str(err.value).startswith(str(bad))


def test_cli_unreadable_image(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  bad = folder / "00000" / "samples" / "0000.png"
  bad.write_bytes(b"")
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--geneval_dir={folder}",
                 f"--metadata={metadata}", "--images_per_prompt=1")
  _one_line_error(rc, err, str(bad), "unreadable image")


def test_wrong_count_of_samples(tmp_path):
  folder, metadata = _geneval_folder(tmp_path, images=2)
  with pytest.raises(EvalInputError, match=r"2 images missing in 1 folders \(expected 4 PNGs\): 00000"):
    _score(folder, metadata, tmp_path / "out", images_per_prompt=4)
  with pytest.raises(EvalInputError, match="images_per_prompt must be an integer >= 1"):
    _score(folder, metadata, tmp_path / "out", images_per_prompt=0)


def test_a_good_folder_still_builds_the_detector_after_the_checks(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  built = []

  class Blank:
    def __init__(self):
      built.append(True)

    def detect(self, image):
      return []
  scores = evaluate.score_only(str(folder), str(metadata), str(tmp_path / "out"), images_per_prompt=1,
                               detector=Blank)
  assert built == [True] and scores["geneval"]["overall"] == 0.0


def test_a_bad_second_input_stops_before_the_first_is_scored(tmp_path):
  """All inputs are checked before any scoring: a broken prediction file stops the GenEval part too."""
  folder, metadata = _geneval_folder(tmp_path)
  preds = tmp_path / "preds.json"
  preds.write_text("[]")
  cb = tmp_path / "cb.json"
  cb.write_text("[]")
  with pytest.raises(EvalInputError):
    evaluate.score_only(str(folder), str(metadata), str(tmp_path / "out"), images_per_prompt=1,
                        detector=_no_detector, colorbench_data=str(cb), colorbench_predictions=str(preds))
  assert not (tmp_path / "out" / "results.jsonl").exists()


def test_cli_prediction_file_bad_json(tmp_path):
  preds = tmp_path / "preds.json"
  preds.write_text("{not json")
  data = tmp_path / "rows.json"
  data.write_text("[]")
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--colorbench_data={data}",
                 f"--colorbench_predictions={preds}")
  _one_line_error(rc, err, str(preds), "invalid JSON")


def test_colorbench_row_missing_a_field(tmp_path):
  data = tmp_path / "rows.json"
  data.write_text(json.dumps([{"type": "Perception", "filename": "a.png", "prompt": "p",
                               "answer": "(A)", "choices": ["x", "y"]}]))
  preds = tmp_path / "preds.json"
  preds.write_text("{}")
  with pytest.raises(EvalInputError, match=r"rows.json: row 0 has no string field 'task'"):
    evaluate.score_only(None, None, str(tmp_path / "out"), colorbench_data=str(data),
                        colorbench_predictions=str(preds))


def test_cli_missing_rover_metrics_and_shapes_rover_dirs(tmp_path):
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--shapes_rover_dir={tmp_path / 'absent'}")
  _one_line_error(rc, err, str(tmp_path / "absent"), "not found")


def test_cli_hf_detector_needs_existing_folders(tmp_path):
  folder, metadata = _geneval_folder(tmp_path)
  rc, err = _cli("--score_only", f"--out={tmp_path / 'out'}", f"--geneval_dir={folder}",
                 f"--metadata={metadata}", "--detector=hf", f"--hf_detector_dir={tmp_path}",
                 f"--hf_clip_dir={tmp_path / 'no_clip'}")
  _one_line_error(rc, err, "--hf_clip_dir", str(tmp_path / "no_clip"))


def test_every_error_here_is_a_project_exception():
  for cls in (EvalInputError, CheckpointFormatError, ConfigError):
    assert issubclass(cls, JaxModelsError)
