"""GRPO (jaxmodels/rl, jaxmodels/trainer/grpo.py): advantages and the clipped objective on hand-computed
numbers, the teacher-forced log-probs agreeing with what the sampler draws, the rewards on known
detections, a tiny policy whose reward rises under GRPO, and a resumed run repeating the uninterrupted
run's updates exactly."""
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels.rl import grpo, rewards


def test_group_advantages_by_hand():
  r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
  a = grpo.group_advantages(r, scale="std", eps=0.0 + 1e-12)
  np.testing.assert_allclose(a[0], [1, -1, -1, 1], atol=1e-6)      # mean 0.5, std 0.5
  np.testing.assert_allclose(a[1], 0.0)                            # no signal in an all-equal group
  np.testing.assert_allclose(grpo.group_advantages(r, scale="none")[0], [0.5, -0.5, -0.5, 0.5])
  with pytest.raises(ValueError, match="group >= 2"):
    grpo.group_advantages(np.ones((3, 1)))


def test_clipped_objective_by_hand():
  # two sequences: tokens 2 and 1 (the second's last token is padding)
  old = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
  new = jnp.log(jnp.array([[0.8, 0.5], [0.25, 0.9]]))      # ratios 1.6, 1.0 | 0.5, (padding)
  ref = new                                                 # KL 0
  adv = jnp.array([1.0, -2.0])
  w = jnp.array([[1, 1], [1, 0]])
  loss, m = grpo.clipped_objective(new, old, ref, adv, w, clip_eps=0.2, kl_beta=0.1, aggregate="sequence")
  # seq 0: min(1.6·1, 1.2·1) = 1.2 and 1.0 -> -(1.2 + 1.0)/2 ; seq 1: min(0.5·-2, 0.8·-2) = -1.6 -> 1.6
  assert float(loss) == pytest.approx((-(1.2 + 1.0) / 2 + 1.6) / 2, abs=1e-6)
  assert float(m["rl/kl"]) == pytest.approx(0.0, abs=1e-7)
  assert float(m["rl/clip_frac"]) == pytest.approx((0.5 + 1.0) / 2)   # 1.6 > 1.2 clipped; 0.5 < 0.8 clipped
  tok, _ = grpo.clipped_objective(new, old, ref, adv, w, clip_eps=0.2, kl_beta=0.1, aggregate="token")
  assert float(tok) == pytest.approx((-1.2 - 1.0 + 1.6) / 3, abs=1e-6)
  hi, _ = grpo.clipped_objective(new, old, ref, adv, w, clip_eps=0.2, clip_eps_high=0.7, kl_beta=0.0)
  assert float(hi) == pytest.approx((-(1.6 + 1.0) / 2 + 1.6) / 2, abs=1e-6)   # 1.6 < 1.7: not clipped
  # the k3 KL estimator: exp(d) - d - 1 with d = log ref - log new
  ref2 = jnp.log(jnp.array([[0.4, 0.5], [0.5, 0.9]]))
  _, m2 = grpo.clipped_objective(new, old, ref2, adv, w, kl_beta=0.1)
  k = lambda p_ref, p: p_ref / p - math.log(p_ref / p) - 1  # noqa: E731
  assert float(m2["rl/kl"]) == pytest.approx(((k(0.4, 0.8) + 0) / 2 + k(0.5, 0.25)) / 2, rel=1e-5)


def test_config_errors():
  from jaxmodels.errors import ConfigError
  with pytest.raises(ConfigError, match="group_size=1"):
    grpo.GRPOConfig(group_size=1)
  with pytest.raises(ConfigError, match="aggregate"):
    grpo.GRPOConfig(aggregate="mean")
  with pytest.raises(ConfigError, match="temperature=0"):
    grpo.GRPOConfig(temperature=0)
  with pytest.raises(ConfigError, match="und_weight"):
    grpo.GRPOConfig(und_weight=-1.0)
  with pytest.raises(ConfigError, match="edit_weight"):
    grpo.GRPOConfig(edit_weight=-1.0)


