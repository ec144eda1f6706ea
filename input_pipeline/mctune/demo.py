"""A generated instruction corpus for the MCTune demo: descriptions of ShapesWorld-style scenes whose
length and vocabulary vary independently of the instruction (`config.data.corpus = "shapes"`).

    records = shapes_descriptions(2000, seed=0)
    records[0]
    # {"instruction": "Describe the picture.", "input": "objects: red circle, blue star, ...",
    #  "output": "There is a red circle. The small blue star lies near the top edge.", "id": "shapes-0"}

Each scene has 2-7 objects (ShapesWorld's shapes and colours, a size and a place word each); the
response describes a random 1..all of them, in order, each with one of several sentence patterns
(4-12 words, 1-3 nouns). So the input fixes *what* can be said but not *how much*: without controls
the best a model can do is an average length; with [t_word] / [n_noun] it can say how many objects
and which patterns to use. Deterministic in (n, seed).
"""
from __future__ import annotations

import numpy as np

from jaxmodels.shapes_world import palette, shapes

SIZES = ("small", "large", "tiny", "big")
PLACES = ("top", "bottom", "left side", "right side", "middle", "corner")
PATTERNS = (
    "There is a {color} {shape}.",
    "A {size} {color} {shape} sits near the {place}.",
    "The {color} {shape} is {size}.",
    "You can see a {size} {color} {shape} at the {place} of the picture.",
    "Near the {place}, a {color} {shape} touches nothing.",
    "One {color} {shape} appears.",
)
INSTRUCTIONS = ("Describe the picture.", "Describe the scene.", "What does the picture show?",
                "Write a description of the image.")


def shapes_descriptions(n: int, seed: int = 0) -> list[dict]:
  """`n` Alpaca-style records (see the module docstring)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(rng.integers(2, 8))
    objs = [dict(shape=shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))],
                 color=palette.COLORS[int(rng.integers(len(palette.COLORS)))],
                 size=SIZES[int(rng.integers(len(SIZES)))], place=PLACES[int(rng.integers(len(PLACES)))])
            for _ in range(k)]
    said = int(rng.integers(1, k + 1))
    sentences = [PATTERNS[int(rng.integers(len(PATTERNS)))].format(**o) for o in objs[:said]]
    out.append({"instruction": INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))],
                "input": "objects: " + ", ".join(f"{o['size']} {o['color']} {o['shape']} at the {o['place']}"
                                                 for o in objs),
                "output": " ".join(sentences), "id": f"shapes-{i}"})
  return out
