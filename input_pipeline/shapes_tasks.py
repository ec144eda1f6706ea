"""ShapesWorld as training data for unified models: understanding Q/A + text-to-image pairs.

Element i of `ShapesTaskSource` joins, for scene s = i mod N, its prompt and image (generation) with
one of its open questions (understanding): round r = i div N asks kind (r + s) mod K of the K question
kinds the scene has (so every kind is asked equally often) and, within that kind, cycles through its
questions; one pass over the source visits every scene `questions_per_scene` times with different
questions. With `turns` = k > 1 one understanding sequence asks k different questions about its image
(a multi-turn conversation: k answers supervised per image encoding, turns that would not fit in
`und_len` are left out); the next element's round starts after them. Arrays (fixed shapes):

  und_image [S_u, S_u, 3] float32 in [-1, 1]      und_ids [T_u] int32: <bos> <image>×n question answer <eos>
  und_mask [T_u] int32 (right-padded)             und_loss_mask [T_u] int32: 1 on answer tokens and <eos>
  (und_ids with turns = k: <bos> <image>×n Q1 A1 <eos> ... Qk Ak <eos>; with layout="question_first"
   each turn shows the image after its question: <bos> Q1 <image>×n A1 <eos> ... Qk <image>×n Ak <eos>,
   with "question_twice" before and after it: <bos> Q1 <image>×n Q1 A1 <eos> ...)
  gen_image [S_g, S_g, 3] float32 in [-1, 1]      gen_ids [T_g] int32 prompt, left-padded; gen_mask [T_g]
  (no gen_* arrays with gen_image_size=None: a model that does not generate)

With `colorbench_images` = q > 0, a fixed fraction q of the understanding rows (another hash of i) ask
one ColorBench-style task about an image made for it instead (jaxmodels/shapes_world/colorbench_tasks.py:
dot plates, illusions, camouflage backgrounds, recolourings, ...; seeds [i, 0xCB], a stream apart from
the evaluation's), in the same layout, answered with the option's text; their dense labels are -1.

With `edit_fraction` = p > 0, a fixed pseudo-random fraction p of the elements (a hash of the index)
are edits instead of text-to-image pairs: gen_ids = <bos> <image>×n_e instruction (n_e =
`edit_image_tokens`, the model's placeholders for an edit source; default n), gen_image = the edit
target, and every element carries gen_cond_image [S_u, S_u, 3] (the source scene for edits, all −1,
i.e. black, for text-to-image rows, which hold no <image> placeholder). The model's generation loss
splices the source image's tokens into the instruction (MetaQuery-style editing, `edit_drop`). An
edit prompt longer than `gen_len` is an error, or with `long_edits="text_to_image"` that element is
its scene's text-to-image pair instead (a short `gen_len` then keeps the one- and short two-step edits).

    tok = shapes_tokenizer(train_raw)                      # WordTokenizer over ShapesWorld's words
    src = ShapesTaskSource(load_split(d, "train", "res32", decode="lazy"), tok, num_image_tokens=16)
    ds = input_pipeline.pipeline.make_dataset(src, seed=0, batch_size=32)
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from jaxmodels.config_schema import DATA_SOURCES

from input_pipeline.tokenizers import WordTokenizer

OPEN_QA_KINDS = ("color", "shape", "count", "position")


def _texts(record: dict[str, Any]) -> Iterable[str]:
  prompt = record["prompt"]
  yield prompt.decode() if isinstance(prompt, bytes) else prompt
  instruction = record.get("edit_instruction")
  if instruction is not None:
    yield instruction.decode() if isinstance(instruction, bytes) else instruction
  qa = record["qa"]
  for item in json.loads(qa) if isinstance(qa, (bytes, str)) else qa:
    yield item["question"]
    yield str(item["answer"])


def shapes_tokenizer(records: Iterable[dict[str, Any]]) -> WordTokenizer:
  """A word-level tokenizer over every prompt, edit instruction, question and answer in `records`
  (raw or decoded), and the words of the colour-reasoning questions and ColorBench-style tasks made on
  the fly."""
  from jaxmodels.shapes_world.colorbench_tasks import TEXTS as COLORBENCH_TEXTS
  from jaxmodels.shapes_world.qa import REASONING_TEXTS
  texts = [t for r in records for t in _texts(r)] + list(REASONING_TEXTS) + list(COLORBENCH_TEXTS)
  return WordTokenizer.from_texts(texts)


def to_unit_range(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3] in [-1, 1] (nearest resize keeps flat colours flat)."""
  if image.shape[0] != size or image.shape[1] != size:
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST))
  return image.astype(np.float32) / 127.5 - 1.0


QA_KINDS = OPEN_QA_KINDS + ("colorbench",)


