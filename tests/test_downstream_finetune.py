"""Fine-tuning machinery: tri-stage schedule, recipe freezing, CER falling on synthetic speech, resume."""
import jax
import numpy as np
import pytest

from data_pipelines import espeak
from data_pipelines.synthetic_speech.synthetic_speech_dataset_builder import synthesize_16k
from xlsr_jax.checkpoints.manager import CheckpointManager, restore_target
from xlsr_jax.models.params import unbox
from xlsr_jax.downstream import ctc, task_config_defaults, finetune, heads, metrics
from xlsr_jax.downstream.tasks import TASKS
from xlsr_jax.downstream.vocabulary import build_vocabulary
from xlsr_jax.models.config import get_preset
from xlsr_jax.sharding import mesh as mesh_lib


def test_tri_stage_schedule_fairseq_shape():
  s = finetune.tri_stage_schedule(1.0, 100, (0.1, 0.4, 0.5), init_lr_scale=0.01, final_lr_scale=0.05)
  assert float(s(0)) == pytest.approx(0.01)
  assert float(s(5)) == pytest.approx(0.01 + 0.99 * 0.5)
  assert float(s(10)) == pytest.approx(1.0) and float(s(49)) == pytest.approx(1.0)
  assert float(s(75)) == pytest.approx(0.05 ** 0.5, rel=1e-5)  # exponential: halfway in log space
  assert float(s(100)) == pytest.approx(0.05) and float(s(500)) == pytest.approx(0.05)


def _utterances(texts, num_samples):
  """espeak-ng speech, normalised and padded to num_samples: (waveform, padding_mask)."""
  wave = np.zeros((len(texts), num_samples), np.float32)
  padding = np.ones((len(texts), num_samples), bool)
  for i, text in enumerate(texts):
    w = synthesize_16k(text, espeak.Voice("en"), seed=0).astype(np.float32)[:num_samples]
    w = (w - w.mean()) / (w.std() + 1e-5)
    wave[i, :len(w)], padding[i, :len(w)] = w, False
  return wave, padding


def test_finetuning_lowers_cer_with_the_recipe_freezing(tmp_path):
  texts = ["one two", "six ten", "red sun", "big cat"]
  wave, padding = _utterances(texts, 16_000)
  vocab = build_vocabulary(texts)
  labels, label_valid = vocab.encode_batch(texts, 16)
  batch = dict(waveform=wave, padding_mask=padding, labels=labels, label_valid=label_valid,
               example_valid=np.ones(4, bool))
  c = task_config_defaults.get_default_config()
  c.finetune.num_steps, c.finetune.freeze_transformer_steps = 120, 3
  c.finetune.mask_prob = c.finetune.mask_channel_prob = c.finetune.layerdrop = 0.0
  c.optimizer.peak_lr, c.optimizer.phase_ratio = 5e-3, (0.1, 0.8, 0.1)
  cfg = get_preset("tiny").replace(feature_grad_mult=0.0)  # feature encoder frozen (recipe)
  mesh = mesh_lib.make_mesh(2, 1, 1, devices=jax.devices()[:2])  # data-parallel over 2 devices
  tuner = finetune.Finetuner(heads.Wav2Vec2ForCTC(cfg, vocab.size), TASKS["asr"], c, mesh, 16_000, 4)
  state = tuner.create_state({})

  def cer(state):
    out = jax.device_get(tuner.evaluate(state, batch))
    hyps = [vocab.decode(ids) for ids in ctc.greedy_decode(out["logits"], out["frame_valid"])]
    return metrics.cer(texts, hyps)

  def snapshot(state):
    p = jax.device_get(unbox(state.params))
    return (p["wav2vec2"]["feature_extractor"], p["wav2vec2"]["encoder"], p["lm_head"])

  before = cer(state)
  fe0, enc0, head0 = snapshot(state)
  for _ in range(3):
    state, m = tuner.step(state, batch)
  assert float(m["transformer_frozen"]) == 1.0
  fe, enc, head = snapshot(state)
  jax.tree.map(np.testing.assert_array_equal, enc, enc0)  # Transformer frozen for 3 updates
  assert not np.array_equal(head["kernel"], head0["kernel"])  # the head trains from the start
  for _ in range(c.finetune.num_steps - 3):
    state, m = tuner.step(state, batch)
  fe, enc, _ = snapshot(state)
  jax.tree.map(np.testing.assert_array_equal, fe, fe0)  # feature encoder never changes
  assert not np.array_equal(enc["layers"]["attention"]["query_kernel"],
                            enc0["layers"]["attention"]["query_kernel"])
  after = cer(state)
  assert after < 0.5 and after < before, (before, after)

  # Orbax round trip onto the same mesh: what a resumed run starts from.
  with CheckpointManager(tmp_path / "ckpt", save_every=1, keep=1) as manager:
    manager.save(int(state.step), state, force=True)
    manager.wait_until_finished()
    restored, _ = manager.restore_latest(restore_target(tuner.abstract_state, tuner.state_sharding))
  assert int(restored.step) == 120
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(unbox(restored.params)),
               jax.device_get(unbox(state.params)))