def test_phase_configs_of_the_embedded_default():
  """configs/shapes_tiny.py is two phases: the supervised config (no `rl`, no final evaluation of its
  own) in the workdir, then GRPO from it in <workdir>/rl with rl.train / rl.optim applied."""
  from configs import shapes_tiny
  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.grpo import phase_configs
  from jaxmodels.trainer.setup import is_grpo_run
  config = shapes_tiny.get_config()
  assert config.rl.after_supervised and not is_grpo_run(config)
  sup, post, rl_dir = phase_configs(config, "runs/x")
  assert "rl" not in sup and sup.evals.which == "" and sup.train.total_steps == config.train.total_steps
  assert rl_dir == "runs/x/rl" and post.init.checkpoint == "runs/x" and is_grpo_run(post)
  assert post.train.total_steps == config.rl.train.total_steps and post.optim.lr == config.rl.optim.lr
  assert post.rl.und_weight > 0 and "after_supervised" not in post.rl and "train" not in post.rl
  assert post.evals.which == config.evals.which                   # the run's final evaluations
  assert "rl" not in shapes_tiny.get_config("grpo=no") and "rl" not in shapes_tiny.get_config("target=ae")
  config.rl.train.steps = 3
  with pytest.raises(ConfigError, match=r"config.rl.train: unknown key\(s\) \['steps'\]"):
    phase_configs(config, "runs/x")


def test_partial_credit_and_questions():
  box = lambda x, y: [x, y, x + 8, y + 8]  # noqa: E731
  det = lambda c, col, x, y=10: {"class": c, "color": col, "box": box(x, y), "score": 0.99}  # noqa: E731
  two = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                          {"class": "square", "count": 1, "color": "blue"}]}
  assert rewards.partial_credit(two, [det("circle", "red", 0), det("square", "blue", 20)]) == 1.0
  # square missing: objects 1/2, count 1/2, colour (1 + 0)/2 -> mean 0.5
  assert rewards.partial_credit(two, [det("circle", "red", 0)]) == pytest.approx(0.5)
  # colours swapped: objects 1, count 1, colour 0 -> 2/3
  assert rewards.partial_credit(two, [det("circle", "blue", 0), det("square", "red", 20)]) == pytest.approx(2 / 3)
  count = {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
           "exclude": [{"class": "triangle", "count": 4}]}
  dets = [det("triangle", "green", x) for x in (0, 12, 24)]
  assert rewards.partial_credit(count, dets[:2]) == pytest.approx((1 + (2 / 3 + 1) / 2) / 2)
  assert rewards.partial_credit(count, dets) == 1.0
  pos = {"tag": "position", "include": [{"class": "square", "count": 1},
                                        {"class": "circle", "count": 1, "position": ["left of", 0]}]}
  assert rewards.partial_credit(pos, [det("square", "red", 30), det("circle", "red", 0)]) == 1.0
  assert rewards.partial_credit(pos, [det("square", "red", 0), det("circle", "red", 30)]) == pytest.approx(2 / 3)
  assert rewards.questions_of(pos) == [("How many squares are there?", "1"), ("How many circles are there?", "1"),
                                       ("Is the circle left of the square?", "yes")]
  assert ("What color is the circle?", "red") in rewards.questions_of(two)


def test_vqa_and_mixed_rewards():
  two = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
  answers = {"What color is the circle?": "red", "How many circles are there?": "2"}
  vqa = rewards.VQAReward(lambda imgs, qs: [answers[q] for q in qs])
  np.testing.assert_allclose(vqa(np.zeros((2, 4, 4, 3), np.uint8), [two, two]), [0.5, 0.5])
  mixed = rewards.MixedReward({"a": (2.0, lambda im, rec: np.ones(len(rec))), "b": (0.0, vqa)})
  total, parts = mixed(np.zeros((2, 4, 4, 3), np.uint8), [two, two])
  np.testing.assert_allclose(total, [2.0, 2.0])
  np.testing.assert_allclose(parts["b"], [0.5, 0.5])
  from jaxmodels.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown reward"):
    rewards.make_rewards({"clip_score": 1.0})
  with pytest.raises(ConfigError, match="cannot import"):
    rewards.make_rewards({}, external={"no.such.module:f": {}})
  with pytest.raises(ConfigError, match="returned a ndarray, not a callable"):
    rewards.make_rewards({}, external={"numpy:zeros": {"shape": 2}})
  ext = rewards.make_rewards({"geneval": 0.0}, external={"test_grpo:constant_reward": {"weight": 3.0, "value": 0.5}})
  total, parts = ext(np.zeros((2, 32, 32, 3), np.uint8), [two, two])
  np.testing.assert_allclose(total, [1.5, 1.5])                 # an empty image: GenEval 0, weight 0
  assert sorted(parts) == ["geneval", "test_grpo:constant_reward"]


