"""Fits the pattern codebook of the sparse palette-patch image tokenizer (jaxmodels/unified/patch_tokens.py)
from a ShapesWorld split: every p×p foreground bit pattern of the renders, most frequent first.

    python tools/fit_patch_codebook.py --config=res32 --split=train --patch_size=4 \
        --out=jaxmodels/unified/codebooks/shapes_world_res32_p4.json

The shipped codebook (the tokenizer's vocabulary, like a BPE merges file) was made by that command; the
tokenizer maps a pattern outside it to its nearest by Hamming distance.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "res32", "ShapesWorld config (res32, default, tiny).")
_SPLIT = flags.DEFINE_string("split", "train", "Split (TFDS slicing works, e.g. train[:5000]).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: ~/.cache/jaxmodels/tfds).")
_PATCH = flags.DEFINE_integer("patch_size", 4, "Patch side p (p² <= 16).")
_OUT = flags.DEFINE_string("out", None, "Output JSON path.", required=True)


def main(argv):
  del argv
  import numpy as np

  from jaxmodels.shapes_world import builder, palette
  from jaxmodels.unified.patch_tokens import fit_codebook, save_codebook

  source = builder.load_split(_DATA_DIR.value, _SPLIT.value, _CONFIG.value, decode=True)
  images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
  colours = [palette.BACKGROUND_RGB] + [tuple(map(int, c)) for c in palette.PALETTE]
  keys = fit_codebook(images, colours, _PATCH.value)
  save_codebook(_OUT.value, keys, patch_size=_PATCH.value,
                source=f"shapes_world/{_CONFIG.value} {_SPLIT.value} ({len(images)} renders)")
  print(f"{len(keys)} patterns (background first) from {len(images)} images -> {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
