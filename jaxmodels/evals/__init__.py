"""Benchmark scoring that follows the official rules: GenEval, ColorBench and ROVER-style.

The scoring modules are pure Python (numpy, pillow; pyarrow only where parquet is read) and never
import JAX, so they run next to any model, or on outputs saved by another framework (shapes_world
is the JAX side, hf_detector the torch one):

  geneval     GenEval rules on detections, the official image-folder layout, results.jsonl
              and the summary_scores shape; detectors plug in through `geneval.Detector`.
  colorbench  ColorBench data loading, prompt text, answer extraction and metrics.
  rover       ROVER-IG/TG data layouts, judge-driven scoring with a resumable jsonl, summary.
  judges      the `Judge` interface and an OpenAI-compatible HTTP judge (standard library only).
  detectors   the `shapes` GenEval detector (pixel geometry: jaxmodels/shapes_world/shape_fit.py) and `make_detector`;
  hf_detector the `hf` detector (transformers Mask2Former + CLIP, torch; local weights only).
  shapes_colorbench, shapes_rover   ShapesWorld versions of ColorBench and ROVER, made on the fly
              and scored exactly (ROVER without a judge).
  shapes_world  a unified model's ShapesWorld scores and its answer / edit adapters (JAX).
  geneval_generate  a model's images of a GenEval prompt file in the official layout, resumable
              (JAX, imported only when `generate` runs).
  reports     JSON / JSONL / summary writers, scores.md tables and bar charts.

Example:
  from jaxmodels.evals import geneval
  ok, reason = geneval.evaluate_detections(
      {"tag": "single_object", "include": [{"class": "cow", "count": 1}]},
      [{"class": "cow", "box": [0, 0, 40, 40], "score": 0.8, "color": None}])
  # ok is True, reason == ""

The submodules are imported on demand (`from jaxmodels.evals import rover`), so importing this
package costs nothing.
"""
from jaxmodels.errors import JaxModelsError


class EvalInputError(JaxModelsError):
  """An evaluation input is missing, malformed or incomplete; the message names the culprit."""


__all__ = ["EvalInputError"]