def test_edit_reward_follows_the_rover_rules():
  """The dense edit reward on a recolour task: the target's own render scores 1 on every part; the
  unedited source keeps the untouched object (VC 1) but misses the target state (RV 0, overlap 1/2); an
  empty canvas reaches nothing."""
  from jaxmodels.shapes_world import edits
  from jaxmodels.shapes_world.render import render
  from jaxmodels.shapes_world.scene import Scene, SceneObject
  scene = Scene((SceneObject("circle", "red", (0.27, 0.5), 0.33), SceneObject("square", "blue", (0.73, 0.5), 0.3)))
  edit = edits.make_edit(np.random.default_rng(0), scene, image_size=32, kind="colour")
  task = {"kind": "colour", "prompt": edit["instruction"], "source": scene.to_dict(), "target": edit["target"],
          "steps": edit["steps"]}
  target = render(Scene.from_dict(edit["target"]), 32)
  images = np.stack([target, render(scene, 32), np.full_like(target, 153)])
  total, parts = rewards.EditReward()(images, [task] * 3)
  np.testing.assert_allclose(parts["edit_rv"], [1, 0, 0])
  np.testing.assert_allclose(parts["edit_overlap"], [1, 0.5, 0])
  np.testing.assert_allclose(parts["edit_vc"], [1, 1, 0])
  np.testing.assert_allclose(total, [1, 0.5, 0], atol=1e-6)


def constant_reward(value: float):
  """An external reward factory (`config.rl.external`) for the test above."""
  return lambda images, records: np.full(len(records), value)


# ------------------------------------------------------------------ with a tiny patch-token policy
@pytest.fixture(scope="module")
def policy():
  from configs import shapes_tiny
  from jaxmodels.trainer.setup import model_factory
  config = shapes_tiny.get_config("runlocal")
  make = model_factory(config)
  return make(), make()


@pytest.fixture(scope="module")
def prompts():
  ids = np.array([[0, 0, 1, 5, 6, 7], [1, 8, 9, 10, 11, 12]], np.int32)
  return jnp.asarray(ids), jnp.asarray((ids > 0).astype(np.int32))


def test_logprobs_match_the_sampler(policy, prompts):
  """Near-greedy sampling (temperature 1e-3) draws each token's argmax, so the teacher-forced log-prob
  of every drawn token under the same temperature and masks is ~0; at temperature 1 the same tokens
  are improbable (< 0): the masks and the one-slot shift line up with `patch_tokens.sample`."""
  model, ref = policy
  ids, mask = prompts
  cold = grpo.GRPOPolicy(model, ref, grpo.GRPOConfig(temperature=1e-3, pattern_temperature=1e-3))
  tokens, images, old, ref_lp, w = nnx.jit(lambda p, i, m, k: p.rollout(i, m, k))(cold, ids, mask,
                                                                                  jax.random.key(0))
  assert images.shape == (2, 32, 32, 3)
  assert np.all(np.asarray(old)[np.asarray(w) > 0] > -1e-3)
  np.testing.assert_allclose(np.asarray(old), np.asarray(ref_lp), atol=1e-3)   # same seed: same weights
  warm = grpo.GRPOPolicy(model, ref, grpo.GRPOConfig(temperature=1.0, pattern_temperature=1.0))
  batch = {"ids": ids, "mask": mask, **tokens}
  lp, w1 = warm.logprobs(model, batch)
  assert np.array_equal(np.asarray(w1), np.asarray(w))
  real = np.asarray(lp)[np.asarray(w) > 0]
  assert np.all(real <= 1e-6) and real.mean() < -1.0        # (a forced <eoi> after the last cell: 0)
  assert np.all(np.asarray(lp)[np.asarray(w) == 0] == 0)


