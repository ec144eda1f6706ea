"""A model used without the HTTP layer (sample.py): a training run through serving's `ServingModel`, or
a paper's released checkpoint directory through `jaxmodels.unified.from_pretrained`, behind one interface.

    model = open_model("runs/shapes_tiny")                 # or a released directory (BLIP3-o, MetaQuery, ...)
    images = model.draw([("a red circle", None, 4)], rng=key, steps=20, guidance=3.0)   # uint8 [S, S, 3] each
    texts = model.answer([("what color is it ?", image_u8, 0)], max_tokens=16, temperature=0.0)

Both report what they can do (`generates`, `reads_images`, `edit_why`: None when editing works, else
why not) and their sampling defaults, so the caller checks every request before anything runs.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import CheckpointFormatError, ConfigError


def open_model(path: str, *, config=None, step: int | None = None, one_device: bool = False,
               limits=None, edits: str = "auto", seed: int = 0, layout: str | None = None):
  """A training run (a workdir or its checkpoints/ folder, or any folder with `config` naming released
  towers) -> `RunModel`; a released paper checkpoint (config.json of BLIP3-o, BLIP3o-NEXT, MetaQuery or
  Florence-VL) -> `ReleasedModelRunner`."""
  norm = os.path.normpath(path)
  is_run = os.path.isdir(os.path.join(norm, "checkpoints")) or os.path.basename(norm) == "checkpoints"
  if config is None and not is_run and os.path.isfile(os.path.join(norm, "config.json")):
    from jaxmodels.unified import from_pretrained
    return ReleasedModelRunner(from_pretrained(norm))
  from jaxmodels.serving.engine import ServingModel
  from jaxmodels.serving.loader import load_checkpoint
  from jaxmodels.serving.schema import Limits
  loaded = load_checkpoint(path, config, step, one_device=one_device)
  sm = ServingModel(loaded, limits=limits or Limits(), edits=edits, seed=seed)
  return RunModel(sm, layout or (loaded.config.get("data") or {}).get("und_layout", "image_first"))


class RunModel:
  """A training run's model through serving's request handling (its tokenizer, chat layout, samplers)."""

  def __init__(self, sm, layout: str):
    self.sm, self.layout = sm, layout
    self.generates, self.reads_images, self.edit_why = sm.generates, sm.reads_images, sm.edit_why
    self.default_steps, self.default_guidance = sm.default_steps, sm.default_guidance

  def draw(self, rows: Sequence[tuple[str, np.ndarray | None, int]], *, rng, steps: int, guidance: float,
           image_guidance: float | None = None, edit: bool = False, batch: int | None = None) -> list:
    """rows (text, input image or None, how many) -> their images in order (one call, padded to
    `batch` rows)."""
    from jaxmodels.serving.schema import ImageRequest
    works = [self.sm.image_work(ImageRequest(model=None, prompt=text, n=n, size=None, steps=steps,
                                             guidance=guidance, image_guidance=image_guidance if edit else None,
                                             seed=None, image=image), float("inf"), edit=edit)
             for text, image, n in rows]
    total = sum(n for *_, n in rows)
    _, results = self.sm.run(works, max(batch or total, total), rng)
    return [img for res in results for img in res]

  def answer(self, rows: Sequence[tuple[str, np.ndarray, int]], *, max_tokens: int,
             temperature: float) -> list[str]:
    """rows (question, image uint8 [H, W, 3], seed) -> answers, in the run's chat layout."""
    from jaxmodels.serving.schema import ChatRequest
    works = []
    for question, image, seed in rows:
      text = f"{question} <image>" if self.layout == "question_first" else f"<image> {question}"
      works.append(self.sm.chat_work(ChatRequest(
          model=None, messages=[{"role": "user", "content": text}], images=[image], max_tokens=max_tokens,
          temperature=temperature, top_p=1.0, seed=seed, stop=[], n=1, stream=False, include_usage=False),
          float("inf")))
    _, results = self.sm.run(works, len(works), jax.random.key(0))   # chat rows carry their own keys
    return [self.sm.decode(res[0]["tokens"]) for res in results]


@nnx.jit(static_argnames=("kw",))
def _generate(model, ids, mask, rng, kw, cond_images=None):
  return model.generate_image(ids, mask, rng, cond_images=cond_images, **dict(kw))


@nnx.jit(static_argnames=("num_steps", "guidance"))
def _decode(decoder, feats, null, rng, num_steps, guidance):
  return decoder.decode(feats, null, rng, num_steps=num_steps, guidance=guidance)


