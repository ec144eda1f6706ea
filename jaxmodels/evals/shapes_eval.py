"""Scoring a unified model on ShapesWorld: understanding Q/A accuracy, GenEval-style generation,
ShapesWorld-ColorBench (understanding) and ShapesWorld-ROVER (editing), and the model adapters.

    qa = qa_accuracy(model, tok, val_scenes)            # {"color": 0.9, "shape": ..., "overall": ...}
    gen = geneval_generate_and_score(model, tok, records, ShapesDetector(), rng=jax.random.key(0))
    gen["summary"]["overall"], gen["images"]            # GenEval summary, uint8 [N, S, S, 3]
    answer_fn = model_answer_fn(model, tok)             # (images uint8 [B,H,W,3], texts) -> replies
    edit_fn = model_edit_fn(model, tok, rng=key)        # (images, instructions) -> (images, texts)

The GenEval rules are `jaxmodels.evals.geneval`'s (the official ones); ShapesWorld prompts follow
GenEval's schema, so the same rules and summary apply.
"""
from __future__ import annotations

import collections
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from input_pipeline.shapes_tasks import (OPEN_QA_KINDS, edit_ids, left_pad, open_questions,
                                         to_unit_range, und_prompt)
from jaxmodels.config_schema import data_section
from jaxmodels.errors import ConfigError
from jaxmodels.evals import geneval
from jaxmodels.evals.geneval_generate import encode_prompts
from jaxmodels.generate import generate
from jaxmodels.unified.sampling import sample_edits, sample_images, to_uint8


@nnx.jit
def _und_embeddings(model, ids, images):
  return model.und_embeddings(ids, images)


