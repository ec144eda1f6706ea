r"""Uses a trained model: text -> images, image + question -> answer, image + instruction -> edited image.

    # text -> images: one PNG per sample and grid.png in --out (default samples/), samples.jsonl
    python sample.py --checkpoint=runs/shapes_tiny --prompt="a red circle and a blue square" --n=4
    # a prompts file: .txt (one prompt a line) or .jsonl rows {"prompt"} | {"image", "question"} |
    # {"image", "edit"}, each optionally with "n" and "seed"
    python sample.py --checkpoint=runs/shapes_tiny --prompts=prompts.txt --n=2 --seed=7 --steps=20 --guidance=3
    # image + question -> the answer (printed; answers.jsonl in --out)
    python sample.py --checkpoint=runs/shapes_tiny --image=scene.png --question="what color is the circle ?"
    # image + instruction -> edited images (models trained on edits; --edits=on forces)
    python sample.py --checkpoint=runs/shapes_tiny --image=scene.png --edit="make the circle blue"

`--checkpoint` is a training workdir (or its checkpoints/ folder): the run's stored config and
tokenizer are used, no `--config` needed, latest step unless `--step`; or a paper's released directory
(BLIP3-o with its diffusion-decoder/, BLIP3o-NEXT, MetaQuery, Florence-VL: `jaxmodels.unified.
from_pretrained`), prompted in the paper's own chat layout with its sampling settings; or a folder with
a `--config` whose `config.init` names released towers (as serve.py does).

    python sample.py --checkpoint=/models/BLIP3o-Model-8B --prompt="a cat on a red sofa" --n=2

A run's model, tokenizer and request handling are the server's (`jaxmodels.serving.offline.RunModel`
over `ServingModel`), so a prompt gives the same pixels here and from serve.py with the same seed and
batch. Images of one
call share one noise key: batch b of the run uses fold_in(key(--seed), b), so the same command gives
the same files; a prompts-file row's own "seed" runs that row alone with key(seed).

Every input (files, images, flags, what the model can do) is checked before anything is sampled; a
mistake ends with one line `error: <file or flag>: <what is wrong>`. Outputs are written atomically,
and an --out folder that already holds another call's samples.jsonl / answers.jsonl is refused
unless --overwrite, so earlier results are never mixed with new ones.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

from absl import app, flags


def _define_flags():
  """CLI flags, defined only when run as a script."""
  f = flags
  f.DEFINE_string("checkpoint", None, "A training workdir (or its checkpoints/ folder).", required=True)
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "A config file[:arg] (default: the run's stored "
                                  "config); --config.x=y overrides.")
  f.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  f.DEFINE_multi_string("prompt", [], "A text prompt to draw (repeatable).")
  f.DEFINE_string("prompts", None, "A prompts file: .txt (one prompt a line) or .jsonl rows.")
  f.DEFINE_string("image", None, "An input image (with --question or --edit).")
  f.DEFINE_string("question", None, "A question about --image: the answer is printed.")
  f.DEFINE_string("edit", None, "An edit instruction for --image: edited images are written.")
  f.DEFINE_integer("n", 4, "Images per prompt / edit (answers: 1).")
  f.DEFINE_integer("seed", 0, "Seed of the sampling noise.")
  f.DEFINE_integer("steps", None, "Flow sampling steps (default: the run's evals.sample_steps).")
  f.DEFINE_float("guidance", None, "Classifier-free guidance scale (default: the run's evals.guidance).")
  f.DEFINE_float("image_guidance", 1.5, "Edits: guidance towards the input image.")
  f.DEFINE_integer("max_tokens", 64, "Answers: the most new tokens.")
  f.DEFINE_float("temperature", 0.0, "Answers: sampling temperature (0: greedy).")
  f.DEFINE_integer("batch", 8, "Images (or answers) per compiled call.")
  f.DEFINE_string("out", "samples", "Output folder.")
  f.DEFINE_bool("overwrite", False, "Replace an earlier call's outputs in --out.")
  f.DEFINE_enum("edits", "auto", ["auto", "on", "off"], "Edits: auto = if the run trained on edits.")
  f.DEFINE_bool("one_device", False, "Copy the weights whole onto the first device.")


@dataclasses.dataclass
class Task:
  """One thing to do: kind "image" (text), "answer" (image + question) or "edit" (image + text)."""
  kind: str
  text: str
  where: str                 # names the flag or file line the task came from (errors, records)
  image: str | None = None   # input image path
  n: int = 1
  seed: int | None = None    # a row's own seed: it runs alone with key(seed)
  pixels: object = None      # the decoded input image, uint8 [H, W, 3]


def read_tasks(*, prompts: list[str], prompts_file: str | None, image: str | None,
               question: str | None, edit: str | None, n: int) -> list[Task]:
  """The tasks the flags and the prompts file ask for, every field checked; input images decoded.

  Raises:
    ConfigError: a missing or malformed file / row / flag combination (one line naming it).
  """
  from jaxmodels.errors import ConfigError
  if n < 1:
    raise ConfigError(f"--n={n}: must be at least 1")
  tasks = [Task("image", p, f"--prompt[{i}]", n=n) for i, p in enumerate(prompts)]
  if (question or edit) and not image:
    raise ConfigError(f"--{'question' if question else 'edit'} needs --image")
  if question and edit:
    raise ConfigError("--question and --edit: give one of them (a prompts file can mix both)")
  if image:
    if not (question or edit):
      raise ConfigError("--image needs --question (answer) or --edit (edited images)")
    tasks.append(Task("answer", question, "--question", image=image) if question
                 else Task("edit", edit, "--edit", image=image, n=n))
  if prompts_file:
    tasks += _file_tasks(prompts_file, n)
  if not tasks:
    raise ConfigError("nothing to do: give --prompt, --prompts, or --image with --question / --edit")
  for t in tasks:
    if not t.text.strip():
      raise ConfigError(f"{t.where}: empty text")
    if t.image is not None:
      t.pixels = _read_image(t.image, t.where)
  return tasks


def _file_tasks(path: str, n: int) -> list[Task]:
  from jaxmodels.errors import ConfigError
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"--prompts={path}: cannot read ({e})") from None
  base = os.path.dirname(os.path.abspath(path))
  tasks = []
  for no, line in enumerate(lines, 1):
    where = f"{path}:{no}"
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if not path.endswith(".jsonl"):
      tasks.append(Task("image", line.strip(), where, n=n))
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise ConfigError(f"{where}: a row must be a JSON object")
    unknown = set(row) - {"prompt", "image", "question", "edit", "n", "seed"}
    if unknown:
      raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (expected prompt | image + question | "
                        f"image + edit, and optional n, seed)")
    texts = [k for k in ("prompt", "question", "edit") if k in row]
    if len(texts) != 1:
      raise ConfigError(f"{where}: give exactly one of 'prompt', 'question', 'edit'")
    key = texts[0]
    kind = {"prompt": "image", "question": "answer", "edit": "edit"}[key]
    if (kind == "image") == ("image" in row):
      raise ConfigError(f"{where}: {'prompt rows take no image' if kind == 'image' else key + ' needs image'}")
    for k in ("n", "seed"):
      if k in row and (not isinstance(row[k], int) or isinstance(row[k], bool) or row[k] < (1 if k == "n" else 0)):
        raise ConfigError(f"{where}: {k} must be an integer >= {1 if k == 'n' else 0}, got {row[k]!r}")
    if not isinstance(row[key], str) or ("image" in row and not isinstance(row["image"], str)):
      raise ConfigError(f"{where}: {key} and image must be strings")
    image = row.get("image")
    if image is not None and not os.path.isabs(image):
      image = os.path.join(base, image)          # relative to the prompts file
    tasks.append(Task(kind, row[key], where, image=image, n=1 if kind == "answer" else row.get("n", n),
                      seed=row.get("seed")))
  return tasks


def _read_image(path: str, where: str):
  from input_pipeline.sources import CorruptRecord, decode_image
  from jaxmodels.errors import ConfigError
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ConfigError(f"{where}: cannot read image {path} ({e.strerror or e})") from None
  try:
    return decode_image(data, path)
  except CorruptRecord as e:
    raise ConfigError(f"{where}: {e}") from None


def check_capabilities(sm, tasks: list[Task]) -> None:
  """Refuses tasks the model cannot do, before anything runs (one line naming the first such task)."""
  from jaxmodels.errors import ConfigError
  for t in tasks:
    if t.kind in ("image", "edit") and not sm.generates:
      raise ConfigError(f"{t.where}: this model does not generate images (its config has no generation "
                        f"path: config.model)")
    if t.kind == "edit" and sm.edit_why:
      raise ConfigError(f"{t.where}: {sm.edit_why}")
    if t.kind == "answer" and not sm.reads_images:
      raise ConfigError(f"{t.where}: this model reads no images (no understanding encoder)")


def prepare_out(out: str, overwrite: bool) -> None:
  """Makes --out; refuses one holding another call's records unless `overwrite`."""
  from jaxmodels.errors import ConfigError
  for name in ("samples.jsonl", "answers.jsonl"):
    if os.path.exists(os.path.join(out, name)) and not overwrite:
      raise ConfigError(f"--out={out}: already holds {name} from an earlier call; pass --overwrite or "
                        f"another --out")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--out={out}: cannot create ({e.strerror or e})") from None