def test_edit_logprobs_match_the_sampler_with_the_copy_path():
  """Edit rollouts of a copy-path policy: near-greedy sampling with the source in the prompt gives
  log-probs ~0 under the teacher-forced pass (which reads the same source and predicts the same keep
  mask); as actions, keep decisions add one weighted slot per source object; with the copy gates wide
  open and every patch kept the rollout is the source itself."""
  from configs import shapes_tiny
  from jaxmodels.trainer.setup import model_factory
  from jaxmodels.shapes_world.render import render
  from jaxmodels.shapes_world.scene import Scene, SceneObject
  config = shapes_tiny.get_config("runlocal")
  config.model.patch_tokens.update(edit_reference="copy", copy_keep=True)
  model = model_factory(config)()
  n = model.num_edit_image_tokens
  ids = np.array([[1, 5, 6] + [model.config.image_token_id] * n, [0, 0, 1, 7, 8] + [9] * (n - 2)], np.int32)
  ids, mask = jnp.asarray(ids), jnp.asarray((ids > 0).astype(np.int32))
  scene = Scene((SceneObject("circle", "red", (0.3, 0.4), 0.3), SceneObject("star", "blue", (0.7, 0.7), 0.3)))
  src = jnp.asarray(np.stack([render(scene, 32)] * 2).astype(np.float32) / 127.5 - 1.0)
  cold = grpo.GRPOPolicy(model, model, grpo.GRPOConfig(temperature=1e-3, pattern_temperature=1e-3,
                                                       keep_action=False))
  roll = nnx.jit(lambda p, i, m, k, c: p.rollout(i, m, k, c))
  tokens, images, old, _, w = roll(cold, ids, mask, jax.random.key(0), src)
  assert "keep" not in tokens and old.shape == (2, n)
  assert np.all(np.asarray(old)[np.asarray(w) > 0] > -1e-3)
  # Keep actions: one decision per source object (two here), drawn and scored after the image's slots.
  acting = grpo.GRPOPolicy(model, model, grpo.GRPOConfig(temperature=1e-3, pattern_temperature=1e-3))
  tokens, images, old, _, w = roll(acting, ids, mask, jax.random.key(0), src)
  assert tokens["keep"].shape == (2, n, 2) and old.shape == w.shape == (2, 2 * n)
  np.testing.assert_allclose(np.asarray(w)[:, n:].sum(1), [2.0, 0.0], atol=1e-5)
  assert np.all(np.asarray(old)[:, :n][np.asarray(w)[:, :n] > 0] > -1e-3)
  assert np.all(np.asarray(old)[:, n:] <= 0) and np.asarray(old)[0, n:].min() < -0.05
  head = model.patch_head
  head.copy_gate.kernel[...] = jnp.zeros_like(head.copy_gate.kernel[...])
  head.copy_gate.bias[...] = jnp.asarray([0.0, 50.0, 50.0, 50.0], head.copy_gate.bias[...].dtype)
  head.keep_out.kernel[...] = jnp.zeros_like(head.keep_out.kernel[...])
  head.keep_out.bias[...] = jnp.full_like(head.keep_out.bias[...], 50.0)
  warm = grpo.GRPOPolicy(model, model, grpo.GRPOConfig(temperature=1.0, pattern_temperature=1.0))
  tokens, images, old, _, w = roll(warm, ids, mask, jax.random.key(1), src)
  want = model.patch_tokenizer.decode(*model.patch_tokenizer.encode(src[:1]))
  np.testing.assert_allclose(np.asarray(images[0]), np.asarray(want[0]), atol=1e-6)   # row 0: the source copied
  assert np.all(np.asarray(old)[0][np.asarray(w)[0] > 0] > -1e-3)       # ... its keep actions all certain