class ReleasedModelRunner:
  """A released paper checkpoint (`ReleasedModel`): prompts in the paper's own chat layout (system
  prompt, template, suffix), its sampling settings, and for BLIP3-o the pixel decoder rendering the
  generated CLIP features with CFG against the features of the prompt " " (spec §2.6)."""

  decoder_steps, decoder_guidance = 50, 3.0

  def __init__(self, released):
    from input_pipeline.tokenizers import load_tokenizer
    self.r, self.model = released, released.model
    if released.tokenizer_dir is None:
      raise CheckpointFormatError(f"{released.path}: no tokenizer.json / tokenizer_config.json to encode "
                                  f"prompts with")
    self.tok = load_tokenizer(released.tokenizer_dir)
    self.generates = released.can_generate and released.generates_pixels
    self.reads_images = released.can_answer
    self.edit_why = None if released.can_edit and self.generates else (
        f"{released.kind}: this release has no editing path (ReleasedModel.can_edit; notes: "
        f"{'; '.join(released.notes) or 'none'})")
    self.default_steps = int(released.sampling.get("num_steps", 30))
    self.default_guidance = float(released.sampling.get("guidance", 3.0))
    self.pad = getattr(self.tok, "pad_id", None) or 0
    self._null = {}   # sampling settings -> the generated features of the prompt " " (BLIP3-o's CFG null)

  def _encode(self, rendered: str) -> list[int]:
    """Rendered chat text -> ids, each "<image>" slot replaced by the model's image placeholders."""
    pieces = rendered.split("<image>")
    ids = self.tok.encode(pieces[0])
    for piece in pieces[1:]:
      ids += [self.model.config.image_token_id] * self.model.num_image_tokens + self.tok.encode(piece)
    return ids

  def _prompt_ids(self, text: str, edit: bool = False) -> list[int]:
    """A generation prompt; `edit`: the instruction after the input image's slot, laid out as the
    release's understanding turn (`answer_template`), then the generation suffix. The caption limit
    keeps the image's placeholders whole (it cuts text before them)."""
    messages = self.r.answer_messages(text) if edit else self.r.generation_messages(text)
    rendered = self.tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = self._encode(rendered + self.r.prompt_suffix)
    limit = self.r.max_prompt_tokens
    if limit is None or edit:
      return ids
    return ids[-limit:]

  def _batch(self, prompts: list[list[int]]):
    from input_pipeline.shapes_tasks import left_pad
    length = 1 << max(4, (max(len(p) for p in prompts) - 1).bit_length())   # bucketed: few programs
    rows = [left_pad(p, length, self.pad) for p in prompts]
    return jnp.asarray(np.stack([r[0] for r in rows])), jnp.asarray(np.stack([r[1] for r in rows]))

  def draw(self, rows, *, rng, steps: int, guidance: float, image_guidance=None, edit: bool = False,
           batch: int | None = None) -> list:
    from input_pipeline.datasets import prepare_image
    from jaxmodels.unified.sampling import to_uint8
    if edit and self.edit_why:
      raise ConfigError(self.edit_why)
    texts = [text for text, _, n in rows for _ in range(n)]
    prompts = [self._prompt_ids(t, edit) for t in texts]
    total = max(batch or len(prompts), len(prompts))
    prompts += [prompts[-1]] * (total - len(prompts))
    ids, mask = self._batch(prompts)
    settings = {**self.r.sampling, "num_steps": steps, "guidance": guidance}
    cond = None
    if edit:
      side = self.model.answer_image_size
      cond = [prepare_image(image, side) for _, image, n in rows for _ in range(n)]
      cond = jnp.asarray(np.stack(cond + [cond[-1]] * (total - len(cond))))
      if image_guidance is not None:
        settings["image_guidance"] = image_guidance
    kw = tuple(sorted(settings.items()))
    k_gen, k_null, k_dec = jax.random.split(rng, 3)
    x = _generate(self.model, ids, mask, k_gen, kw, cond)
    if self.r.pixel_decoder is not None:          # BLIP3-o: CLIP features [B, 8, 8, C] -> pixels
      if kw not in self._null:              # one null per sampling setting, not one per call
        null_ids, null_mask = self._batch([self._prompt_ids(" ")])
        self._null[kw] = _generate(self.model, null_ids, null_mask, k_null, kw)
      null = self._null[kw]
      flat = lambda f: f.reshape(f.shape[0], -1, f.shape[-1])  # noqa: E731  (row-major 64 tokens)
      x = _decode(self.r.pixel_decoder, flat(x), flat(null), k_dec, self.decoder_steps, self.decoder_guidance)
    return list(to_uint8(x))[:len(texts)]

  def answer(self, rows, *, max_tokens: int, temperature: float) -> list[str]:
    """rows (question, image uint8 [H, W, 3], seed) -> answers: the release's answer template, the
    image resized to the understanding side, `model.answer` (M-RoPE positions on Qwen2.5-VL
    backbones); one sampling key for the batch, from the first row's seed."""
    from input_pipeline.datasets import prepare_image
    model = self.model
    ids, mask = self._batch([self._encode(self.tok.apply_chat_template(
        self.r.answer_messages(question), add_generation_prompt=True)) for question, _, _ in rows])
    pixels = jnp.asarray(np.stack([prepare_image(img, model.answer_image_size) for _, img, _ in rows]))
    eos = [t for t in (self.tok.eos_id, self.tok.token_to_id("<|im_end|>"), self.tok.token_to_id("<|eot_id|>"),
                       self.tok.token_to_id("<|end|>")) if t is not None]
    out = model.answer(pixels, ids, mask, max_tokens, temperature=temperature, rng=jax.random.key(int(rows[0][2])),
                       eos_token_id=eos or None, pad_token_id=self.pad)
    stop = set(eos) | {self.pad}
    return [self.tok.decode([t for t in np.asarray(row).tolist() if t not in stop]).strip() for row in out]