def slug(text: str, width: int = 40) -> str:
  """A file-name-safe short form of a prompt."""
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:width].rstrip("_") or "prompt"


class Progress:
  """One stderr line per finished call: done / total, rate and ETA (quiet when not a terminal)."""

  def __init__(self, total: int, unit: str):
    from jaxmodels.trainer.metrics import format_duration
    self.total, self.unit, self.done, self.start, self.fmt = total, unit, 0, time.time(), format_duration

  def update(self, k: int) -> None:
    self.done += k
    spent = time.time() - self.start
    eta = spent / self.done * (self.total - self.done) if self.done else 0.0
    print(f"sample: {self.done}/{self.total} {self.unit}, {spent:.1f} s, ETA {self.fmt(eta)}",
          file=sys.stderr, flush=True)


def run(model, tasks: list[Task], *, out: str, seed: int, steps: int | None, guidance: float | None,
        image_guidance: float, max_tokens: int, temperature: float, batch: int) -> dict:
  """Runs every task through `model` (`jaxmodels.serving.offline`: a run or a released checkpoint);
  writes PNGs, grid.png and the records -> summary."""
  import jax
  steps = steps or model.default_steps
  guidance = model.default_guidance if guidance is None else guidance
  base = jax.random.key(seed)
  calls = 0

  def key_for(task_seed):
    nonlocal calls
    calls += 1
    return jax.random.key(task_seed) if task_seed is not None else jax.random.fold_in(base, calls)

  images, records, answers = [], [], []
  drawing = [t for t in tasks if t.kind != "answer"]
  if drawing:
    progress = Progress(sum(t.n for t in drawing), "images")
    # Rows: (task index, sample index); seeded tasks alone, the rest in batches of `batch`.
    for group in _batches(tasks, batch):
      t0 = group[0][0]
      edit = tasks[t0].kind == "edit"
      rows = [(tasks[ti].text, tasks[ti].pixels, count) for ti, count in _runs(group)]
      drawn = model.draw(rows, rng=key_for(tasks[t0].seed), steps=steps, guidance=guidance,
                         image_guidance=image_guidance, edit=edit,
                         batch=batch if tasks[t0].seed is None else len(group))
      for (ti, j), img in zip(group, drawn):
        name = f"{ti:04d}_{slug(tasks[ti].text)}_{j}.png"
        _write_png(os.path.join(out, name), img)
        images.append((ti, j, img))
        records.append(dict(order=(ti, j), kind=tasks[ti].kind, text=tasks[ti].text, image=tasks[ti].image,
                            file=name, seed=seed if tasks[ti].seed is None else tasks[ti].seed, steps=steps,
                            guidance=guidance, image_guidance=image_guidance if edit else None,
                            where=tasks[ti].where))
      progress.update(len(group))
    records = [{k: v for k, v in r.items() if k != "order"} for r in sorted(records, key=lambda r: r["order"])]
    images.sort(key=lambda x: x[:2])                  # task order (seeded rows run first)
    _write_jsonl(os.path.join(out, "samples.jsonl"), records)
    _write_png(os.path.join(out, "grid.png"), grid([img for *_, img in images], [ti for ti, *_ in images]))
  asked = [(i, t) for i, t in enumerate(tasks) if t.kind == "answer"]
  if asked:
    progress = Progress(len(asked), "answers")
    for start in range(0, len(asked), batch):
      chunk = asked[start:start + batch]
      texts = model.answer([(t.text, t.pixels, t.seed if t.seed is not None else seed + i) for i, t in chunk],
                           max_tokens=max_tokens, temperature=temperature)
      for (i, t), answer in zip(chunk, texts):
        answers.append(dict(question=t.text, image=t.image, answer=answer, where=t.where))
        print(f"{t.image}: {t.text}\n  -> {answer}", flush=True)
      progress.update(len(chunk))
    _write_jsonl(os.path.join(out, "answers.jsonl"), answers)
  return dict(images=len(records), answers=len(answers), out=out)


