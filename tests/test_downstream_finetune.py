"""Fine-tuning machinery: tri-stage schedule, recipe freezing, CER falling on synthetic speech, resume."""
import jax
import numpy as np
import pytest

from data_pipelines import espeak
from data_pipelines.synthetic_speech.builder import synthesize_16k
from xlsr_jax.checkpoints.manager import CheckpointManager, restore_target, unbox
from xlsr_jax.downstream import ctc, defaults, finetune, heads, metrics
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
  c = defaults.get_default_config()
  c.finetune.num_steps, c.finetune.freeze_transformer_steps = 120, 3
  c.finetune.mask_prob = c.finetune.mask_channel_prob = c.finetune.layerdrop = 0.0
  c.optimizer.peak_lr, c.optimizer.phase_ratio = 5e-3, (0.1, 0.8, 0.1)
  cfg = get_preset("tiny").replace(feature_grad_mult=0.0)  # feature encoder frozen (recipe)
  mesh = mesh_lib.make_mesh(2, 1, 1, devices=jax.devices()[:2])  # data-parallel over 2 devices
  tuner = finetune.Finetuner(heads.Wav2Vec2ForCTC(cfg, vocab.size), "asr", c, mesh, 16_000, 4)
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