@pytest.mark.slow
def test_reward_rises_under_grpo(policy, prompts):
  """A toy reward (the share of drawn patches in colour 1) climbs within a few dozen GRPO steps of a
  random tiny policy, with the KL term holding it near the reference."""
  import optax

  from jaxmodels.trainer import make_train_step
  from jaxmodels.trainer.train_state import TrainState
  model, ref = policy
  g = 8
  gp = grpo.GRPOPolicy(nnx.clone(model), nnx.clone(ref),
                       grpo.GRPOConfig(group_size=g, temperature=1.0, pattern_temperature=1.0, kl_beta=0.01))
  ts = TrainState(gp, optax.adam(3e-3), wrt=grpo.POLICY_PARAMS)
  graphdef, state = nnx.split(ts)
  step_fn = make_train_step(ts)
  ids, mask = (jnp.repeat(x, g, axis=0) for x in prompts)
  rollout = jax.jit(lambda s, k: nnx.merge(graphdef, s).model.rollout(ids, mask, k))
  eoi = model.config.patch_tokens.grid_size ** 2

  def reward(pos, colour):
    real = np.asarray(pos) < eoi
    return np.where(real.sum(1) > 0, ((np.asarray(colour) == 1) & real).sum(1) / np.maximum(real.sum(1), 1), 0.0)

  curve = []
  for step in range(20):
    key = jax.random.key(step)
    tokens, _, old, ref_lp, _ = rollout(state, key)
    r = reward(tokens["pos"], tokens["colour"])
    curve.append(float(r.mean()))
    adv = grpo.group_advantages(r.reshape(-1, g)).reshape(-1)
    batch = dict(ids=ids, mask=mask, **tokens, old_logp=old, ref_logp=ref_lp, advantages=jnp.asarray(adv))
    state, metrics = step_fn(state, batch, key)
    assert float(metrics["nonfinite"]) == 0.0
  assert curve[0] < 0.3 and np.mean(curve[-5:]) > 0.8, curve


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  from random_run import random_run
  words = "a photo of an the red blue green yellow orange purple pink brown gray black white circle " \
          "square triangle star heart hexagon circles squares triangles stars hearts hexagons two three " \
          "four left right above below of and"
  from configs import shapes_tiny
  config = shapes_tiny.get_config("runlocal")
  config.data.long_edits = "text_to_image"   # GRPO reads the source run's data settings (edit_weight's edit rows)
  return random_run(tmp_path_factory.mktemp("grpo_src") / "src", words, config)