def open_questions(qa: Sequence[dict], kinds: Sequence[str] = OPEN_QA_KINDS) -> list[dict]:
  """The items of `kinds` as open questions: a stored ColorBench-style item (kind "colorbench", with
  choices) is asked as its bare question with its choice text as the answer, as the ShapesWorld
  ColorBench evaluation asks it."""
  return [q if "choices" not in q else {"kind": q["kind"], "question": q["question"], "answer": q["answer"]}
          for q in qa if q.get("kind") in kinds]


def scene_questions(ex: dict[str, Any], kinds: Sequence[str]) -> list[dict]:
  """The example's stored Q/A items, plus its colour-reasoning questions (`qa.reasoning_questions`,
  made from its scene) when `kinds` asks for "colorbench"."""
  if "colorbench" not in kinds:
    return list(ex["qa"])
  from jaxmodels.shapes_world.qa import reasoning_questions
  from jaxmodels.shapes_world.scene import Scene
  return list(ex["qa"]) + reasoning_questions(Scene.from_dict(ex["scene"]))


def pick_question(qa: Sequence[dict], kinds: Sequence[str], *, scene: int, round_: int) -> dict:
  """The open question of round `round_` for scene index `scene`: kinds taken in turn (offset by the
  scene, so a batch mixes kinds), questions of a kind in turn (see the module docstring)."""
  by_kind = [[q for q in open_questions(qa, (k,))] for k in kinds]
  by_kind = [qs for qs in by_kind if qs]
  j = round_ + scene
  qs = by_kind[j % len(by_kind)]
  return qs[(j // len(by_kind) + scene) % len(qs)]


def dense_labels(scene: dict[str, Any], image_size: int, grid: int) -> np.ndarray:
  """Per-cell object labels of a scene for an auxiliary dense loss on the understanding encoder.

  The image_size² canvas is cut into grid×grid cells (one per encoder token); a cell is labelled with
  the object that covers most of its pixels (exact visible masks, later objects on top), 0 where no
  object touches it. Returns int32 [grid, grid, 2]: (1 + shape index in `shapes.SHAPES`, 1 + colour
  index in `palette` order), 0 = background.
  """
  from jaxmodels.shapes_world import palette, shapes
  from jaxmodels.shapes_world.render import visible_masks
  from jaxmodels.shapes_world.scene import Scene
  if image_size % grid:
    raise ValueError(f"dense labels: image size {image_size} is not a multiple of the grid {grid}")
  sc = Scene.from_dict(scene)
  masks = visible_masks(sc, image_size)                                 # [K, S, S]
  c = image_size // grid
  counts = masks.reshape(len(masks), grid, c, grid, c).sum((2, 4))            # [K, G, G]
  labels = np.zeros((grid, grid, 2), np.int32)
  if len(masks):
    best = counts.argmax(0)
    table = np.array([[1 + shapes.shape_id(o.shape), 1 + palette.color_id(o.color)] for o in sc.objects],
                     np.int32)
    labels = np.where((counts.max(0) > 0)[..., None], table[best], 0).astype(np.int32)
  return labels


def _leaks(item: dict, context: str, kinds_asked: set) -> bool:
  """Whether an earlier turn's text gives `item`'s answer away: its answer occurs in the conversation so
  far ("What color is the cross? green" then "What shape is the green object?"), or it is a second
  position question (a relation answered once implies the others)."""
  answer = f" {str(item['answer']).lower()} "
  words = " " + " ".join(w.strip("?.,") for w in context.split()) + " "
  return answer in words or (item["kind"] == "position" and "position" in kinds_asked)


UND_LAYOUTS = ("image_first", "question_first", "question_twice")


def und_prompt(tokenizer: WordTokenizer, question: str | Sequence[int], num_image_tokens: int,
               layout: str = "image_first") -> list[int]:
  """The prompt whose next token starts the answer: <bos> <image>×n question ("image_first"),
  <bos> question <image>×n ("question_first": the image tokens attend to the question, so a causal
  LLM can mark the object it names before the answer is read out) or <bos> question <image>×n
  question ("question_twice": both). `question`: text or token ids."""
  return [tokenizer.bos_id] + _turn(tokenizer, question, num_image_tokens, layout)


def _turn(tokenizer: WordTokenizer, question: str | Sequence[int], num_image_tokens: int,
          layout: str) -> list[int]:
  image = [tokenizer.image_id] * num_image_tokens
  text = tokenizer.encode(question) if isinstance(question, str) else list(question)
  if layout == "image_first":
    return image + text
  if layout == "question_first":
    return text + image
  if layout == "question_twice":
    return text + image + text
  raise ValueError(f"data.und_layout={layout!r}: expected one of {UND_LAYOUTS}")


EDIT_LAYOUTS = ("image_first", "instruction_first")


def edit_ids(bos: list[int], image: list[int], text: list[int], layout: str = "image_first") -> list[int]:
  """An edit prompt from its parts: bos + image placeholders + instruction ("image_first") or bos +
  instruction + placeholders ("instruction_first"; data.edit_layout). Training, the evaluations and
  serving all build edit prompts here."""
  if layout == "image_first":
    return bos + image + text
  if layout == "instruction_first":
    return bos + text + image
  raise ValueError(f"data.edit_layout={layout!r}: expected one of {EDIT_LAYOUTS}")


def edit_prompt(tokenizer: WordTokenizer, instruction: str, num_image_tokens: int,
                layout: str = "image_first") -> list[int]:
  """<bos> <image>×n instruction (or the instruction first, `layout`): the source image's tokens and
  what to change."""
  return edit_ids([tokenizer.bos_id], [tokenizer.image_id] * num_image_tokens, tokenizer.encode(instruction),
                  layout)


def left_pad(ids: Sequence[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads (keeping the last `length` tokens): (ids int32 [length], mask int32 [length])."""
  ids = list(ids)[-length:]
  out = np.full((length,), pad_id, np.int32)
  mask = np.zeros((length,), np.int32)
  if ids:
    out[length - len(ids):] = ids
    mask[length - len(ids):] = 1
  return out, mask


# Default token lengths of the understanding sequence and of the generation prompt (data.und_len /
# data.gen_len), shared with the ShapesWorld evaluations, which prompt the model at the same lengths.
UND_LEN, GEN_LEN = (DATA_SOURCES["shapes_world"][k].default for k in ("und_len", "gen_len"))


class ShapesTaskSource:
  """Random-access training elements (see the module docstring); picklable for Grain workers."""

  def __init__(self, scenes: Sequence[dict[str, Any]], tokenizer: WordTokenizer, *, num_image_tokens: int,
               und_len: int = UND_LEN, gen_len: int = GEN_LEN, und_image_size: int = 32,
               gen_image_size: int | None = 32,
               questions_per_scene: int = 4, qa_kinds: Sequence[str] = OPEN_QA_KINDS,
               edit_fraction: float = 0.0, turns: int = 1, dense_grid: int = 0, leak_free: bool = False,
               layout: str = "image_first", und_background: float = 0.0, long_edits: str = "raise",
               edit_image_tokens: int | None = None, colorbench_images: float = 0.0,
               edit_layout: str = "image_first"):
    if layout not in UND_LAYOUTS:
      raise ValueError(f"data.und_layout={layout!r}: expected one of {UND_LAYOUTS}")
    if not 0.0 <= edit_fraction <= 1.0:
      raise ValueError(f"edit_fraction={edit_fraction} must be in [0, 1]")
    self.scenes, self.tok = scenes, tokenizer
    self.n_img, self.und_len, self.gen_len = num_image_tokens, und_len, gen_len
    self.n_edit = num_image_tokens if edit_image_tokens is None else edit_image_tokens
    self.und_size, self.gen_size = und_image_size, gen_image_size
    unknown = [k for k in qa_kinds if k not in QA_KINDS]
    if unknown or not qa_kinds:
      raise ValueError(f"data.qa_kinds={','.join(qa_kinds)!r}: expected a comma-separated subset of "
                       f"{','.join(QA_KINDS)}")
    self.k, self.kinds = questions_per_scene, tuple(qa_kinds)
    self.edit_fraction, self.turns = edit_fraction, turns
    self.dense_grid, self.leak_free, self.layout = dense_grid, leak_free, layout
    if not 0.0 <= und_background <= 1.0:
      raise ValueError(f"data.und_background={und_background} must be in [0, 1]")
    self.und_background = und_background
    if long_edits not in ("raise", "text_to_image"):
      raise ValueError(f"data.long_edits={long_edits!r}: expected 'raise' or 'text_to_image'")
    self.long_edits = long_edits
    if edit_layout not in EDIT_LAYOUTS:
      raise ValueError(f"data.edit_layout={edit_layout!r}: expected one of {EDIT_LAYOUTS}")
    self.edit_layout = edit_layout
    if not 0.0 <= colorbench_images <= 1.0:
      raise ValueError(f"data.und_colorbench={colorbench_images} must be in [0, 1]")
    self.colorbench_images = colorbench_images

  def _colorbench_item(self, i: int):
    """(image uint8, question, answer) of a ColorBench-style task for a fixed fraction
    `colorbench_images` of the elements (a hash of i), else None. Drawn from a seed stream of its own
    ([i, 0xCB]), apart from the evaluation's (shapes_colorbench.make_rows)."""
    if not self.colorbench_images or ((int(i) * 2246822519 + 7) % 2**32) / 2**32 >= self.colorbench_images:
      return None
    from jaxmodels.shapes_world.colorbench_tasks import training_item
    for attempt in range(20):
      item = training_item(np.random.default_rng([int(i), 0xCB, attempt]), self.und_size)
      if item is not None:
        return item
    return None

  def is_edit(self, i: int) -> bool:
    """Whether element i is an edit (a fixed hash of i, so a fraction `edit_fraction` of any range)."""
    return (int(i) * 2654435761 % 2**32) / 2**32 < self.edit_fraction

  def __len__(self) -> int:
    return len(self.scenes) * self.k

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    n = len(self.scenes)
    ex = self.scenes[int(i) % n]
    first = self.layout == "image_first"    # the image once, at the start; else once per turn
    ids = [self.tok.bos_id] + ([self.tok.image_id] * self.n_img if first else [])
    weights = [0] * len(ids)
    asked, context, kinds_asked = set(), " ", set()
    qa = scene_questions(ex, self.kinds)
    for t in range(self.turns):   # <bos> <image>×n Q1 A1 <eos> Q2 A2 <eos> ...; loss on A_t <eos>
      item = pick_question(qa, self.kinds, scene=int(i) % n, round_=(int(i) // n) * self.turns + t)
      question = (self.tok.encode(item["question"]) if first   # Q_t [<image>×n [Q_t]] A_t
                  else _turn(self.tok, item["question"], self.n_img, self.layout))
      answer = self.tok.encode(str(item["answer"])) + [self.tok.eos_id]
      if item["question"] in asked or (t and len(ids) + len(question) + len(answer) > self.und_len):
        continue
      if self.leak_free and _leaks(item, context, kinds_asked):
        continue
      asked.add(item["question"])
      context += f"{item['question']} {item['answer']} ".lower()
      kinds_asked.add(item["kind"])
      ids, weights = ids + question + answer, weights + [0] * len(question) + [1] * len(answer)
    cb = self._colorbench_item(i)
    if cb is not None:   # this understanding row is one ColorBench-style task instead of the scene's Q/A
      question = und_prompt(self.tok, cb[1], self.n_img, self.layout)   # the same layout as Q/A turns
      answer = self.tok.encode(cb[2]) + [self.tok.eos_id]
      ids, weights = question + answer, [0] * len(question) + [1] * len(answer)
    ids, weights = ids[:self.und_len], weights[:self.und_len]
    und_ids = np.full((self.und_len,), self.tok.pad_id, np.int32)
    und_ids[:len(ids)] = ids
    und_mask = (np.arange(self.und_len) < len(ids)).astype(np.int32)
    loss_mask = np.zeros((self.und_len,), np.int32)
    loss_mask[:len(weights)] = weights
    image = ex["image"]
    und_image = image if cb is None else cb[0]
    if self.und_background and cb is None:   # a fixed fraction (a function of i): background repainted
      rng = np.random.default_rng([int(i), 0xB6])
      if rng.random() < self.und_background:
        from jaxmodels.shapes_world.augment import jitter_background
        und_image = jitter_background(rng, image, [o["color"] for o in ex["scene"]["objects"]])
    out = dict(und_image=to_unit_range(und_image, self.und_size), und_ids=und_ids, und_mask=und_mask,
               und_loss_mask=loss_mask)
    if self.dense_grid:   # a ColorBench-style image has no scene: no labels (-1, left out of the loss)
      out["und_labels"] = (dense_labels(ex["scene"], self.und_size, self.dense_grid) if cb is None
                           else np.full((self.dense_grid, self.dense_grid, 2), -1, np.int32))
    if self.gen_size is None:   # a model that does not generate (Florence-VL): understanding rows only
      return out
    prompt = (edit_prompt(self.tok, ex["edit_instruction"], self.n_edit, self.edit_layout)
              if self.edit_fraction and self.is_edit(i) else None)
    if prompt is not None and len(prompt) > self.gen_len:   # truncating would drop the image's tokens
      if self.long_edits == "raise":
        raise ValueError(f"an edit prompt has {len(prompt)} tokens > data.gen_len={self.gen_len}; raise "
                         f"data.gen_len to at least {len(prompt)} (or data.long_edits='text_to_image')")
      prompt = None             # long_edits="text_to_image": this element is the scene's own caption
    if prompt is not None:
      target, cond = ex["edit_image"], to_unit_range(image, self.und_size)
    else:
      prompt = [self.tok.bos_id] + self.tok.encode(ex["prompt"])
      target, cond = image, np.full((self.und_size, self.und_size, 3), -1.0, np.float32)
    out["gen_ids"], out["gen_mask"] = left_pad(prompt, self.gen_len, self.tok.pad_id)
    out["gen_image"] = to_unit_range(target, self.gen_size)
    if self.edit_fraction:
      out["gen_cond_image"] = cond
    return out
