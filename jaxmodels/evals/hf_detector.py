"""GenEval detector `hf`: transformers Mask2Former (COCO instance) + CLIP zero-shot colours.

The official GenEval detector (evals.md §1.3, §1.6) is mmdetection-2.x Mask2Former Swin-S with
open_clip ViT-L/14 colours. This one runs the same model families through transformers, loaded
from LOCAL directories only (`local_files_only`; nothing is downloaded), batched, on CPU or GPU:

  detector   `Mask2FormerForUniversalSegmentation` (e.g. a local copy of
             facebook/mask2former-swin-small-coco-instance). Test-time resize as the mmdet 2.x
             configs: keep ratio, short side `short_side` (800) and long side <= `long_side`
             (1333), ImageNet normalisation (or the directory's preprocessor_config.json), pad to
             a multiple of 32. Instance post-processing as mmdet's: softmax class scores without
             the no-object class, top-`num_queries` (query, class) pairs, binary mask = mask
             logit > 0 resized to the image, score = class probability × mean sigmoid mask
             probability inside the binary mask, box = the mask's tight box (x2/y2 exclusive).
  colours    `CLIPModel` + its tokenizer (e.g. openai/clip-vit-large-patch14). Per class name
             one zero-shot classifier over GenEval's 10 colours: the three templates "a photo
             of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object",
             each embedding L2-normalised, averaged and normalised again; cached per class.
             Image side: the object's mask pasted on flat grey #999 (`bgcolor`), cropped to the
             box, CLIP preprocessing (resize the short side, centre crop, CLIP mean/std),
             normalised features; logits 100 × image·text; argmax.

Only detections with score > `color_min_score` (default 0.3, the lowest GenEval threshold), at
most `max_objects` (16) per class, get a colour; the rest have `color=None` — the GenEval rules
never look at them. The rules stay in `geneval.evaluate_detections`.

Example:
  det = HFDetector("weights/mask2former-swin-s-coco", "weights/clip-vit-large-patch14",
                   device="cuda")
  geneval.score_folder("gen/geneval", "evaluation_metadata.jsonl", det, out_dir="scores")
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxmodels.evals import EvalInputError

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_dir(path: str | os.PathLike, what: str) -> Path:
  path = Path(path)
  if not (path / "config.json").is_file():
    raise EvalInputError(f"{path}: no {what} weights here (config.json missing; weights are "
                         f"read from local directories only)")
  return path


def _processor_stats(path: Path, mean, std) -> tuple[np.ndarray, np.ndarray]:
  cfg = path / "preprocessor_config.json"
  if cfg.is_file():
    data = json.loads(cfg.read_text())
    mean, std = data.get("image_mean", mean), data.get("image_std", std)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def mask_box(mask: np.ndarray) -> list[int] | None:
  """Tight [x1, y1, x2, y2] (x2/y2 exclusive) of a bool [H, W] mask; None when empty."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return None
  return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


