"""The copy path's view of an edit source (jaxmodels/unified/edit_canvas.py): objects found from the
source's patch tokens, and values averaged over them."""
import jax.numpy as jnp
import numpy as np

from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world.render import render
from jaxmodels.shapes_world.scene import Scene, SceneObject
from jaxmodels.unified import edit_canvas as ec
from jaxmodels.unified import patch_tokens as pt

PALETTE = tuple([palette.BACKGROUND_RGB] + [tuple(map(int, c)) for c in palette.PALETTE])


def _grid(rows: list[str]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """A drawing of cells ('.' empty, a digit: that colour) -> (pattern, colour) canvases [1, g² + 1]."""
  cells = np.array([[c for c in r] for r in rows]).reshape(-1)
  on = cells != "."
  colour = np.where(on, np.char.replace(cells, ".", "0"), "0").astype(int)
  pad = lambda x: jnp.asarray(np.concatenate([x, [0]])[None].astype(np.int32))  # noqa: E731
  return pad(on.astype(int)), pad(colour)


def test_objects_are_8_connected_cells_of_one_colour():
  pattern, colour = _grid(["11..", ".1.2", "..22", "3..."])
  got = np.asarray(ec.object_cells(pattern, colour))[0]
  # Three objects: colour 1 {0, 1, 5}, colour 2 {7, 10, 11}, colour 3 {12}; empty cells and <eoi> keep
  # their own index.
  assert list(got[[0, 1, 5]]) == [0, 0, 0]
  assert list(got[[7, 10, 11]]) == [7, 7, 7]
  assert got[12] == 12 and got[2] == 2 and got[16] == 16
  # Touching cells of different colours stay apart; a diagonal chain of one colour is one object.
  pattern, colour = _grid(["1...", ".1..", "..12", "...2"])
  got = np.asarray(ec.object_cells(pattern, colour))[0]
  assert list(got[[0, 5, 10]]) == [0, 0, 0] and list(got[[11, 15]]) == [11, 11]


def test_every_rendered_object_is_one_object_and_means_are_per_object():
  """Two same-colour shapes a cell apart and one of another colour: the source's tokens group into exactly
  the three objects the scene has, and object_mean averages within them."""
  scene = Scene((SceneObject("circle", "red", (0.18, 0.25), 0.25), SceneObject("square", "red", (0.82, 0.25), 0.25),
                 SceneObject("triangle", "blue", (0.5, 0.78), 0.3)))
  tok = pt.PatchTokenizer(pt.PatchTokensConfig(palette=PALETTE))
  image = jnp.asarray(render(scene, 32)[None].astype(np.float32) / 127.5 - 1.0)
  pos, pattern, colour = tok.encode(image)
  eoi = tok.config.eoi
  ref = ec.ReferenceCanvas.of(pos, pattern, colour, jnp.asarray([True]), eoi)
  real = np.asarray(pos[0]) < eoi
  objects = np.asarray(ref.slot_object[0])[real]
  assert len(set(objects.tolist())) == 3
  cols = np.asarray(pos[0])[real] % 8
  for label in set(objects.tolist()):       # each object lies on one side (or the middle) of the image
    group = cols[objects == label]
    assert group.max() - group.min() <= 3
  values = jnp.asarray(np.arange(len(real), dtype=np.float32)[None, :, None])
  mean = np.asarray(ref.object_mean(values))[0, :, 0]
  for label in set(objects.tolist()):
    members = np.flatnonzero(real)[objects == label]
    np.testing.assert_allclose(mean[members], members.mean(), rtol=1e-6)