def _batches(items: Sequence, size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def _pad_batch(rows: list, size: int) -> list:
  """Repeats the last row so every batch has `size` rows (one compiled shape); callers drop extras."""
  return rows + [rows[-1]] * (size - len(rows))


def qa_accuracy(model, tokenizer, scenes: Sequence[dict], *, kinds: Sequence[str] = OPEN_QA_KINDS,
                max_per_kind: int = 64, batch_size: int = 32, prompt_len: int = 48,
                max_new_tokens: int = 4, layout: str = "image_first") -> dict[str, float]:
  """Greedy-answer accuracy per question kind (exact match of the decoded answer) and their mean;
  prompts in the training data's `layout` (input_pipeline.shapes_tasks.und_prompt)."""
  size = model.config.und_encoder.image_size
  items, per_kind = [], collections.Counter()
  for ex in scenes:
    for q in open_questions(ex["qa"], kinds):
      if per_kind[q["kind"]] < max_per_kind:
        per_kind[q["kind"]] += 1
        items.append((ex["image"], q))
  right = collections.Counter()
  for chunk in _batches(items, batch_size):
    rows = _pad_batch(list(chunk), batch_size)
    images = jnp.asarray(np.stack([to_unit_range(img, size) for img, _ in rows]))
    prompts = [left_pad(und_prompt(tokenizer, q["question"], model.num_image_tokens, layout),
                        prompt_len, tokenizer.pad_id) for _, q in rows]
    ids = jnp.asarray(np.stack([p[0] for p in prompts]))
    mask = jnp.asarray(np.stack([p[1] for p in prompts]))
    embeds = _und_embeddings(model, ids, images)
    out = np.asarray(generate(model.llm, ids, max_new_tokens, attention_mask=mask, inputs_embeds=embeds,
                              eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id))[:, prompt_len:]
    for (_, q), tokens in zip(chunk, out):
      answer = tokenizer.decode([t for t in tokens if t not in (tokenizer.pad_id, tokenizer.eos_id)])
      right[q["kind"]] += answer.strip() == tokenizer.decode(tokenizer.encode(str(q["answer"]))).strip()
  scores = {k: right[k] / per_kind[k] for k in kinds if per_kind[k]}
  scores["overall"] = float(np.mean(list(scores.values()))) if scores else 0.0
  return scores


def model_answer_fn(model, tokenizer, *, batch_size: int = 32, prompt_len: int = 48,
                    max_new_tokens: int = 4, layout: str = "image_first"):
  """`answer_fn(images uint8 [B, H, W, 3], texts list[str]) -> list[str]` of a unified model:
  greedy answers through the understanding path (<bos> <image>×n text, or <bos> text <image>×n with
  layout="question_first"), batches padded to
  `batch_size` so one compiled shape serves every call (the shapes of `qa_accuracy`)."""
  size = model.config.und_encoder.image_size

  def answer(images, texts):
    out = []
    for start in range(0, len(texts), batch_size):
      imgs = list(images[start:start + batch_size])
      rows = _pad_batch(list(zip(imgs, texts[start:start + batch_size])), batch_size)
      pixels = jnp.asarray(np.stack([to_unit_range(np.asarray(i, np.uint8), size)
                                     for i, _ in rows]))
      room = max(0, prompt_len - 1 - model.num_image_tokens)  # long texts lose words, never images
      prompts = [left_pad(und_prompt(tokenizer, tokenizer.encode(t)[:room], model.num_image_tokens,
                                     layout), prompt_len, tokenizer.pad_id) for _, t in rows]
      ids = jnp.asarray(np.stack([p[0] for p in prompts]))
      mask = jnp.asarray(np.stack([p[1] for p in prompts]))
      embeds = _und_embeddings(model, ids, pixels)
      tokens = np.asarray(generate(model.llm, ids, max_new_tokens, attention_mask=mask,
                                   inputs_embeds=embeds, eos_token_id=tokenizer.eos_id,
                                   pad_token_id=tokenizer.pad_id))[:, prompt_len:]
      for row in tokens[:len(imgs)]:
        out.append(tokenizer.decode([t for t in row if t not in (tokenizer.pad_id,
                                                                 tokenizer.eos_id)]).strip())
    return out

  return answer


def model_edit_fn(model, tokenizer, *, rng: jax.Array, num_steps: int = 20, guidance: float = 3.0,
                  image_guidance: float = 1.5, batch_size: int = 32, text_len: int = 32,
                  layout: str = "image_first"):
  """`edit_fn(source images uint8 [B, H, W, 3], instructions) -> (images uint8, texts)` of a
  unified model: the prompt is <bos> <image>×n instruction (or the instruction first: `layout`, the
  run's data.edit_layout; left-padded to n + 1 + `text_len`; n: the
  model's `num_edit_image_tokens`), the placeholders filled from the source image (`generate_image(..., cond_images=...)`, 3-way
  guidance). The model writes no reasoning text, so every text is "" (RP / RA missing)."""
  size = model.config.und_encoder.image_size
  n_img = getattr(model, "num_edit_image_tokens", model.num_image_tokens)
  length = n_img + 1 + text_len
  calls = [0]

  def edit(images, instructions):
    out = []
    for start in range(0, len(instructions), batch_size):
      imgs = list(images[start:start + batch_size])
      rows = _pad_batch(list(zip(imgs, instructions[start:start + batch_size])), batch_size)
      cond = jnp.asarray(np.stack([to_unit_range(np.asarray(i, np.uint8), size) for i, _ in rows]))
      prompts = [left_pad(edit_ids([tokenizer.bos_id], [tokenizer.image_id] * n_img,
                                   tokenizer.encode(t)[:text_len], layout), length, tokenizer.pad_id)
                 for _, t in rows]
      ids = jnp.asarray(np.stack([p[0] for p in prompts]))
      mask = jnp.asarray(np.stack([p[1] for p in prompts]))
      x = sample_edits(model, ids, mask, jax.random.fold_in(rng, calls[0]), cond, num_steps,
                       guidance, image_guidance)
      calls[0] += 1
      out.extend(to_uint8(x)[:len(imgs)])
    return np.stack(out), [""] * len(out)

  return edit


def geneval_generate_and_score(model, tokenizer, records: Sequence[dict], detector, *, rng: jax.Array,
                               num_steps: int = 20, guidance: float = 3.0, batch_size: int = 32,
                               prompt_len: int = 16, out_dir: str | None = None) -> dict[str, Any]:
  """Samples one image per GenEval-schema record, detects, and scores with the official rules.

  With `out_dir`, writes the official image-folder layout (`<dir>/<5-digit>/samples/0000.png` +
  metadata.jsonl), `results.jsonl` and the summary files. Returns {"summary", "results", "images"}.
  """
  results, images = [], []
  for b, chunk in enumerate(_batches(list(records), batch_size)):
    rows = _pad_batch(list(chunk), batch_size)
    ids, mask, _ = encode_prompts(tokenizer, [r["prompt"] for r in rows], prompt_len)
    x = sample_images(model, jnp.asarray(ids), jnp.asarray(mask), jax.random.fold_in(rng, b), num_steps,
                      guidance)
    for i, (record, img) in enumerate(zip(chunk, to_uint8(x))):
      index = b * batch_size + i
      name = f"{index:05d}/samples/0000.png"
      if out_dir:
        geneval.write_prompt_images(out_dir, index, record, [img])
      results.append(geneval.result_record(name, record, detector.detect(img)))
      images.append(img)
  summary = geneval.summarize(results)
  if out_dir:
    from jaxmodels.evals import reports
    geneval.write_results(os.path.join(out_dir, "results.jsonl"), results)
    reports.write_geneval_summary(out_dir, summary)
  return {"summary": summary, "results": results, "images": np.stack(images)}


def save_grid(images: np.ndarray, path: str, *, columns: int = 8, scale: int = 2) -> None:
  """Saves uint8 [N, S, S, 3] as one PNG grid (each image upscaled `scale`× with nearest)."""
  n, s = images.shape[0], images.shape[1]
  rows = math.ceil(n / columns)
  grid = np.full((rows * (s + 2), columns * (s + 2), 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, columns)
    grid[r * (s + 2) + 1: r * (s + 2) + 1 + s, c * (s + 2) + 1: c * (s + 2) + 1 + s] = img
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


EVALS = ("qa", "geneval", "colorbench", "rover")


def selected_evals(config) -> tuple[str, ...]:
  """The evaluations named by `config.evals.which` (comma-separated, default: all of `EVALS`; "" for
  none), checked against `EVALS` with a one-line error naming the key."""
  which = config.get("evals", {}).get("which", ",".join(EVALS))
  names = tuple(n.strip() for n in str(which).split(",") if n.strip())
  unknown = [n for n in names if n not in EVALS]
  if unknown:
    raise ConfigError(f"config.evals.which: unknown evaluation(s) {unknown}; expected a comma-separated "
                      f"subset of {list(EVALS)}")
  return names


def _present(table: dict) -> dict:
  """The entries that have a value (metric writers take numbers only)."""
  return {k: float(v) for k, v in table.items() if v is not None}


def evaluate_model(model, tokenizer, config, data_dir: str, workdir: str, *, rng, final: bool,
                   evals: Sequence[str] = EVALS) -> dict:
  """The ShapesWorld scores of a model, by benchmark (`evals` selects among `EVALS`).

  qa: Q/A accuracy on the validation split. colorbench: ShapesWorld-ColorBench (perception,
  reasoning, overall, robustness; a small subset in the loop, `evals.colorbench_per_task` /
  `colorbench_seeds` items at the end). A pixel-generating model writes `<workdir>/samples.png` at
  every evaluation (in the loop: `evals.loop_samples` prompts spread over the tags); with `final`
  also geneval (ShapesWorld-GenEval on the test split, `<workdir>/geneval/` in the official layout,
  plus `geneval_progress`: lenient-detector score and shape-fit diagnostics, shapes_progress.py); with
  `evals.loop_geneval_prompts` = n > 0 the in-loop evaluations score both on n spread test prompts
  (a learning curve in metrics.jsonl: `eval/geneval/*`, `eval/geneval_progress/*`)
  and rover (ShapesWorld-ROVER IG and TG, `evals.rover_tasks` each,
  exact scores on ROVER's 0..100 scale, `<workdir>/rover/`; needs an understanding encoder for
  the source image and a prompt-conditioned DiT, i.e. not queries="image_tokens"). Set sizes
  default to min(geneval_prompts, 16) (ColorBench: at most 8 per task).
  """
  from jaxmodels import shapes_world as sw
  from jaxmodels.evals import shapes_colorbench, shapes_rover
  from jaxmodels.evals.shapes_progress import progress_scores
  data = data_section(config.data, also="shapes_world")   # prompts as in training
  ev, cfg_name = config.evals, data.config
  # Sizes of the ColorBench / ROVER sets: config.evals keys, else scaled with geneval_prompts (so
  # smoke configs stay small).
  small = max(1, min(ev.geneval_prompts, 16))
  scores = {}
  can_read = model.und_encoder is not None
  layout, und_len, gen_len = data.und_layout, data.und_len, data.gen_len
  if "qa" in evals and can_read:
    val = sw.load_split(data_dir, "validation", cfg_name, decode=True)
    scenes = [val[i] for i in range(min(len(val), 4 * ev.qa_per_kind))]
    scores["qa"] = qa_accuracy(model, tokenizer, scenes, max_per_kind=ev.qa_per_kind,
                               batch_size=ev.batch_size, prompt_len=und_len,
                               layout=layout)
  if "colorbench" in evals and can_read:
    size = ev.colorbench_image_size
    rows = shapes_colorbench.make_rows(
        seed=config.seed, image_size=size,
        per_task=(ev.colorbench_per_task or min(small, 8)) if final else 2,
        robustness_seeds=(ev.colorbench_seeds or min(small, 8)) if final else 2)
    # Room for the longest option (an RGB value "[r, g, b]" is 7 words) and <eos>: a reply cut short
    # can never equal an option.
    longest = max(len(tokenizer.encode(str(c))) for r in rows for c in r["choices"])
    answer = model_answer_fn(model, tokenizer, batch_size=ev.batch_size, prompt_len=und_len,
                             max_new_tokens=longest + 1, layout=layout)
    result = shapes_colorbench.evaluate(answer, rows, batch_size=ev.batch_size, text="question",
                                        match_choices=True, progress=final)
    scores["colorbench"] = _present(shapes_colorbench.summary(result))
  if model.config.generates_pixels and "geneval" in evals:
    # Final: ShapesWorld-GenEval on the test prompts; in-loop: only a sample grid of the first
    # `evals.loop_samples` prompts (samples.png, overwritten at every evaluation).
    from jaxmodels.evals.detectors import ShapesDetector
    test = sw.load_split(data_dir, "test", cfg_name, decode=True)
    loop_scored = ev.loop_geneval_prompts   # > 0: in-loop evals score GenEval too
    n = ev.geneval_prompts if final else (loop_scored or ev.loop_samples)
    records = [test[i]["metadata"] for i in _spread(len(test), n)]
    out = geneval_generate_and_score(
        model, tokenizer, records, ShapesDetector(), rng=rng, num_steps=ev.sample_steps,
        guidance=ev.guidance, batch_size=ev.batch_size, prompt_len=gen_len,
        out_dir=os.path.join(workdir, "geneval") if final else None)
    if final or loop_scored:
      scores["geneval"] = {"overall": out["summary"]["overall"],
                           **{t: v["accuracy"] for t, v in out["summary"]["tags"].items()}}
      # Below the strict bar: how far off the samples are (diagnostics, not GenEval; see the module).
      scores["geneval_progress"] = progress_scores(out["images"], records)
    save_grid(out["images"][:64], os.path.join(workdir, "samples.png"))
  editable = can_read and model.config.queries != "image_tokens"   # prompts with image inputs
  if final and model.config.generates_pixels and "rover" in evals and editable:
    tasks = shapes_rover.make_tasks(seed=config.seed, num_ig=ev.rover_tasks or small,
                                    num_tg=ev.rover_tasks or small,
                                    image_size=model.config.output_image_size)
    edit = model_edit_fn(model, tokenizer, rng=jax.random.fold_in(rng, 7),
                         num_steps=ev.sample_steps, guidance=ev.guidance,
                         batch_size=ev.batch_size, layout=data.edit_layout)
    answer = model_answer_fn(model, tokenizer, batch_size=ev.batch_size,
                             prompt_len=und_len, layout=layout)
    out = shapes_rover.run(tasks, edit, answer_fn=answer, out_dir=os.path.join(workdir, "rover"),
                           batch_size=ev.batch_size, progress=True)
    scores["rover_ig"] = _present(out["IG"]["exact"])   # 0..100, missing metrics left out
    scores["rover_tg"] = _present(out["TG"]["exact"])
  return scores


def _spread(total: int, n: int) -> list[int]:
  """n indices spread evenly over range(total) (all of them when n >= total): the test split is grouped
  by tag, so a spread subset covers every tag."""
  if n >= total:
    return list(range(total))
  return sorted({int(i) for i in np.linspace(0, total - 1, n)})


def print_scores(scores: dict) -> None:
  """One block per benchmark: `name  value` lines (n/a for a missing value)."""
  print("\n== Scores ==")
  for bench, table in scores.items():
    print(f"{bench}:")
    for name, value in table.items():
      text = "n/a" if value is None else f"{value:6.3f}" if isinstance(value, (int, float)) \
          else str(value)
      print(f"  {name:<16} {text:>8}")
