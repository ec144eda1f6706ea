"""The fault kinds of tools/chaos_checkpoint.py beyond SIGKILL: a full disk, a truncated or bit-flipped
checkpoint data file, and a second concurrent run on the same workdir.

Each fault gets its own copy of one short base run (3 steps, a checkpoint after each) and returns a
dict: `ok` (nothing lost, the run resumed from the newest intact step and finished, every committed
step restores), what was observed, and `problems` (empty when ok). `run_faults` runs several.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

from chaos_checkpoint import REPO, STEP_LINE, Verifier, _command, _env  # noqa: I001

FAULTS = ("enospc", "truncate", "bitflip", "concurrent")
BASE_STEPS = 3


def _train(workdir: str, data_dir: str, total: int, cache: str, env_extra=None, timeout: float = 900):
  env = dict(_env(workdir, cache), **(env_extra or {}))
  return subprocess.run(_command(workdir, data_dir, total), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _final_step(workdir: str) -> int | None:
  try:
    return json.load(open(os.path.join(workdir, "scores.json")))["step"]
  except (OSError, ValueError, KeyError):
    return None


def _data_files(step_dir: str) -> list[str]:
  """The OCDBT data files (the arrays' bytes) of a step's state item."""
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) == "d":
      out += [os.path.join(root, f) for f in files]
  return sorted(out)


def _quarantined(workdir: str) -> list[str]:
  q = os.path.join(workdir, "checkpoints.quarantine")
  return sorted(os.listdir(q)) if os.path.isdir(q) else []


def _train_steps(workdir: str) -> list[int]:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
  return [r["step"] for r in rows if "train/loss" in r]


def _check_all_restore(verifier: Verifier, workdir: str, problems: list[str]) -> list[int]:
  steps, bad = verifier.check(os.path.join(workdir, "checkpoints"))
  problems += bad
  if not steps:
    problems.append("no checkpoint left")
  return steps


def base_run(root: str, data_dir: str, cache: str) -> str:
  """The run every fault starts from: BASE_STEPS steps, checkpoints 1..BASE_STEPS."""
  base = os.path.join(root, "base")
  if _final_step(base) != BASE_STEPS:
    shutil.rmtree(base, ignore_errors=True)
    r = _train(base, data_dir, BASE_STEPS, cache)
    if r.returncode != 0:
      raise RuntimeError(f"the base run failed ({r.returncode}): {_last_line(r.stderr)}")
  return base


def _copy(base: str, dst: str) -> str:
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(base, dst, ignore=shutil.ignore_patterns(".jax_cache", ".lock"))
  return dst


def damaged_step(kind: str, root: str, data_dir: str, cache: str, base: str, verifier: Verifier) -> dict:
  """`truncate` / `bitflip` the newest step's data files; the rerun must quarantine it and go on."""
  run = _copy(base, os.path.join(root, kind))
  files = _data_files(os.path.join(run, "checkpoints", str(BASE_STEPS)))
  for f in files:
    data = bytearray(open(f, "rb").read())
    if kind == "truncate":
      data = data[:len(data) // 2]
    else:
      for i in range(len(data) // 3, len(data), max(len(data) // 64, 1)):
        data[i] ^= 0x10
    open(f, "wb").write(bytes(data))
  total = BASE_STEPS + 2
  r = _train(run, data_dir, total, cache)
  problems = []
  if r.returncode != 0:
    problems.append(f"rerun failed ({r.returncode}): {_last_line(r.stderr)}")
  if "Traceback" in r.stderr:
    problems.append("a traceback on stderr")
  resumed = f"at step {BASE_STEPS - 1}" in r.stderr
  if not resumed:
    problems.append(f"did not resume from step {BASE_STEPS - 1}")
  quarantined = _quarantined(run)
  if not any(q.startswith(f"{BASE_STEPS}.unreadable.") for q in quarantined):
    problems.append(f"step {BASE_STEPS} not quarantined (quarantine: {quarantined})")
  steps = _check_all_restore(verifier, run, problems)
  if _final_step(run) != total:
    problems.append(f"did not finish step {total}")
  return {"ok": not problems, "damaged_files": len(files), "quarantined": quarantined, "steps": steps,
          "final_step": _final_step(run), "problems": problems}


@contextlib.contextmanager
def _small_tmpfs(path: str, megabytes: int):
  """A tmpfs of `megabytes` at `path`, or None where this process may not mount one."""
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path],
                     capture_output=True, text=True)
  if r.returncode != 0:
    yield None
    return
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], capture_output=True)


def _enospc_hook(dirname: str, from_step: int) -> str:
  """A sitecustomize that makes Orbax's save raise ENOSPC from step `from_step` on (no tmpfs)."""
  os.makedirs(dirname, exist_ok=True)
  with open(os.path.join(dirname, "sitecustomize.py"), "w") as f:
    f.write(textwrap.dedent(f"""\
        import errno
        import orbax.checkpoint as ocp
        _save = ocp.CheckpointManager.save
        def _full(self, step, *a, **k):
          if step >= {from_step}:
            raise OSError(errno.ENOSPC, "No space left on device")
          return _save(self, step, *a, **k)
        ocp.CheckpointManager.save = _full
        """))
  return dirname