class HFDetector:
  """GenEval `Detector` from local transformers weights (see the module docstring).

  Args:
    detector_dir: local Mask2Former (COCO instance) directory.
    clip_dir: local CLIP directory (model + tokenizer).
    device: torch device ("cpu", "cuda", ...).
    class_names: label id → GenEval class name (default: the model's id2label).
    short_side / long_side: detector test-time resize.
    color_min_score: detections above this score get a colour.
    max_objects: colour at most this many detections per class.
    bgcolor: RGB pasted around the mask before colour classification (GenEval: #999).
    batch_size: images per detector forward pass in `detect_batch`; crops per CLIP pass.
    dtype: torch dtype name of both models ("float32"; "float16" / "bfloat16" on GPU).
  """

  name = "hf"

  def __init__(self, detector_dir: str | os.PathLike, clip_dir: str | os.PathLike, *,
               device: str = "cpu", class_names: Sequence[str] | None = None,
               short_side: int = 800, long_side: int = 1333, color_min_score: float = 0.3,
               max_objects: int = 16, bgcolor: Sequence[int] = (153, 153, 153),
               batch_size: int = 8, dtype: str = "float32"):
    import torch
    from transformers import AutoTokenizer, CLIPModel, Mask2FormerForUniversalSegmentation
    det_path, clip_path = _check_dir(detector_dir, "Mask2Former"), _check_dir(clip_dir, "CLIP")
    self.torch, self.device = torch, torch.device(device)
    self.dtype = getattr(torch, dtype)
    try:
      self.detector = Mask2FormerForUniversalSegmentation.from_pretrained(
          det_path, local_files_only=True, dtype=self.dtype).to(self.device).eval()
      self.clip = CLIPModel.from_pretrained(clip_path, local_files_only=True,
                                            dtype=self.dtype).to(self.device).eval()
      self.tokenizer = AutoTokenizer.from_pretrained(clip_path, local_files_only=True)
    except (OSError, ValueError) as e:
      raise EvalInputError(f"{det_path} / {clip_path}: cannot load weights "
                           f"({str(e).splitlines()[0]})") from None
    labels = self.detector.config.id2label
    self.class_names = list(class_names) if class_names is not None else [
        labels[i] for i in range(len(labels))]
    self.short_side, self.long_side = int(short_side), int(long_side)
    self.color_min_score, self.max_objects = float(color_min_score), int(max_objects)
    self.bgcolor = np.asarray(bgcolor, np.uint8)
    self.batch_size = max(1, int(batch_size))
    self.det_mean, self.det_std = _processor_stats(det_path, IMAGENET_MEAN, IMAGENET_STD)
    self.clip_mean, self.clip_std = _processor_stats(clip_path, CLIP_MEAN, CLIP_STD)
    self.clip_size = int(self.clip.config.vision_config.image_size)
    self._classifiers: dict[str, Any] = {}

  # ------------------------------------------------------------------------- detector

  def _resize_shape(self, h: int, w: int) -> tuple[int, int]:
    scale = min(self.short_side / min(h, w), self.long_side / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

  def _detector_inputs(self, images: Sequence[np.ndarray]):
    from PIL import Image
    sizes = [self._resize_shape(*img.shape[:2]) for img in images]
    ph = -(-max(s[0] for s in sizes) // 32) * 32
    pw = -(-max(s[1] for s in sizes) // 32) * 32
    batch = np.zeros((len(images), 3, ph, pw), np.float32)
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
      arr = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.float32) / 255.0
      batch[i, :, :h, :w] = ((arr - self.det_mean) / self.det_std).transpose(2, 0, 1)
    return self.torch.from_numpy(batch), sizes

  def _instances(self, class_logits, mask_logits, sizes: tuple[int, int, int, int],
                 out_hw: tuple[int, int]) -> list[dict]:
    """mmdet-style instance post-processing of one image (see the module docstring).

    Args:
      class_logits: [Q, C + 1] (last column: no object).
      mask_logits: [Q, h, w] at 1/4 of the padded input.
      sizes: (resized h, resized w, padded h, padded w) of this image in the batch input.
      out_hw: the original (H, W).

    Returns:
      Detections sorted by score, each with its bool [H, W] mask under "_mask".
    """
    torch = self.torch
    f = torch.nn.functional
    q, c1 = class_logits.shape
    num_classes = c1 - 1
    scores = f.softmax(class_logits.float(), -1)[:, :-1].flatten()
    top, index = scores.topk(min(q, scores.numel()))
    query, label = index // num_classes, index % num_classes
    masks = mask_logits.float()[query][None]  # [1, K, h, w] at 1/4 of the padded input
    masks = f.interpolate(masks, size=sizes[2:], mode="bilinear", align_corners=False)
    masks = masks[..., :sizes[0], :sizes[1]]
    masks = f.interpolate(masks, size=out_hw, mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    prob = masks.sigmoid()
    mask_score = (prob * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = (top * mask_score).cpu().numpy()
    binary = binary.cpu().numpy()
    out = []
    for k in np.argsort(-final, kind="stable"):
      box = mask_box(binary[k])
      if box is None:
        continue
      out.append({"class": self.class_names[int(label[k])], "box": box,
                  "score": float(final[k]), "color": None, "_mask": binary[k]})
    return out

  # ------------------------------------------------------------------------- colours

  def _classifier(self, cls: str):
    """[10, D] normalised text embeddings (template mean per colour) for a class name."""
    if cls not in self._classifiers:
      torch = self.torch
      texts = [t.format(c=c, cls=cls) for c in COLORS for t in TEMPLATES]
      tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
      with torch.no_grad():
        feats = self.clip.get_text_features(input_ids=tok["input_ids"],
                                            attention_mask=tok.get("attention_mask"))
      feats = getattr(feats, "pooler_output", feats).float()
      feats = feats / feats.norm(dim=-1, keepdim=True)
      feats = feats.reshape(len(COLORS), len(TEMPLATES), -1).mean(1)
      self._classifiers[cls] = feats / feats.norm(dim=-1, keepdim=True)
    return self._classifiers[cls]

  def _crop(self, image: np.ndarray, det: dict) -> np.ndarray:
    """The object on grey, cropped to its box and CLIP-preprocessed: float32 [3, S, S]."""
    from PIL import Image
    pasted = np.where(det["_mask"][..., None], image, self.bgcolor)
    x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
    crop = Image.fromarray(pasted[y1:y2, x1:x2])
    s = self.clip_size
    scale = s / min(crop.size)
    w, h = max(s, round(crop.size[0] * scale)), max(s, round(crop.size[1] * scale))
    crop = crop.resize((w, h), Image.BICUBIC)
    left, top = (w - s) // 2, (h - s) // 2
    arr = np.asarray(crop.crop((left, top, left + s, top + s)), np.float32) / 255.0
    return ((arr - self.clip_mean) / self.clip_std).transpose(2, 0, 1)

  def _colorize(self, jobs: list[tuple[np.ndarray, dict]]) -> None:
    torch = self.torch
    for start in range(0, len(jobs), self.batch_size):
      chunk = jobs[start:start + self.batch_size]
      pixels = torch.from_numpy(np.stack([self._crop(img, d) for img, d in chunk]))
      with torch.no_grad():
        feats = self.clip.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
      feats = getattr(feats, "pooler_output", feats).float()
      feats = feats / feats.norm(dim=-1, keepdim=True)
      for row, (_, det) in zip(feats, chunk):
        logits = 100.0 * self._classifier(det["class"]) @ row
        det["color"] = COLORS[int(logits.argmax())]

  # ------------------------------------------------------------------------- interface

  def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[dict]]:
    """Detections of each RGB uint8 [H, W, 3] image (sizes may differ), as `detect`."""
    from jaxmodels.evals.detectors import _as_image
    images = [_as_image(img) for img in images]
    results = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pixels, sizes = self._detector_inputs(chunk)
      with self.torch.no_grad():
        out = self.detector(pixel_values=pixels.to(self.device, self.dtype))
      padded = tuple(pixels.shape[-2:])
      for i, img in enumerate(chunk):
        results.append(self._instances(out.class_queries_logits[i], out.masks_queries_logits[i],
                                       sizes[i] + padded, img.shape[:2]))
    jobs = []
    for img, dets in zip(images, results):
      per_class: dict[str, int] = {}
      for d in dets:  # already sorted by score
        if d["score"] > self.color_min_score and per_class.get(d["class"], 0) < self.max_objects:
          per_class[d["class"]] = per_class.get(d["class"], 0) + 1
          jobs.append((img, d))
    self._colorize(jobs)
    for dets in results:
      for d in dets:
        d.pop("_mask")
    return results

  def detect(self, image: np.ndarray) -> list[dict]:
    """Every instance of one RGB image as `{"class", "box", "score", "color"}`, highest score
    first (colour None below `color_min_score`)."""
    return self.detect_batch([image])[0]