def _batches(tasks: list[Task], batch: int) -> list[list[tuple[int, int]]]:
  """Image rows (task index, sample index) grouped into calls: same kind, at most `batch` rows; a
  seeded task's rows form calls of their own (so its seed alone decides its pixels)."""
  groups, current = [], []
  for ti, t in enumerate(tasks):
    if t.kind == "answer":
      continue
    rows = [(ti, j) for j in range(t.n)]
    if t.seed is not None:
      groups += [rows[i:i + batch] for i in range(0, len(rows), batch)]
      continue
    for r in rows:
      if current and (len(current) == batch or tasks[current[0][0]].kind != t.kind):
        groups.append(current)
        current = []
      current.append(r)
  if current:
    groups.append(current)
  return groups


def _runs(group: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """A call's rows as (task index, how many rows of it) in order."""
  out: list[list[int]] = []
  for ti, _ in group:
    if out and out[-1][0] == ti:
      out[-1][1] += 1
    else:
      out.append([ti, 1])
  return [tuple(r) for r in out]


def grid(images: list, task_of: list[int], max_rows: int = 16):
  """One row per task (its samples side by side), the first `max_rows` tasks; white 2-px gaps."""
  import numpy as np
  rows: dict[int, list] = {}
  for ti, img in zip(task_of, images):
    if ti in rows or len(rows) < max_rows:
      rows.setdefault(ti, []).append(img)
  h, w = images[0].shape[:2]
  cols = max(len(r) for r in rows.values())
  pad = 2
  canvas = np.full((len(rows) * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
  for r, row in enumerate(rows.values()):
    for c, img in enumerate(row):
      canvas[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
  return canvas


def _write_png(path: str, image) -> None:
  from pathlib import Path

  from jaxmodels.shapes_world.render import encode_png
  from jaxmodels.evals.output_records import write_atomic
  write_atomic(Path(path), encode_png(image))


def _write_jsonl(path: str, rows: list[dict]) -> None:
  from pathlib import Path

  from jaxmodels.evals.output_records import write_atomic
  write_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in rows).encode())


def _run():
  from jaxmodels.errors import ConfigError
  from jaxmodels.serving.offline import open_model
  from jaxmodels.serving.schema import APIError, Limits
  F = flags.FLAGS
  if F.batch < 1:
    raise ConfigError(f"--batch={F.batch}: must be at least 1")
  tasks = read_tasks(prompts=F.prompt, prompts_file=F.prompts, image=F.image, question=F.question,
                     edit=F.edit, n=F.n)
  prepare_out(F.out, F.overwrite)
  limits = Limits(max_tokens=F.max_tokens, max_n=max(t.n for t in tasks), max_steps=F.steps or 1000)
  model = open_model(F.checkpoint, config=F.config, step=F.step, one_device=F.one_device, limits=limits,
                     edits=F.edits, seed=F.seed)
  check_capabilities(model, tasks)
  try:
    summary = run(model, tasks, out=F.out, seed=F.seed, steps=F.steps, guidance=F.guidance,
                  image_guidance=F.image_guidance, max_tokens=F.max_tokens, temperature=F.temperature,
                  batch=F.batch)
  except APIError as e:       # a request the serving checks refuse (e.g. a prompt over the context)
    raise ConfigError(e.message) from None
  print(f"sample: {summary['images']} images, {summary['answers']} answers in {summary['out']}/",
        file=sys.stderr)


def main(argv):
  del argv
  from jaxmodels import host_devices
  from jaxmodels.errors import run_cli
  from jaxmodels.log_filters import quiet_library_logs
  host_devices.ensure_collective_threads()
  quiet_library_logs()
  run_cli(_run)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()
  from jaxmodels.config_utils import flags_parser
  _define_flags()
  app.run(main, flags_parser=flags_parser)