def full_disk(root: str, data_dir: str, cache: str, base: str, verifier: Verifier) -> dict:
  """The workdir's disk fills during a save: one `error:` line naming the intact step, no traceback;
  once space is freed the rerun resumes from it and finishes."""
  step_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                os.walk(os.path.join(base, "checkpoints", "1")) for f in fs) / 2**20
  base_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(base) for f in fs
                if ".jax_cache" not in d) / 2**20
  total = BASE_STEPS + 2
  problems, how = [], None
  with _small_tmpfs(os.path.join(root, "tmpfs"), int(base_mb + 4 * step_mb + 8)) as mnt:
    if mnt is not None:
      how = "tmpfs"
      run = _copy(base, os.path.join(mnt, "run"))
      filler = os.path.join(mnt, "filler")
      st = os.statvfs(mnt)
      free = st.f_bavail * st.f_frsize - int(step_mb * 2**20 / 3)      # a third of a step stays free
      with open(filler, "wb") as f:
        f.write(b"\0" * max(free, 0))
      r = _train(run, data_dir, total, cache)
      os.remove(filler)
    else:
      how = "sitecustomize ENOSPC (no tmpfs here)"
      run = _copy(base, os.path.join(root, "enospc"))
      hook = _enospc_hook(os.path.join(root, "enospc_hook"), BASE_STEPS + 1)
      r = _train(run, data_dir, total, cache, {"PYTHONPATH": os.pathsep.join(
          p for p in (hook, os.environ.get("PYTHONPATH")) if p)})
    last = _last_line(r.stderr)
    if r.returncode == 0:
      problems.append("the run on a full disk exited 0")
    if not (last.startswith("error: checkpoint step") and "no space left on device" in last
            and f"latest: step {BASE_STEPS}" in last):
      problems.append(f"last line is not the disk-full error: {last[:300]!r}")
    tracebacks = r.stderr.count("Traceback")
    if tracebacks:
      problems.append(f"{tracebacks} tracebacks on stderr")
    stderr_lines = len(r.stderr.splitlines())
    kept = _check_all_restore(verifier, run, problems)
    if kept[-1:] != [BASE_STEPS]:
      problems.append(f"committed steps after the failure: {kept}")
    again = _train(run, data_dir, total, cache)
    if again.returncode != 0:
      problems.append(f"the rerun with space failed ({again.returncode}): {_last_line(again.stderr)}")
    if f"at step {BASE_STEPS}" not in again.stderr:
      problems.append(f"the rerun did not resume from step {BASE_STEPS}")
    steps = _check_all_restore(verifier, run, problems)
    final = _final_step(run)
    if final != total:
      problems.append(f"the rerun did not finish step {total}")
  return {"ok": not problems, "how": how, "error_line": last, "stderr_lines": stderr_lines,
          "tracebacks": tracebacks, "steps_after_failure": kept, "steps": steps, "final_step": final,
          "problems": problems}


def concurrent_run(root: str, data_dir: str, cache: str, base: str, verifier: Verifier) -> dict:
  """A second train.py on the workdir while the first trains: it refuses with one line; the first,
  then stopped by SIGTERM (a preemption: it saves and exits 0), has one metrics row per step."""
  run = _copy(base, os.path.join(root, "concurrent"))
  first = subprocess.Popen(_command(run, data_dir, 1_000_000), cwd=REPO, env=_env(run, cache),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out, second, deadline = [], None, time.time() + 900
  for line in first.stdout:
    out.append(line)
    if second is None and STEP_LINE.match(line):
      second = _train(run, data_dir, 1_000_000, cache, timeout=300)
      first.send_signal(signal.SIGTERM)
    if time.time() > deadline:
      first.kill()
      break
  first.wait()
  problems = []
  if second is None:
    problems.append("the first run never trained")
    refusal = ""
  else:
    refusal = _last_line(second.stderr)
    if second.returncode == 0 or "is in use by" not in refusal:
      problems.append(f"the second run did not refuse ({second.returncode}): {refusal[:300]!r}")
    if "Traceback" in second.stderr:
      problems.append("a traceback in the second run's stderr")
  if first.returncode != 0:
    problems.append(f"the first run failed ({first.returncode}): {_last_line(''.join(out))}")
  steps_logged = _train_steps(run)
  if steps_logged != sorted(set(steps_logged)):
    problems.append(f"metrics.jsonl repeats steps: {steps_logged}")
  steps = _check_all_restore(verifier, run, problems)
  try:
    released = json.load(open(os.path.join(run, ".lock"))).get("released") is True
  except (OSError, ValueError):
    released = False
  if not released:
    problems.append("the lock record does not say released")
  return {"ok": not problems, "refusal": refusal, "steps": steps, "problems": problems}


def run_faults(faults, root: str, data_dir: str, *, log=lambda *a: None) -> dict:
  """{fault: result} for each of `faults` (a subset of FAULTS)."""
  unknown = [f for f in faults if f not in FAULTS]
  if unknown:
    raise SystemExit(f"error: --faults: unknown kind(s) {unknown} (known: kill, {', '.join(FAULTS)})")
  cache = os.path.join(root, ".jax_cache")
  verifier = Verifier(data_dir)
  base = base_run(root, data_dir, cache)
  results = {}
  for fault in faults:
    t0 = time.time()
    if fault in ("truncate", "bitflip"):
      results[fault] = damaged_step(fault, root, data_dir, cache, base, verifier)
    elif fault == "enospc":
      results[fault] = full_disk(root, data_dir, cache, base, verifier)
    else:
      results[fault] = concurrent_run(root, data_dir, cache, base, verifier)
    results[fault]["seconds"] = round(time.time() - t0, 1)
    log(f"{fault}: {'ok' if results[fault]['ok'] else 'FAILED'} {results[fault]}")
  return results