@pytest.mark.slow
def test_train_grpo_resume_repeats_the_updates(source_run, tmp_path):
  """train.py with configs/shapes_grpo.py:runlocal from a (random) source run: 4 steps uninterrupted vs
  2 steps, stop, resume to 4 — the same policy weights, bit for bit; metrics carry each reward part."""
  import json

  import train
  from configs import shapes_grpo
  config = shapes_grpo.get_config("runlocal")
  config.init.checkpoint = str(source_run)
  config.train.eval_every = 100
  # A random source model often draws groups with one GenEval score (zero advantages, no update);
  # the external hook's brightness reward differs between any two images, so every step moves the policy.
  config.rl.external = {"test_grpo:brightness_reward": {"weight": 1.0}}
  config.rl.und_weight = 0.5    # a supervised understanding batch in every update: its iterator resumes too
  config.rl.edit_weight = 0.5   # ... with edit pairs as its generation rows, trained supervised too
  full = tmp_path / "full"
  scores = train.train_and_evaluate(config, str(full))
  assert "geneval" in scores
  rows = [json.loads(x) for x in open(full / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/rl/reward/geneval_dense" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert {f"train/{k}" for k in ("rl/kl", "rl/clip_frac", "rl/reward/geneval", "rl/diversity", "loss")} <= \
      set(train_rows[0])
  assert train_rows[-1]["train/rl/kl"] > 0            # the policy moved away from its reference
  assert all(r["train/und/und_loss"] > 0 and r["train/edit/gen_loss"] > 0 for r in train_rows)
  # "interrupted" after step 2: a copy of the run without its step-4 checkpoint, resumed
  part = tmp_path / "part"
  shutil.copytree(full / "checkpoints", part / "checkpoints")
  shutil.rmtree(part / "checkpoints" / "4")
  train.train_and_evaluate(config, str(part))

  a = _policy_leaves(full)
  b = _policy_leaves(part)
  assert len(a) == len(b) > 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_train_grpo_with_edit_prompts(tmp_path):
  """rl.edit_prompts: a step's prompts include train-split edit tasks, sampled with their sources in the
  prompt (the copy path) and rewarded by the dense ROVER reward, whose parts are logged; a source run
  without patch-token references is refused in one line."""
  import json

  import train
  from configs import shapes_grpo, shapes_tiny
  from random_run import random_run
  words = "change the color of to move remove add one more a an first then so that it is half image object " \
          "red blue green yellow orange purple pink brown gray black white circle square triangle star heart " \
          "hexagon left right top bottom above below"
  src_config = shapes_tiny.get_config("runlocal")
  src_config.model.patch_tokens.update(edit_reference="copy", copy_keep=True)
  src_config.data.update(gen_len=62, edit_layout="instruction_first", long_edits="text_to_image")
  src = random_run(tmp_path / "src", words, src_config)
  config = shapes_grpo.get_config("runlocal")
  config.init.checkpoint = str(src)
  config.train.update(total_steps=2, eval_every=100)
  config.evals.which = "geneval"
  config.rl.edit_prompts = 1
  train.train_and_evaluate(config, str(tmp_path / "rl"))
  rows = [json.loads(x) for x in open(tmp_path / "rl" / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/rl/reward/edit_overlap" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert {"train/rl/reward/edit_rv", "train/rl/reward/geneval_dense"} <= set(train_rows[0])
  assert all(0 <= r["train/rl/reward/edit_overlap"] <= 1 for r in train_rows)
  from jaxmodels.errors import ConfigError
  plain = random_run(tmp_path / "plain", words)
  config.init.checkpoint = str(plain)
  with pytest.raises(ConfigError, match="edit_prompts: GRPO on edits needs a patch-token model"):
    train.train_and_evaluate(config, str(tmp_path / "rl_plain"))


def brightness_reward():
  """An external reward (config.rl.external): an image's mean pixel value in [0, 1]."""
  return lambda images, records: np.array([np.mean(np.asarray(im, np.float32)) / 255.0 for im in images])


def _policy_leaves(run):
  """The policy's parameters at step 4 of a GRPO run (its stored config rebuilds the state tree)."""
  from jaxmodels import sharding
  from jaxmodels.checkpoint import restore_params
  from jaxmodels.run_dir import stored_config
  from jaxmodels.trainer.grpo import grpo_state_factory
  from jaxmodels.trainer.setup import mesh_and_rules
  config = stored_config(str(run), 4)
  abstract = nnx.eval_shape(grpo_state_factory(config)[0])
  state = nnx.state(abstract)
  mesh, rules = mesh_and_rules(config)
  target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
  restored = restore_params(str(run), {"model": target["model"]}, 4)["model"]
  return [np.asarray(x) for x in jax.tree.leaves(restored["policy"])]


@pytest.mark.slow
def test_image_token_policy_blip3o_next_tiny():
  """BLIP3o-NEXT's AR image tokens (configs/blip3o_next_3b.py:tiny): with top-k 1 the sampler draws each
  code's argmax, so every drawn code is the argmax of the teacher-forced log-probs, at the right slot;
  the rollout renders images through the diffusion head and the loss has gradients for the policy."""
  from configs import blip3o_next_3b
  from jaxmodels.trainer.setup import model_factory
  config = blip3o_next_3b.get_config("tiny")
  config.model.image_top_k = 1
  make = model_factory(config)
  gp = grpo.GRPOPolicy(make(), make(), grpo.GRPOConfig(group_size=2, render_steps=2))
  assert gp.token_keys == ("codes",)
  ids = jnp.array([[0, 5, 6, 7], [8, 9, 10, 11]], jnp.int32)
  mask = jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]], jnp.int32)
  tokens, images, old, ref_lp, w = nnx.jit(lambda p, k: p.rollout(ids, mask, k))(gp, jax.random.key(1))
  assert images.ndim == 4 and images.shape[0] == 2 and np.all(np.asarray(w) == 1)
  c = gp.policy.config
  _, _, hidden, _, _ = gp.policy.image_token_forward(ids, mask, tokens["codes"])
  n = tokens["codes"].shape[1]
  logits = gp.policy.llm.logits(hidden[:, ids.shape[1] + 1:ids.shape[1] + 1 + n])
  lo = c.image_vocab_offset
  best = np.asarray(logits[..., lo:lo + c.image_tokenizer.codebook_size]).argmax(-1)
  np.testing.assert_array_equal(best, np.asarray(tokens["codes"]))
  lsm = jax.nn.log_softmax(logits[..., lo:lo + c.image_tokenizer.codebook_size], -1)
  np.testing.assert_allclose(np.asarray(old), np.asarray(lsm.max(-1)), atol=1e-5)
  batch = dict(ids=ids, mask=mask, **tokens, old_logp=old, ref_logp=ref_lp, advantages=jnp.array([1.0, -1.0]))
  grads = nnx.grad(lambda m: m.loss(batch, None)[0], argnums=nnx.DiffState(0, grpo.POLICY_PARAMS))(gp)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert sum(norms) > 0 and all(np.isfinite(norms))


def test_full_size_blip3o_next_grpo_state():
  """configs/blip3o_next_3b_grpo.py builds at full size (eval_shape only): policy and reference are the
  BLIP3o-NEXT 3B model, and the optimizer holds moments for the policy's LLM alone."""
  from configs import blip3o_next_3b_grpo
  from jaxmodels.trainer.grpo import grpo_state_factory
  config = blip3o_next_3b_grpo.get_config()
  ts = nnx.eval_shape(grpo_state_factory(config)[0])
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  policy = count(nnx.state(ts.model.policy, nnx.Param))
  assert policy == count(nnx.state(ts.model.reference, nnx.Param))
  assert 3.0e9 < policy < 4.5e9, policy
  llm = count(nnx.state(ts.model.policy.llm, nnx.Param))
  moments = count(nnx.state(ts.optimizer, nnx.OptState)) if hasattr(nnx, "OptState") else None
  trained = count(nnx.state(ts.model, ts.wrt))
  assert trained == llm, (trained, llm)
  if moments is not None:
    assert moments >= 2 * llm and moments < 2 * llm + 1000


def test_plan_compiles_the_grpo_update():
  """tools/plan.py plans a config with `rl`: the GRPO state (policy + reference, moments for the policy
  only) and one update on prompts_per_step × group_size rollouts, compiled on the 8 CPU devices."""
  import importlib.util
  import os

  from configs import shapes_grpo
  spec = importlib.util.spec_from_file_location(
      "plan_tool", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "plan.py"))
  plan_tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plan_tool)
  config = shapes_grpo.get_config("runlocal")
  out = plan_tool.plan(config)
  n = config.rl.prompts_per_step * config.rl.group_size
  assert out["batch_shapes"]["pos"] == [n, 49] and out["batch_shapes"]["ids"] == [n, config.data.gen_len]
  assert out["temp_bytes"] > 0
  # params: policy + reference; Adam: two moments of the policy alone
  assert out["optimizer_bytes"] == pytest.approx(out["params_bytes"], rel=0.05)


