"""Progress signals for ShapesWorld generation below the strict GenEval bar.

The strict ShapesWorld-GenEval detector (detectors.py) accepts only pixel-exact shapes, so an early or
weak generator scores exactly 0 whatever it draws, and comparisons between such runs (ablations,
learning-lever sweeps) carry no information. These numbers say how far off the samples are; they are
diagnostics, never a GenEval score:

  lenient_overall      GenEval overall (official rules) with `LENIENT`: shapes whose best exact fit has
                       IoU >= 0.9 (no margin to the runner-up, a looser outline and edge bar).
  objects_per_image    components sized like a ShapesWorld object (box sides >= the detector's minimum,
                       <= its maximum, off the border) — each gets a best shape fit.
  speckles_per_image   components below the minimum size (isolated 1-5 px specks).
  unfit_per_image      components too large or touching the border (merged blobs, colour fields).
  median_fit_iou       median best-fit IoU of the fitted components (0 without any); clean renders
                       reach >= 0.99, the strict bar is 0.98.
  fit_iou_90           fraction of the fitted components with best-fit IoU >= 0.9.

    from jaxmodels.evals.shapes_progress import progress_scores
    progress_scores(images_uint8, geneval_records)   # -> {"lenient_overall": ..., ...}
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmodels.evals import geneval
from jaxmodels.evals.detectors import ShapesDetector

LENIENT = dict(iou_bar=0.9, margin=0.0, edge_tolerance=1.0, min_sharpness=0.7)


def progress_scores(images: Sequence[np.ndarray], records: Sequence[dict], *,
                    detector: ShapesDetector | None = None) -> dict[str, float]:
  """images: generated [H, W, 3] uint8, one per GenEval-schema record (same order). See the module
  docstring for the keys."""
  if len(images) != len(records):
    raise ValueError(f"progress_scores: {len(images)} images for {len(records)} records")
  if not len(images):
    raise ValueError("progress_scores: no images")
  det = detector or ShapesDetector(**LENIENT)
  rows, ious, specks, unfit = [], [], 0, 0
  for i, (img, record) in enumerate(zip(images, records)):
    comps = det.analyze(img)
    rows.append(geneval.result_record(f"{i:05d}/samples/0000.png", record,
                                      [c.detection() for c in comps if c.accepted]))
    for c in comps:
      if c.shape is not None:
        ious.append(c.iou)
      elif c.reason.startswith("too small"):
        specks += 1
      else:
        unfit += 1
  n, fits = len(images), np.asarray(ious, np.float64)
  return {"lenient_overall": float(geneval.summarize(rows)["overall"]),
          "objects_per_image": len(fits) / n, "speckles_per_image": specks / n,
          "unfit_per_image": unfit / n,
          "median_fit_iou": float(np.median(fits)) if len(fits) else 0.0,
          "fit_iou_90": float(np.mean(fits >= 0.9)) if len(fits) else 0.0}
