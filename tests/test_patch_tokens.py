"""Sparse palette-patch image tokens (jaxmodels/unified/patch_tokens.py): the codebook, the lossless
tokenizer on ShapesWorld renders, the LLM head's loss, and the KV-cache sampler against the
teacher-forced pass it must agree with."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes_tiny
from jaxmodels.shapes_world import generator as gen_lib
from jaxmodels.shapes_world import palette
from jaxmodels.errors import ConfigError
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified import edit_canvas as ec
from jaxmodels.unified import patch_tokens as pt
from jaxmodels.unified.build import unified_config

PALETTE = tuple([palette.BACKGROUND_RGB] + [tuple(map(int, c)) for c in palette.PALETTE])


@pytest.fixture(scope="module")
def renders():
  """32 px ShapesWorld test-split scenes (seed 7: not the scenes the shipped codebook was fitted on)."""
  return np.stack([ex.image for ex in gen_lib.generate_split("test", 48, image_size=32, seed=7)])


@pytest.fixture(scope="module")
def tokenizer():
  return pt.PatchTokenizer(pt.PatchTokensConfig(palette=PALETTE))


def to_unit(images_u8):
  return jnp.asarray(images_u8.astype(np.float32) / 127.5 - 1.0)


def to_u8(images):
  return np.asarray(jnp.round((images + 1.0) * 127.5)).astype(np.uint8)


def test_fit_codebook_counts_patterns_most_frequent_first():
  img = np.zeros((1, 8, 8, 3), np.uint8) + np.array(PALETTE[0], np.uint8)
  img[0, 0:4, 0:4] = PALETTE[1]          # patch 0: all 16 pixels
  img[0, 0:4, 4:8] = PALETTE[2]          # patch 1: all 16 (another colour, same pattern)
  img[0, 4, 4] = PALETTE[3]              # patch 3: only its first pixel (bit 0)
  assert pt.fit_codebook(img, PALETTE, 4) == [0, 0xFFFF, 1]


def test_nearest_pattern_table_is_a_hamming_argmin(tmp_path):
  keys = [0, 0xFFFF, 0x00FF, 0x0F0F, 0x3333]
  path = tmp_path / "cb.json"
  pt.save_codebook(str(path), keys, patch_size=4, source="test")
  table = pt.nearest_pattern_table(str(path), 4)
  rng = np.random.default_rng(0)
  for q in rng.integers(0, 1 << 16, 200):
    dist = [bin(int(q) ^ k).count("1") for k in keys]
    assert dist[table[q]] == min(dist)
  assert [table[k] for k in keys] == list(range(len(keys)))       # members map to themselves


def test_codebook_errors_name_the_field(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"patch_size": 2, "patterns": [0, 1]}))
  with pytest.raises(ConfigError, match="patch_tokens.codebook"):
    pt.load_codebook(str(bad), 4)
  with pytest.raises(ConfigError, match="cannot read"):
    pt.load_codebook(str(tmp_path / "missing.json"), 4)


def test_encode_lists_foreground_patches_in_raster_order(renders, tokenizer):
  pos, pattern, colour = map(np.asarray, jax.jit(tokenizer.encode)(to_unit(renders)))
  cls = pt.palette_classes(renders, PALETTE)
  fg_cells = (cls.reshape(-1, 8, 4, 8, 4) > 0).any((2, 4)).reshape(len(renders), 64)
  for b in range(len(renders)):
    cells = np.nonzero(fg_cells[b])[0]
    n = len(cells)
    assert n <= 48
    np.testing.assert_array_equal(pos[b, :n], cells)           # sorted, every foreground cell
    assert (pos[b, n:] == 64).all() and (pattern[b, n:] == 0).all() and (pattern[b, :n] > 0).all()
    for k, cell in enumerate(cells):                           # majority colour of the patch
      r, c = divmod(cell, 8)
      vals = cls[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
      vals = vals[vals > 0]
      assert colour[b, k] + 1 == np.bincount(vals).argmax()


def test_decode_inverts_encode_on_renders(renders, tokenizer):
  out = to_u8(tokenizer.decode(*tokenizer.encode(to_unit(renders))))
  exact = (out == renders).all(-1)
  assert exact.mean() > 0.999                 # unseen patterns only: a pixel or two in a few images
  assert exact.all((1, 2)).mean() > 0.9


def test_decode_stops_at_the_first_eoi(tokenizer):
  pos = jnp.array([[0, 64, 9, 64]]); pattern = jnp.array([[1, 0, 1, 0]]); colour = jnp.array([[2, 0, 5, 0]])
  img = to_u8(tokenizer.decode(pos, pattern, colour))[0]
  assert (img[:4, :4] == PALETTE[3]).all()                   # patch 0 drawn (codebook entry 1: all set)
  assert (img[4:8, 4:8] == PALETTE[0]).all()                 # the token after <eoi> is ignored


# ------------------------------------------------------------------------------- with the LLM
@pytest.fixture(scope="module")
def model():
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  cfg.model.patch_tokens.max_patches = 12
  return UnifiedModel(unified_config(cfg.model), rngs=nnx.Rngs(0))


def prompt(b=3, t=6):
  ids = jnp.tile(jnp.arange(5, 5 + t)[None], (b, 1))
  mask = jnp.ones((b, t), jnp.int32).at[1, :2].set(0).at[2, :4].set(0)   # left padding
  return ids, mask


def test_config_checks():
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  bad = cfg.copy_and_resolve_references()
  bad.model.queries = "learnable"
  with pytest.raises(ConfigError, match="queries='none'"):
    unified_config(bad.model)
  bad = cfg.copy_and_resolve_references()
  bad.model.patch_tokens.patch_size = 5
  with pytest.raises(ConfigError, match="patch_tokens.patch_size"):
    unified_config(bad.model)


def test_cached_sampler_matches_the_teacher_forced_pass(model):
  """Greedy tokens drawn one at a time with the KV cache are the argmax of the teacher-forced pass
  over the same tokens (the training path, no cache), step by step."""
  ids, mask = prompt()
  pos, pattern, colour = nnx.jit(lambda m, i, k: pt.sample(m.llm, m.patch_head, m.prompt_embeddings(i, None), k,
                                                           jax.random.key(0), temperature=0.0))(model, ids, mask)
  head, eoi = model.patch_head, model.config.patch_tokens.eoi
  b, t = mask.shape
  x = jnp.concatenate([model.prompt_embeddings(ids, None), head.boi_embed(b),
                       head.embed(pos[:, :-1], pattern[:, :-1], colour[:, :-1])], 1)
  full = jnp.concatenate([mask, jnp.ones((b, 1), jnp.int32), (pos[:, :-1] < eoi).astype(jnp.int32)], 1)
  h = model.llm.forward(None, pt.positions_of(full), full, inputs_embeds=x).hidden[:, t:]
  lp = head.pos_logits(h)
  pl, cl = head.pattern_colour_logits(h, pos, ec.canvas_of(pos, pattern, eoi))
  assert greedy_steps_checked(lp, pl, cl, pos, pattern, colour, eoi) > 0


def greedy_steps_checked(lp, pl, cl, pos, pattern, colour, eoi) -> int:
  """Asserts that greedy tokens [B, L] are, step by step, the argmax of teacher-forced logits (position
  among the cells after the previous one; a drawn pattern is never the empty one) -> patches checked."""
  lp, pl, cl, pos, pattern, colour = map(np.asarray, (lp, pl, cl, pos, pattern, colour))
  checked = 0
  for r in range(pos.shape[0]):
    last = -1
    for i in range(pos.shape[1]):
      allowed = lp[r, i].copy()
      allowed[:last + 1] = -np.inf
      assert pos[r, i] == allowed.argmax()
      if pos[r, i] == eoi:
        break
      assert pattern[r, i] == 1 + pl[r, i, 1:].argmax() and colour[r, i] == cl[r, i].argmax()
      last, checked = pos[r, i], checked + 1
  return checked


def test_guidance_one_is_the_plain_sampler_and_images_decode(model):
  ids, mask = prompt()
  f = nnx.jit(lambda m, i, k, g: m.generate_image(i, k, jax.random.key(3), guidance=g, return_codes=True),
              static_argnums=3)
  img1, tok1 = f(model, ids, mask, 1.0)
  tok_plain = pt.sample(model.llm, model.patch_head, model.prompt_embeddings(ids, None), mask,
                        jax.random.split(jax.random.key(3))[0], temperature=model.config.patch_tokens.temperature,
                        pattern_temperature=model.config.patch_tokens.pattern_temperature)
  for a, b in zip(tok1, tok_plain):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  img3, tok3 = f(model, ids, mask, 3.0)
  assert img1.shape == img3.shape == (3, 32, 32, 3)
  pos = np.asarray(tok3[0])
  for row in pos:                                          # strictly increasing until <eoi>
    live = row[:np.argmax(row == 64)] if (row == 64).any() else row
    assert (np.diff(live) > 0).all()


def test_training_step_lowers_the_loss_on_a_fixed_batch(model, renders):
  m = nnx.clone(model)
  ids, mask = prompt(8)
  batch = dict(gen_ids=ids, gen_mask=mask, gen_image=to_unit(renders[:8]))
  opt = nnx.Optimizer(m, __import__("optax").adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt):
    (loss, met), g = nnx.value_and_grad(lambda m: m.generation_loss(batch, jax.random.key(0)), has_aux=True)(m)
    opt.update(m, g)
    return loss, met

  first = float(step(m, opt)[0])
  for _ in range(40):
    loss, met = step(m, opt)
  assert float(loss) < 0.6 * first
  assert {"gen_pos_ce", "gen_pattern_ce", "gen_colour_ce", "gen_patches"} <= set(met)


# ------------------------------------------------------------------------------- edit references
@pytest.fixture(scope="module")
def ref_model():
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  cfg.model.patch_tokens.update(max_patches=24, edit_reference="patch_tokens")
  return UnifiedModel(unified_config(cfg.model), rngs=nnx.Rngs(0))


def test_edit_reference_config_and_contract(ref_model, model):
  from jaxmodels.unified.model_io import unified_io
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  cfg.model.patch_tokens.edit_reference = "pixels"
  with pytest.raises(ConfigError, match="patch_tokens.edit_reference='pixels'"):
    unified_config(cfg.model)
  assert ref_model.num_edit_image_tokens == 25 and unified_io(ref_model.config).edit_tokens == 25
  assert model.num_edit_image_tokens == model.num_image_tokens == unified_io(model.config).edit_tokens
  assert model.patch_head.reference is None     # the default layout has no reference parameter


def test_edit_source_enters_the_prompt_as_its_own_patch_tokens(ref_model, renders):
  """Each placeholder holds the source's token k embedded as a drawn token is, plus the reference
  vector; the instruction's tokens are untouched; a dropped source is the empty canvas (all <eoi>)."""
  m, n = ref_model, ref_model.num_edit_image_tokens
  image_id = m.config.image_token_id
  ids = jnp.asarray([[1] + [image_id] * n + [7, 8]] * 2, jnp.int32)
  src = to_unit(renders[:2])
  got = m.prompt_embeddings(ids, src)
  pos, pattern, colour = m.patch_tokenizer.encode(src)
  want = m.patch_head.embed(pos, pattern, colour) + m.patch_head.reference[...]
  np.testing.assert_allclose(np.asarray(got[:, 1:1 + n]), np.asarray(want), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got[:, -2:]), np.asarray(m.embed_tokens(ids[:, -2:])), atol=1e-6)
  assert (np.asarray(pos[:, :3]) < m.config.patch_tokens.eoi).all()   # real patches, not padding
  batch = dict(gen_ids=ids, gen_mask=jnp.ones_like(ids), gen_cond_image=src, gen_image=src)
  m2 = nnx.clone(m)
  m2.config = m.config.__class__(**{**m.config.__dict__, "edit_drop": (0.0, 1.0, 0.0)})
  _, _, dropped = m2._edit_inputs(jax.random.key(0), batch)
  empty, _, _ = m.patch_tokenizer.encode(dropped)
  assert (np.asarray(empty) == m.config.patch_tokens.eoi).all()


