"""GenEval images from a unified model on an official prompt file, in the official folder layout.

    plan = prepare(out_dir, "evaluation_metadata.jsonl", tokenizer, settings)   # checks; writes nothing
    generate(model, plan)      # <out_dir>/generation.json, <5-digit>/metadata.jsonl, samples/NNNN.png

The layout is the one the official generation scripts write and `geneval.scan_folder` (and the
official `evaluate_images.py`) read: `<out>/<index:05d>/metadata.jsonl` holds line `index` of the
prompt file (one JSON object, the source line verbatim) and `samples/<j:04d>.png` the images.

Resumable: an image already there (a PNG that verifies) is kept, only missing ones are generated.
Every file is written to a temporary name that the GenEval filters never read (`.0000.png.tmp.<pid>`)
and renamed into place, so a kill never leaves a half-written PNG under a name the scorer reads; a
broken PNG under such a name (another writer's) is replaced and counted. `<out>/generation.json`
records the settings (checkpoint, step, sampler steps, guidance, temperatures, seed, batch size,
images per prompt, resolution, prompt template and length, the prompt file's sha256) and each image's
seed; a later run whose settings differ stops with one line instead of mixing two settings in a folder.

Seeds: the images of the whole file, in (prompt, sample) order, are cut into batches of `batch_size`;
batch b is sampled with `jax.random.fold_in(jax.random.key(seed), b)` and the image is its row. A
batch is always the same images, so an image regenerated on resume (or by a run with a different
`limit`) is the one an uninterrupted run draws.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxmodels.shapes_world.render import encode_png
from jaxmodels.evals import EvalInputError, geneval
from jaxmodels.evals.output_records import file_sha256, is_complete_png, record_matches, write_atomic

SETTINGS_FILE = "generation.json"
# generation.json keys that must agree between the runs writing one folder.
COMPARED = ("checkpoint", "step", "metadata_sha256", "prompt_template", "prompt_len", "sample_steps",
            "guidance", "temperature", "pattern_temperature", "seed", "batch_size", "images_per_prompt",
            "resolution", "gen_target")
_TMP = re.compile(r"\.\d+\.png\.tmp\.\d+")


def apply_template(template: str, prompt: str) -> str:
  """`template` with its `{prompt}` replaced by `prompt` (no other braces are interpreted)."""
  return template.replace("{prompt}", prompt)


def check_template(template: Any, key: str = "config.evals.prompt_template") -> str:
  """The template if it is a string holding `{prompt}`.

  Raises:
    EvalInputError: naming `key`.
  """
  if not isinstance(template, str) or "{prompt}" not in template:
    raise EvalInputError(f"{key}={template!r}: must be a string containing {{prompt}}")
  return template


def read_prompt_lines(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
  """(records, source lines): the prompt file checked by `geneval.read_metadata` (a bad line is one
  error naming file:line) and its non-empty lines verbatim, in the same order."""
  prompts = geneval.read_metadata(path)
  lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
  return prompts, lines


def encode_prompts(tokenizer, texts: Sequence[str], prompt_len: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """Generation prompts ([bos] text, left-padded to `prompt_len` as training builds them) ->
  (ids int32 [N, L], mask int32 [N, L], stats): `unknown_words` (words the tokenizer maps to its
  unknown token; a word tokenizer has no sub-words), `examples` (the most frequent of them),
  `truncated` (prompts longer than `prompt_len`, which keep their last tokens)."""
  import collections

  from input_pipeline.shapes_tasks import left_pad
  ids, masks, unknown, truncated = [], [], collections.Counter(), 0
  bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
  unk = getattr(tokenizer, "unk_id", None)
  for text in texts:
    tokens = bos + list(tokenizer.encode(text))
    if hasattr(tokenizer, "split"):       # WordTokenizer: the words it does not know
      unknown.update(w for w in tokenizer.split(text) if tokenizer.token_to_id(w) is None)
    elif unk is not None:
      unknown.update({"<unk>": tokens.count(unk)} if unk in tokens else {})
    truncated += len(tokens) > prompt_len
    row, mask = left_pad(tokens, prompt_len, getattr(tokenizer, "pad_id", 0) or 0)
    ids.append(row)
    masks.append(mask)
  stats = {"prompts": len(texts), "unknown_words": sum(unknown.values()),
           "distinct_unknown": len(unknown), "examples": [w for w, _ in unknown.most_common(8)],
           "truncated": truncated}
  return np.stack(ids), np.stack(masks), stats


def sample_seeds(num_prompts: int, images_per_prompt: int, batch_size: int) -> dict[str, list[int]]:
  """`"<index:05d>/samples/<j:04d>.png" -> [batch, row]`: where each image of the file is drawn."""
  out = {}
  for k in range(num_prompts * images_per_prompt):
    i, j = divmod(k, images_per_prompt)
    out[f"{i:05d}/samples/{j:04d}.png"] = list(divmod(k, batch_size))
  return out


@dataclasses.dataclass
class Plan:
  """What `generate` writes: `todo` lists the (prompt index, sample) images still missing."""
  out_dir: Path
  prompts: list[dict]          # every record of the file (batches span the whole file)
  lines: list[str]             # their source lines, written verbatim as metadata.jsonl
  limit: int                   # prompts 0..limit-1 are written
  settings: dict
  ids: np.ndarray
  mask: np.ndarray
  prompt_stats: dict
  todo: list[tuple[int, int]]
  kept: int                    # images already there, kept
  broken: list[str]            # PNGs there that do not verify (replaced)
  recorded: bool               # generation.json already exists (a resume)


def prepare(out_dir: str | os.PathLike, metadata_path: str | os.PathLike, tokenizer, settings: dict, *,
            limit: int | None = None) -> Plan:
  """Reads and checks everything `generate` needs, writing nothing: the prompt file (file:line
  errors), `settings` against `<out_dir>/generation.json` when it exists, every existing
  metadata.jsonl against its source line, and which images are missing.

  `settings` needs at least `images_per_prompt`, `batch_size`, `seed`, `prompt_template`,
  `prompt_len`, `sample_steps`, `guidance` (the `COMPARED` keys; the prompt file's path and sha256
  are added here). `limit`: only the first `limit` prompts (None: all).

  Raises:
    EvalInputError: one line naming the file (and line or setting) at fault.
  """
  out = Path(out_dir)
  prompts, lines = read_prompt_lines(metadata_path)
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise EvalInputError(f"--geneval_limit={limit!r}: must be an integer >= 1")
  n = len(prompts) if limit is None else min(limit, len(prompts))
  ipp, batch = settings["images_per_prompt"], settings["batch_size"]
  for key, value in (("--images_per_prompt", ipp), ("config.evals.batch_size", batch)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise EvalInputError(f"{key}={value!r}: must be an integer >= 1")
  template = check_template(settings["prompt_template"])
  settings = dict(settings, metadata_file=str(Path(metadata_path).resolve()),
                  metadata_sha256=file_sha256(metadata_path))
  recorded = record_matches(out / SETTINGS_FILE, settings, COMPARED)
  if not recorded and out.is_dir():
    foreign = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    if foreign:
      raise EvalInputError(f"{out}: holds GenEval folders ({foreign[0]}, ...) but no {SETTINGS_FILE}: "
                           f"not written by this command; choose another --out")
  todo, kept, broken = [], 0, []
  for i in range(n):
    sub = out / f"{i:05d}"
    meta = sub / "metadata.jsonl"
    if meta.exists():
      try:
        same = meta.read_text(encoding="utf-8").strip() == lines[i]
      except (OSError, UnicodeDecodeError):
        same = False
      if not same:
        raise EvalInputError(f"{meta}: differs from {metadata_path} line of prompt {i}; refusing to "
                             f"overwrite it (choose another --out)")
    for j in range(ipp):
      png = sub / "samples" / f"{j:04d}.png"
      if png.exists() and is_complete_png(png):
        kept += 1
        continue
      if png.exists():
        broken.append(str(png))
      todo.append((i, j))
  texts = [apply_template(template, p["prompt"]) for p in prompts]
  ids, mask, stats = encode_prompts(tokenizer, texts, settings["prompt_len"])
  if n < len(texts):          # report on the prompts this run writes
    stats = encode_prompts(tokenizer, texts[:n], settings["prompt_len"])[2]
  return Plan(out, prompts, lines, n, settings, ids, mask, stats, todo, kept, broken, recorded)


def describe_prompts(plan: Plan) -> str:
  """One line on how the tokenizer took the prompts (unknown words, truncation)."""
  s = plan.prompt_stats
  text = f"GenEval prompts: {s['prompts']} of {len(plan.prompts)}"
  if s["unknown_words"]:
    text += (f"; {s['unknown_words']} words ({s['distinct_unknown']} distinct) unknown to the run's "
             f"tokenizer, read as its unknown token (e.g. {', '.join(s['examples'])})")
  if s["truncated"]:
    text += (f"; {s['truncated']} prompts longer than {plan.settings['prompt_len']} tokens keep their "
             f"last tokens")
  return text


def generate(model, plan: Plan, *, progress: bool = True) -> dict:
  """Writes what `plan` says is missing: generation.json (on a fresh folder), each prompt's
  metadata.jsonl, then the missing images, batch by batch (`sample_images`; a progress bar with
  ETA on stderr). Returns {"generated", "kept", "replaced_broken", "batches"}."""
  import jax
  import jax.numpy as jnp
  from tqdm.auto import tqdm

  from jaxmodels.unified.sampling import sample_images, to_uint8
  s = plan.settings
  ipp, size = s["images_per_prompt"], s["batch_size"]
  plan.out_dir.mkdir(parents=True, exist_ok=True)
  if not plan.recorded:
    record = {"settings": s, "seed_rule": "images of the file in (prompt, sample) order, cut into "
              "batches of batch_size; batch b uses jax.random.fold_in(jax.random.key(seed), b), "
              "the image is its row", "prompt_stats": plan.prompt_stats,
              "sample_seeds": sample_seeds(len(plan.prompts), ipp, size)}
    write_atomic(plan.out_dir / SETTINGS_FILE, (json.dumps(record, indent=1) + "\n").encode())
  for i in range(plan.limit):
    samples = plan.out_dir / f"{i:05d}" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for stale in samples.iterdir():          # temporary files of a killed run
      if _TMP.fullmatch(stale.name):
        stale.unlink()
    meta = samples.parent / "metadata.jsonl"
    if not meta.exists():
      write_atomic(meta, (plan.lines[i] + "\n").encode("utf-8"))
  todo = set(plan.todo)
  batches = sorted({(i * ipp + j) // size for i, j in todo})
  total = len(plan.prompts) * ipp
  base = jax.random.key(s["seed"])
  with tqdm(total=len(todo), desc="GenEval generate", unit="img", disable=not progress) as bar:
    for b in batches:
      jobs = [divmod(k, ipp) for k in range(b * size, min((b + 1) * size, total))]
      rows = [i for i, _ in jobs] + [jobs[-1][0]] * (size - len(jobs))   # one compiled shape
      x = sample_images(model, jnp.asarray(plan.ids[rows]), jnp.asarray(plan.mask[rows]),
                        jax.random.fold_in(base, b), s["sample_steps"], s["guidance"])
      images = to_uint8(x)
      for (i, j), image in zip(jobs, images):
        if (i, j) in todo:
          write_atomic(plan.out_dir / f"{i:05d}" / "samples" / f"{j:04d}.png", encode_png(image))
          bar.update(1)
  return {"generated": len(todo), "kept": plan.kept, "replaced_broken": len(plan.broken),
          "batches": len(batches)}