@pytest.mark.slow
def test_two_phase_run_ends_with_the_grpo_policy(tmp_path):
  """The README main command's shape (configs/shapes_tiny.py, here `:runlocal,grpo=yes`): supervised
  steps in the workdir, then GRPO in <workdir>/rl; the final scores and samples are the policy's and
  are copied up; evaluate.py on the workdir loads the policy (`run_dir.final_workdir`); a rerun of the
  finished run trains nothing again."""
  import json

  import evaluate
  import train
  from configs import shapes_tiny
  from jaxmodels.run_dir import checkpoint_step, final_workdir
  config = shapes_tiny.get_config("runlocal,grpo=yes")
  config.evals.which = "qa,geneval"
  run = tmp_path / "run"
  scores = train.train_and_evaluate(config, str(run))
  phases = json.load(open(run / "phases.json"))
  assert phases["supervised"]["step"] == config.train.total_steps and phases["rl"]["minutes"] > 0
  assert checkpoint_step(str(run / "rl")) == config.rl.train.total_steps
  top = json.load(open(run / "scores.json"))
  assert top["qa"] == json.load(open(run / "rl" / "scores.json"))["qa"] == scores["qa"]
  assert top["source"] == str(run) and (run / "samples.png").read_bytes() == (run / "rl" / "samples.png").read_bytes()
  rows = [json.loads(x) for x in open(run / "rl" / "metrics.jsonl")]
  assert any("train/und/und_loss" in r for r in rows)            # rl.und_weight of the default
  assert final_workdir(str(run)) == str(run / "rl") and final_workdir(str(run / "checkpoints")) == str(run)
  again = evaluate.evaluate_checkpoint(None, str(run), str(tmp_path / "eval"), evals=("qa",))
  assert again["qa"] == scores["qa"]                              # the GRPO policy, not the supervised model
  before = sorted(p.name for p in (run / "checkpoints").iterdir())
  train.train_and_evaluate(config, str(run))                      # finished: nothing retrained
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
  assert checkpoint_step(str(run / "rl")) == config.rl.train.total_steps