def test_a_reference_edit_learns_to_copy_its_source(ref_model, renders):
  """16 different images behind one identical instruction: only the reference tells them apart. Trained
  on "draw the source again", the loss with the source in the prompt falls clearly below the loss of the
  same training with every source dropped (the empty canvas), which cannot go under the mixture's
  entropy."""
  n = ref_model.num_edit_image_tokens
  ids = jnp.asarray([[1] + [ref_model.config.image_token_id] * n + [7]] * 16, jnp.int32)
  src = to_unit(renders[:16])
  batch = dict(gen_ids=ids, gen_mask=jnp.ones_like(ids), gen_cond_image=src, gen_image=src)

  def train(drop_image):
    m = nnx.clone(ref_model)
    m.config = m.config.__class__(**{**m.config.__dict__, "edit_drop": (0.0, drop_image, 0.0),
                                     "cond_dropout": 0.0})
    opt = nnx.Optimizer(m, __import__("optax").adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
      (loss, _), g = nnx.value_and_grad(lambda m: m.generation_loss(batch, jax.random.key(0)), has_aux=True)(m)
      opt.update(m, g)
      return loss

    for _ in range(60):
      loss = step(m, opt)
    return float(loss)

  with_source, without = train(0.0), train(1.0)
  assert with_source < 0.75 * without, (with_source, without)


# ------------------------------------------------------------------------------- the copy path
@pytest.fixture(scope="module")
def copy_model():
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  cfg.model.patch_tokens.update(max_patches=24, edit_reference="copy")
  return UnifiedModel(unified_config(cfg.model), rngs=nnx.Rngs(0))


def edit_prompt(m, with_source=(True, True, False)):
  """Rows [1, <image> × n, 7, 8]; a row without a source has plain tokens where the placeholders were."""
  n, image_id = m.num_edit_image_tokens, m.config.image_token_id
  ids = jnp.asarray([[1] + [image_id if s else 5] * n + [7, 8] for s in with_source], jnp.int32)
  return ids, jnp.ones_like(ids)


def with_gates(m, bias):
  m = nnx.clone(m)
  m.patch_head.copy_gate.kernel[...] = jnp.zeros_like(m.patch_head.copy_gate.kernel[...])
  m.patch_head.copy_gate.bias[...] = jnp.asarray(bias, jnp.float32)
  return m


def test_copy_path_with_open_gates_redraws_the_source(copy_model, renders, tokenizer):
  """Gates fixed high (next source cell, its pattern, its colour): the sampler redraws each source
  exactly, with and without guidance; a row whose prompt has no source draws what it draws without the
  copy path."""
  m = with_gates(copy_model, [0.0, 50.0, 50.0, 50.0])
  ids, mask = edit_prompt(m)
  src = to_unit(renders[:3])
  want = to_u8(m.patch_tokenizer.decode(*m.patch_tokenizer.encode(src)))
  draw = nnx.jit(lambda m, i, k, s, g: m.generate_image(i, k, jax.random.key(0), cond_images=s, guidance=g),
                 static_argnums=4)
  for guidance in (1.0, 3.0):
    got = to_u8(draw(m, ids, mask, src, guidance))
    np.testing.assert_array_equal(got[:2], want[:2])
  embeds, ref = m.patch_prompt(ids, mask, src)
  np.testing.assert_array_equal(np.asarray(embeds), np.asarray(m.prompt_embeddings(ids, src)))
  assert np.asarray(ref.has).tolist() == [True, True, False]
  with_ref = pt.sample(m.llm, m.patch_head, embeds, mask, jax.random.key(1), temperature=0.0, ref=ref)
  without = pt.sample(m.llm, m.patch_head, embeds, mask, jax.random.key(1), temperature=0.0)
  for a, b in zip(with_ref, without):
    np.testing.assert_array_equal(np.asarray(a)[2], np.asarray(b)[2])


def test_copy_path_sampler_matches_its_teacher_forced_pass(copy_model, renders):
  """With moderate gates, the greedy tokens drawn with the KV cache are the argmax of the teacher-forced
  pass (the training path) over the same tokens and the same source, step by step."""
  m = with_gates(copy_model, [1.0, 2.0, 1.5, 1.5])
  ids, mask = edit_prompt(m, (True, True, True))
  src = to_unit(renders[3:6])
  embeds, ref = m.patch_prompt(ids, mask, src)
  pos, pattern, colour = pt.sample(m.llm, m.patch_head, embeds, mask, jax.random.key(0), temperature=0.0, ref=ref)
  head, eoi = m.patch_head, m.config.patch_tokens.eoi
  b, t = mask.shape
  x = jnp.concatenate([embeds, head.boi_embed(b), head.embed(pos[:, :-1], pattern[:, :-1], colour[:, :-1])], 1)
  full = jnp.concatenate([mask, jnp.ones((b, 1), jnp.int32), (pos[:, :-1] < eoi).astype(jnp.int32)], 1)
  h = m.llm.forward(None, pt.positions_of(full), full, inputs_embeds=x).hidden[:, t:]
  last = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), pos[:, :-1]], 1)
  lp = head.pos_logits(h, last, ref)
  pl, cl = head.pattern_colour_logits(h, pos, ec.canvas_of(pos, pattern, eoi), ref)
  assert greedy_steps_checked(lp, pl, cl, pos, pattern, colour, eoi) > 5


