"""Progress signals below the strict GenEval bar (jaxmodels/evals/shapes_progress.py)."""
import numpy as np
import pytest

from jaxmodels.shapes_world import generator
from jaxmodels.shapes_world import palette
from jaxmodels.evals.shapes_progress import progress_scores

BG = np.array(palette.BACKGROUND_RGB, np.uint8)


def _examples(n=12, size=32):
  schedule = generator.tag_schedule(n, grouped=True)
  return [generator.generate_example("test", i, num_examples=n, image_size=size, schedule=schedule)
          for i in range(n)]


def test_clean_renders_score_like_the_strict_detector():
  exs = _examples()
  s = progress_scores([e.image for e in exs], [e.record for e in exs])
  assert s["lenient_overall"] == 1.0
  assert s["objects_per_image"] == np.mean([len(e.scene.objects) for e in exs])
  assert s["speckles_per_image"] == 0 and s["unfit_per_image"] == 0
  assert s["median_fit_iou"] >= 0.99 and s["fit_iou_90"] == 1.0


def test_near_misses_specks_and_blobs_are_counted_apart():
  exs = _examples()
  images, records = [], []
  for e in exs:
    img = e.image.copy()
    img[1:3, 1:3] = palette.COLOR_RGB["red"]         # a 2x2 speck
    images.append(img)
    records.append(e.record)
  blob = np.empty((32, 32, 3), np.uint8)
  blob[:] = BG
  blob[2:30, 2:30] = palette.COLOR_RGB["blue"]       # too large for an object
  ex = exs[0]
  eroded = ex.image.copy()                            # the object minus its top row: a near miss
  rows = np.nonzero((ex.image != BG).any(-1).any(1))[0]
  eroded[rows[0]] = BG
  s = progress_scores(images + [blob, eroded], records + [ex.record, ex.record])
  n = len(exs) + 2
  assert s["speckles_per_image"] == pytest.approx(len(exs) / n)
  assert s["unfit_per_image"] == pytest.approx(1 / n)
  assert 0.8 < s["median_fit_iou"] <= 1.0
  with pytest.raises(ValueError, match="2 images for 1 records"):
    progress_scores(images[:2], records[:1])