def _select_update(tuner, frozen, grads, opt_state, params):
  """The freeze as it was written before `finetune.update`: the full Adam update of every
  parameter, then a jnp.where over each encoder parameter and Adam moment (the reference)."""
  import jax.numpy as jnp
  import optax
  from xlsr_jax.models.params import rebox
  updates, new_opt = tuner.optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda lab, new, old: jnp.where(frozen, old, new) if lab == finetune.ENCODER else new
  new_params = rebox(params, jax.tree.map(keep, unbox(tuner._labels_fn(params)),
                                          unbox(new_params), unbox(params)))
  inner = dict(new_opt.inner_states)
  inner[finetune.ENCODER] = jax.tree.map(lambda n, o: jnp.where(frozen, o, n),
                                         inner[finetune.ENCODER],
                                         opt_state.inner_states[finetune.ENCODER])
  return new_params, new_opt._replace(inner_states=inner)


@pytest.fixture(scope="module")
def lid_tuner():
  c = task_config_defaults.get_default_config()
  c.finetune.num_steps, c.finetune.freeze_transformer_steps = 4, 2
  c.finetune.layerdrop = c.finetune.mask_prob = c.finetune.mask_channel_prob = 0.0
  c.optimizer.peak_lr = 1e-2
  cfg = get_preset("tiny").replace(feature_grad_mult=0.0)
  model = heads.Wav2Vec2ForUtteranceClassification(cfg, 3, layer_weighting=False)
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return finetune.Finetuner(model, TASKS["lid"], c, mesh, 4000, 4)


def test_freeze_update_equals_the_select_implementation(lid_tuner):
  t = lid_tuner
  new = jax.jit(lambda frozen, *a: finetune.update(t.optimizer, *a, held=t.frozen_optimizer,
                                                   frozen=frozen))
  old = jax.jit(lambda *a: _select_update(t, *a))
  state = t.create_state({})
  a = b = (state.params, state.opt_state)
  rng = np.random.default_rng(0)
  for step in range(4):  # frozen, frozen, trainable, trainable: the same grads into both
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                         unbox(state.params))
    grads = jax.tree.map(lambda box, g: box.replace_boxed(g) if hasattr(box, "replace_boxed")
                         else g, state.params, grads, is_leaf=lambda x: hasattr(x, "unbox"))
    frozen = np.asarray(step < 2)
    a = new(frozen, grads, a[1], a[0])
    b = old(frozen, grads, b[1], b[0])
    same = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)
    jax.tree.map(same, jax.device_get(unbox(a)), jax.device_get(unbox(b)))
    enc, enc0 = (unbox(p)["wav2vec2"]["encoder"] for p in (a[0], state.params))
    moved = jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), enc, enc0))
    assert all(moved) if step >= 2 else not any(moved), step  # bit-identical while frozen


def test_finetune_step_freezes_the_encoder_then_trains_it(lid_tuner):
  rng = np.random.default_rng(0)
  batch = dict(waveform=rng.standard_normal((4, 4000)).astype(np.float32),
               padding_mask=np.zeros((4, 4000), bool), label=np.array([0, 1, 2, 1], np.int32),
               example_valid=np.ones(4, bool))
  state = lid_tuner.create_state({})
  params = lambda s: jax.device_get(unbox(s.params))
  start = params(state)
  query = lambda p: p["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"]
  for step in range(4):
    state, m = lid_tuner.step(state, batch)
    p = params(state)
    assert float(m["transformer_frozen"]) == (step < 2)
    assert np.array_equal(query(p), query(start)) == (step < 2), step  # frozen: bit-identical
    assert not np.array_equal(p["head"]["classifier"]["kernel"], start["head"]["classifier"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, p["wav2vec2"]["feature_extractor"],
                 start["wav2vec2"]["feature_extractor"])  # the feature encoder never changes
