"""ShapesWorld: the embedded, procedural dataset of jaxmodels.

Scenes of 1-4 flat-coloured shapes (the GenEval "classes" circle, square,
triangle, diamond, star, cross) in GenEval's 10 colours on a grey background,
each with a GenEval-schema record and prompt, understanding Q/A pairs
(colour, shape, count, position, ColorBench-style multiple choice) and an edit
pair (spatial, quantitative, colour or sequence) for ROVER-style tasks.
Everything is deterministic from a seed.

The bottom package of the tree: it imports nothing of ours but `jaxmodels.errors` (so its errors are
the CLI's one-line user errors); input_pipeline, the evaluations, the GRPO rewards and the configs
import it downwards (tests/test_layering.py).

Modules (one concept each):
  palette    the 10 colours' RGB values and the background
  shapes     the shape vocabulary and exact rasterisation
  scene      `Scene` / `SceneObject` dataclasses, signatures, referring phrases
  render     renderer (image, exact masks, boxes), PNG, scene rules
  geneval    GenEval tags, templates, records, position rule, tag proportions
  layout     random placement obeying the scene rules and relations
  qa         understanding Q/A and ColorBench-style items
  edits      edit pairs
  generator  examples and splits from seeds
  builder    TFDS builder `shapes_world` (ArrayRecord, no TensorFlow), `load_split`
  lazy       records whose fields are decoded on first access (`load_split(decode="lazy")`)
  augment    background recolouring of understanding images
  shape_fit  pixel geometry of the exact shape detector: components, best shape fits, outline evidence

Example:
  >>> from jaxmodels import shapes_world as sw
  >>> scene = sw.Scene((sw.SceneObject("circle", "red", (0.3, 0.5), 0.3),))
  >>> image = sw.render(scene, 64)                     # uint8 [64, 64, 3]
  >>> src = sw.load_split("/tmp/tfds", "train", config="tiny", decode=True)  # doctest: +SKIP
  >>> src[0]["metadata"]["prompt"]  # doctest: +SKIP
  'a photo of ...'
"""

from jaxmodels.shapes_world.builder import DecodedSource
from jaxmodels.shapes_world.builder import ShapesWorld
from jaxmodels.shapes_world.builder import ShapesWorldConfig
from jaxmodels.shapes_world.builder import decode_example
from jaxmodels.shapes_world.builder import get_builder
from jaxmodels.shapes_world.builder import load_split
from jaxmodels.shapes_world.builder import make_config
from jaxmodels.shapes_world.builder import prepare
from jaxmodels.shapes_world.edits import EDIT_KINDS
from jaxmodels.shapes_world.edits import apply_steps
from jaxmodels.shapes_world.edits import make_edit
from jaxmodels.shapes_world.generator import Example
from jaxmodels.shapes_world.generator import generate_example
from jaxmodels.shapes_world.generator import generate_split
from jaxmodels.shapes_world.generator import geneval_prompt_set
from jaxmodels.shapes_world.generator import to_features
from jaxmodels.shapes_world.geneval import OFFICIAL_TAG_COUNTS
from jaxmodels.shapes_world.geneval import RELATIONS
from jaxmodels.shapes_world.geneval import TAGS
from jaxmodels.shapes_world.geneval import relative_position
from jaxmodels.shapes_world.geneval import tag_counts
from jaxmodels.shapes_world.palette import BACKGROUND_RGB
from jaxmodels.shapes_world.palette import COLOR_RGB
from jaxmodels.shapes_world.palette import COLORS
from jaxmodels.shapes_world.palette import nearest_color
from jaxmodels.shapes_world.qa import COLORBENCH_TASKS
from jaxmodels.shapes_world.qa import make_qa
from jaxmodels.shapes_world.render import Rendering
from jaxmodels.shapes_world.render import SceneError
from jaxmodels.shapes_world.render import check_scene
from jaxmodels.shapes_world.render import decode_png
from jaxmodels.shapes_world.render import encode_png
from jaxmodels.shapes_world.render import render
from jaxmodels.shapes_world.render import render_with_masks
from jaxmodels.shapes_world.render import visible_masks
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import SceneObject
from jaxmodels.shapes_world.shapes import SHAPES

__all__ = [
    "BACKGROUND_RGB", "COLORBENCH_TASKS", "COLORS", "COLOR_RGB", "DecodedSource", "EDIT_KINDS",
    "Example", "OFFICIAL_TAG_COUNTS", "RELATIONS", "Rendering", "SHAPES", "Scene",
    "SceneError", "SceneObject", "ShapesWorld", "ShapesWorldConfig", "TAGS", "apply_steps",
    "check_scene", "decode_example", "decode_png", "encode_png", "generate_example",
    "generate_split", "geneval_prompt_set", "get_builder", "load_split", "make_config",
    "make_edit", "make_qa", "nearest_color", "prepare", "relative_position", "render",
    "render_with_masks", "tag_counts", "to_features", "visible_masks",
]
