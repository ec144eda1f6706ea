"""Background recolouring of ShapesWorld understanding images (jaxmodels/shapes_world/augment.py):
only background pixels change, never to a palette colour (so every answer about the objects, pixel
areas included, still holds), each kind as documented; the training source applies it to a fixed
fraction of elements and never to the generation target."""
import collections

import numpy as np
import pytest

from jaxmodels import shapes_world as sw
from jaxmodels.shapes_world import augment, palette
from input_pipeline.shapes_tasks import ShapesTaskSource, shapes_tokenizer, to_unit_range


@pytest.fixture(scope="module")
def scenes(data_dir):
  return sw.load_split(data_dir, "train", "tiny", decode=True)


def test_only_the_background_is_repainted_off_palette(scenes):
  grey = np.asarray(palette.BACKGROUND_RGB, np.uint8)
  seen = collections.Counter()
  for seed in range(60):
    ex = scenes[seed % len(scenes)]
    image, colours = ex["image"], [o["color"] for o in ex["scene"]["objects"]]
    out = augment.jitter_background(np.random.default_rng(seed), image, colours)
    bg = np.all(image == grey, -1)
    np.testing.assert_array_equal(out[~bg], image[~bg])
    tones = {tuple(int(v) for v in c) for c in out[bg]}
    assert not tones & {tuple(c) for c in palette.COLOR_RGB.values()}
    for c in colours:   # a colour's pixel area is unchanged
      rgb = palette.COLOR_RGB[c]
      assert np.all(out == rgb, -1).sum() == np.all(image == rgb, -1).sum()
    if len(tones) == 2:                       # two_tone: greys >= 60 apart, split at the middle
      seen["two_tone"] += 1
      cols = np.arange(image.shape[1])[None, :]
      left, right = out[bg & (cols < image.shape[1] // 2)], out[bg & (cols >= image.shape[1] // 2)]
      assert abs(int(left[0, 0]) - int(right[0, 0])) >= 59 and (left[:, 0] == left[:, 1]).all()
    else:
      (tone,) = tones
      near = min(np.linalg.norm(np.subtract(tone, palette.COLOR_RGB[c])) for c in colours)
      seen["near_object" if 19 <= near <= 61 else "random"] += 1
  assert min(seen.values()) >= 5 and len(seen) == 3, seen


def test_source_repaints_a_fixed_fraction_of_understanding_images(scenes):
  tok = shapes_tokenizer([scenes[i] for i in range(len(scenes))])
  src = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=48, und_image_size=32,
                         und_background=0.5)
  plain = ShapesTaskSource(scenes, tok, num_image_tokens=4, und_len=48, und_image_size=32)
  changed = []
  for i in range(64):
    a, b = src[i], plain[i]
    np.testing.assert_array_equal(a["gen_image"], b["gen_image"])        # the drawing target is untouched
    np.testing.assert_array_equal(a["und_ids"], b["und_ids"])
    np.testing.assert_array_equal(src[i]["und_image"], a["und_image"])   # a function of the index
    changed.append(not np.array_equal(a["und_image"], to_unit_range(scenes[i % len(scenes)]["image"], 32)))
  assert 0.3 < np.mean(changed) < 0.7
  with pytest.raises(ValueError, match="und_background"):
    ShapesTaskSource(scenes, tok, num_image_tokens=4, und_background=2.0)