def test_copy_path_reaches_the_training_loss(copy_model, renders):
  """Drawing the source again: with the gates open the teacher-forced loss is near zero, with them shut
  it is the untrained head's; rows whose source is masked out of the prompt get no copy path."""
  ids, mask = edit_prompt(copy_model, (True, True, True))
  src = to_unit(renders[6:9])
  batch = dict(gen_ids=ids, gen_mask=mask, gen_cond_image=src, gen_image=src)

  def loss(m, batch):
    m.config = m.config.__class__(**{**m.config.__dict__, "edit_drop": (0.0, 0.0, 0.0), "cond_dropout": 0.0})
    return float(m.generation_loss(batch, jax.random.key(0))[0])

  open_, shut = loss(with_gates(copy_model, [0.0, 50.0, 50.0, 50.0]), batch), loss(with_gates(copy_model, [0.0] * 4), batch)
  assert open_ < 0.05 < 1.0 < shut, (open_, shut)
  masked = dict(batch, gen_mask=jnp.where(ids == copy_model.config.image_token_id, 0, mask))
  assert loss(with_gates(copy_model, [0.0, 50.0, 50.0, 50.0]), masked) > 1.0


# ------------------------------------------------------------------------------- copy_keep
def test_keep_labels_are_the_source_patches_the_target_leaves_unchanged(tokenizer):
  """A recolour edit: the source patches whose 4×4 pixel blocks are identical in the edited render are
  labelled kept, the recoloured object's are not (checked on single-colour blocks, where a token is
  its pixels)."""
  from jaxmodels.shapes_world import edits
  from jaxmodels.shapes_world.render import render as draw_scene
  from jaxmodels.shapes_world.scene import Scene, SceneObject
  scene = Scene((SceneObject("circle", "red", (0.3, 0.5), 0.35), SceneObject("square", "blue", (0.72, 0.5), 0.3)))
  edit = edits.make_edit(np.random.default_rng(0), scene, image_size=32, kind="colour")
  source, target = draw_scene(scene, 32), draw_scene(Scene.from_dict(edit["target"]), 32)
  pos, pattern, colour = (np.asarray(x) for x in tokenizer.encode(to_unit(np.stack([source]))))
  eoi = tokenizer.config.eoi
  ref = ec.ReferenceCanvas.of(jnp.asarray(pos), jnp.asarray(pattern), jnp.asarray(colour), jnp.asarray([True]), eoi)
  labels = np.asarray(ref.keep_labels(*tokenizer.encode(to_unit(np.stack([target]))), eoi))[0]   # [L, 2]
  real = pos[0] < eoi
  assert labels.shape == (len(pos[0]), 2) and (labels[~real] == 0).all()
  assert (labels[real, 0] == 1).all()          # a recolour keeps every pattern
  g, checked = tokenizer.config.grid_size, 0
  for slot, cell in enumerate(pos[0]):
    if cell >= eoi:
      continue
    r, c = divmod(int(cell), g)
    a, b = source[4 * r:4 * r + 4, 4 * c:4 * c + 4], target[4 * r:4 * r + 4, 4 * c:4 * c + 4]
    fg = a[(a != palette.BACKGROUND_RGB).any(-1)]
    if len(np.unique(fg, axis=0)) == 1:
      assert labels[slot, 1] == float(np.array_equal(a, b)), (slot, cell)
      checked += 1
  assert checked > 5 and 0 < labels[real, 1].sum() < real.sum()


