"""Input pipelines for jaxmodels: datasets, sources, tokenisers and mixtures.

Sub-packages:
  shapes_world: the embedded procedural dataset (scenes of coloured shapes with
    GenEval-schema prompts, understanding Q/A and edit pairs).
"""
