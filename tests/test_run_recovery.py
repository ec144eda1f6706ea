"""A run directory survives what crashes, disks and users do to it: a second run on the workdir,
keep=0, half-deleted / truncated / bit-flipped checkpoints, a full disk, a config the checkpoint
rejects, and metrics rows of rolled-back steps."""
import errno
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

import train
from configs import shapes_tiny
from jaxmodels.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointWriteError
from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.trainer.metrics import roll_back_metrics
from jaxmodels.trainer.workdir import WorkdirBusyError, WorkdirLock, config_changes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(data_dir, **train_overrides):
  c = shapes_tiny.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(log_every=1, eval_every=1000, ckpt_every=1, **train_overrides)
  c.evals.update(which="qa", qa_per_kind=1, batch_size=2)
  c.checkpoint.update(async_save=False, keep=3)
  return c


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A 4-step run with a checkpoint at every step (steps 2, 3, 4 kept), copied by each test."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  train.train_and_evaluate(_config(data_dir, total_steps=4), str(workdir))
  return workdir


def _copy(trained, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


def _steps(workdir):
  ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def _quarantined(workdir):
  q = workdir / "checkpoints.quarantine"
  return sorted(".".join(p.name.split(".")[:2]) for p in q.iterdir()) if q.exists() else []   # drop the time


def _data_files(step_dir):
  """The OCDBT data files of a step's state item (the arrays' bytes)."""
  return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


############################ Lock ##########################################

def test_second_run_on_a_locked_workdir_refuses_before_writing(data_dir, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  with WorkdirLock(str(run)):
    with pytest.raises(WorkdirBusyError, match=rf"in use by pid {os.getpid()} on host"):
      train.train_and_evaluate(_config(data_dir, total_steps=2), str(run))
  assert sorted(p.name for p in run.iterdir()) == [".lock"]   # no config.json, checkpoints or metrics


def test_second_train_py_process_refuses_in_one_line(data_dir, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                             "from jaxmodels.trainer.workdir import WorkdirLock;"
                             "l = WorkdirLock(sys.argv[2]).acquire(); print('held', flush=True); time.sleep(120)",
                             str(REPO), str(run)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config=configs/shapes_tiny.py:runlocal",
                          f"--workdir={run}", f"--config.data.data_dir={data_dir}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  assert f"is in use by pid {holder.pid}" in out.stderr.strip().splitlines()[-1]
  # The holder died by SIGKILL: the OS dropped its flock, so the next run may take the workdir.
  with WorkdirLock(str(run)) as lock:
    assert json.loads(open(lock.path).read())["pid"] == os.getpid()


def test_stale_lock_of_a_dead_process_is_taken_over_and_another_hosts_is_refused(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_file = tmp_path / ".lock"
  lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
  with WorkdirLock(str(tmp_path)):
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  assert json.loads(lock_file.read_text()) == {"released": True}
  lock_file.write_text(json.dumps({"pid": 1, "host": "other-host-7", "started": "then"}))
  with pytest.raises(WorkdirBusyError, match=r"host other-host-7.*delete .*\.lock"):
    WorkdirLock(str(tmp_path)).acquire()


############################ Settings ######################################

@pytest.mark.parametrize("section,key,value", [("checkpoint", "keep", 0), ("train", "ckpt_every", 0),
                                               ("train", "log_every", -1), ("train", "eval_every", 0),
                                               ("train", "total_steps", 0), ("train", "gen_every", -2)])
def test_loop_and_checkpoint_settings_are_checked_before_anything_is_written(data_dir, tmp_path, section,
                                                                            key, value):
  c = _config(data_dir, total_steps=2)
  c[section][key] = value
  with pytest.raises(ConfigError, match=rf"config\.{section}\.{key}={value!r}"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


############################ Damaged checkpoints ###########################

def test_half_deleted_latest_step_is_quarantined_and_training_goes_on(trained, tmp_path, data_dir):
  run = _copy(trained, tmp_path)
  (run / "checkpoints" / "4" / "_CHECKPOINT_METADATA").unlink()
  shutil.rmtree(run / "checkpoints" / "4" / "state" / "d")
  train.train_and_evaluate(_config(data_dir, total_steps=6), str(run))   # raised StepAlreadyExistsError
  assert _steps(run) == [4, 5, 6]
  assert _quarantined(run) == ["4.incomplete"]
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == sorted(set(train_steps)) == [1, 2, 3, 4, 5, 6]    # the lost step 4 logged once
  moved = [json.loads(line) for line in open(run / "metrics.rolled_back.jsonl")]
  assert {r["step"] for r in moved} == {4} and all(r["rolled_back_to"] == 3 for r in moved)


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_unreadable_latest_step_is_quarantined_and_the_newest_intact_one_used(trained, tmp_path, data_dir,
                                                                             damage):
  run = _copy(trained, tmp_path)
  for f in _data_files(run / "checkpoints" / "4"):
    data = bytearray(f.read_bytes())
    if damage == "truncate":
      data = data[:len(data) // 2]
    else:
      for i in range(len(data) // 3, len(data), max(len(data) // 64, 1)):
        data[i] ^= 0x10
    f.write_bytes(bytes(data))
  train.train_and_evaluate(_config(data_dir, total_steps=5), str(run))
  assert _quarantined(run) == ["4.unreadable"]
  assert _steps(run) == [3, 4, 5]      # resumed at 3: step 4 trained and saved again, keep=3


def test_no_restorable_step_is_one_error_and_nothing_is_moved(trained, tmp_path, data_dir):
  run = _copy(trained, tmp_path)
  for step in (2, 3, 4):
    for f in _data_files(run / "checkpoints" / str(step)):
      f.write_bytes(f.read_bytes()[:10])
  with pytest.raises(CheckpointFormatError, match=r"no step restores \(steps \[4, 3, 2\]\)"):
    train.train_and_evaluate(_config(data_dir, total_steps=5), str(run))
  assert _quarantined(run) == [] and sorted(os.listdir(run / "checkpoints")) == ["2", "3", "4"]


def test_config_the_checkpoint_rejects_leaves_config_json_untouched(trained, tmp_path, data_dir):
  run = _copy(trained, tmp_path)
  before = (run / "config.json").read_bytes()
  c = _config(data_dir, total_steps=6)
  c.model.llm.hidden_size = 2 * c.model.llm.hidden_size
  with pytest.raises(CheckpointMismatchError, match="does not match the model"):
    train.train_and_evaluate(c, str(run))
  assert (run / "config.json").read_bytes() == before
  assert _quarantined(run) == []


def test_full_disk_while_saving_is_one_error_naming_the_intact_checkpoint(trained, tmp_path, data_dir,
                                                                          monkeypatch):
  run = _copy(trained, tmp_path)
  real_save = ocp.CheckpointManager.save

  def full(self, step, *a, **k):
    if step >= 6:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(CheckpointWriteError, match=r"step 6 .*no space left on device.*intact \(latest: step 5\)"):
    train.train_and_evaluate(_config(data_dir, total_steps=7), str(run))
  assert _steps(run) == [3, 4, 5]


############################ Metrics and config records ####################

def test_roll_back_metrics_moves_later_and_cut_rows(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4))
                  + '{"step": 5, "train/lo')   # a write cut by a kill
  assert roll_back_metrics(str(path), 2) == 3
  assert [json.loads(line)["step"] for line in open(path)] == [1, 2]
  moved = [json.loads(line) for line in open(tmp_path / "metrics.rolled_back.jsonl")]
  assert [r.get("step") for r in moved] == [3, 4, None] and moved[2]["unparsed"].startswith('{"step": 5')
  assert roll_back_metrics(str(path), 2) == 0


def test_config_changes_lists_each_changed_key():
  old = {"train": {"lr": 1e-3, "total_steps": 10}, "seed": 0}
  new = {"train": {"lr": 3e-4, "total_steps": 10}, "seed": 0, "resume": "x"}
  assert config_changes(old, new) == ["resume: (absent) -> \"x\"", "train.lr: 0.001 -> 0.0003"]