@pytest.fixture(scope="module")
def keep_model():
  cfg = shapes_tiny.get_config("target=tokens,width=32,layers=1")
  cfg.model.patch_tokens.update(max_patches=24, edit_reference="copy", copy_keep=True)
  return UnifiedModel(unified_config(cfg.model), rngs=nnx.Rngs(0))


def test_copy_keep_head_trains_and_its_mask_reaches_the_sampler(keep_model, renders):
  """The keep head adds binary CEs to the edit loss; sampling with the copy gates open copies the
  source when the head keeps every patch, its outlines when it keeps patterns but not colours, and none
  of it when it keeps no pattern (the next kept source cell is then <eoi>)."""
  with pytest.raises(ConfigError, match="copy_keep=True needs edit_reference='copy'"):
    pt.PatchTokensConfig(palette=PALETTE, copy_keep=True)
  with pytest.raises(ConfigError, match="keep_pool='pixel'"):
    pt.PatchTokensConfig(palette=PALETTE, edit_reference="copy", copy_keep=True, keep_pool="pixel")
  m = with_gates(keep_model, [0.0, 50.0, 50.0, 50.0])
  m.config = m.config.__class__(**{**m.config.__dict__, "edit_drop": (0.0, 0.0, 0.0), "cond_dropout": 0.0})
  ids, mask = edit_prompt(m, (True, True, True))
  src, tgt = to_unit(renders[:3]), to_unit(renders[3:6])
  loss, metrics = m.generation_loss(dict(gen_ids=ids, gen_mask=mask, gen_cond_image=src, gen_image=tgt),
                                    jax.random.key(0))
  assert np.isfinite(float(loss)) and float(metrics["gen_keep_bce"]) > 0.1 and 0 <= float(metrics["gen_keep_acc"]) <= 1
  same = m.generation_loss(dict(gen_ids=ids, gen_mask=mask, gen_cond_image=src, gen_image=src), jax.random.key(0))[1]
  assert float(same["gen_pos_ce"]) < 0.05                       # every patch kept: the gates copy it all
  want = to_u8(m.patch_tokenizer.decode(*m.patch_tokenizer.encode(src)))
  draw = nnx.jit(lambda m, i, k, s: m.generate_image(i, k, jax.random.key(0), cond_images=s, guidance=1.0))
  fg = lambda x: (x != palette.BACKGROUND_RGB).any(-1)  # noqa: E731
  for bias in ((50.0, 50.0), (50.0, -50.0), (-50.0, -50.0)):
    k = nnx.clone(m)
    k.patch_head.keep_out.kernel[...] = jnp.zeros_like(k.patch_head.keep_out.kernel[...])
    k.patch_head.keep_out.bias[...] = jnp.asarray(bias, k.patch_head.keep_out.bias[...].dtype)
    out = to_u8(draw(k, ids, mask, src))
    if bias[0] < 0:                            # no pattern kept: nothing of the source is drawn
      np.testing.assert_array_equal(out, np.full_like(want, palette.BACKGROUND_RGB))
    elif bias[1] > 0:                          # everything kept: an exact copy
      np.testing.assert_array_equal(out, want)
    else:                                      # patterns kept, colours not: the same outlines
      np.testing.assert_array_equal(fg(out), fg(want))
