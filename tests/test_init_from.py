"""Continued pretraining (train.init_from): step-0 parity with the HF reference on its own weights,
init_exclude, shape mismatches named, resume over init_from, and fine-tuning from the result."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import parity_utils as pu
from tests.configs import small_config
from xlsr_jax.checkpoints import weight_sources
from xlsr_jax.checkpoints.manager import CheckpointMismatchError
from xlsr_jax.models.params import unbox
from xlsr_jax.checkpoints.merge import merge
from xlsr_jax.config_loading import ConfigError, model_config_from
from xlsr_jax.sharding import mesh as mesh_lib
from xlsr_jax.objectives import wav2vec2 as w2v
from xlsr_jax.training import init_from, train_step as ts
from xlsr_jax.training.state import build_trainer

TOL = 1e-4
SAMPLES = 6400


def _config(**train):
  """small_config with every dropout off, so HF in train mode differs from ours only by Gumbel noise."""
  c = small_config(**train)
  for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
               "feat_quantizer_dropout", "layerdrop"):
    c.model[name] = 0.0
  return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(HF Wav2Vec2ForPreTraining with random perturbed weights, its save_pretrained directory)."""
  ref = pu.reference_model(model_config_from(_config()), seed=31)
  path = str(tmp_path_factory.mktemp("hf_ref"))
  ref.save_pretrained(path)
  return ref, path


@pytest.fixture(scope="module")
def trainer():
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return build_trainer(_config(), mesh, SAMPLES)


def _reference_layout(draws: w2v.StepDraws):
  """Our draws ([batch, M] positions, [batch, M, K] negatives into M, [batch, M, G, V] Gumbel noise)
  in HF's layout: [batch, frames] mask, [batch, frames, K] global negatives, [batch, frames, G, V]."""
  mask = np.asarray(draws.mask_time)
  idx, valid, neg = (np.asarray(x) for x in (draws.masked_indices, draws.valid, draws.negative_indices))
  gumbel = None if draws.gumbel_noise is None else np.asarray(draws.gumbel_noise)
  batch, frames = mask.shape
  ref_neg = np.zeros((batch, frames, neg.shape[-1]), np.int64)
  noise = None if gumbel is None else np.zeros((batch, frames) + gumbel.shape[2:], np.float32)
  for b in range(batch):
    n = valid[b].sum()
    ref_neg[b, idx[b, :n]] = idx[b][neg[b, :n]] + b * frames
    if gumbel is not None:
      noise[b, idx[b, :n]] = gumbel[b, :n]
  return mask, ref_neg, noise


def _reference_loss(ref, wave, padding, mask, ref_neg, *, train: bool, tau: float = 1.0,
                    noise=None, monkeypatch=None):
  """HF total and contrastive loss per masked frame on our masks (and Gumbel noise in train mode)."""
  if noise is not None:
    def fixed_gumbel_softmax(logits, tau=1.0, hard=False, **_):
      y_soft = torch.softmax((logits + torch.from_numpy(noise).reshape(logits.shape)) / tau, dim=-1)
      y_hard = torch.nn.functional.one_hot(y_soft.argmax(-1), y_soft.shape[-1]).to(y_soft.dtype)
      return y_hard - y_soft.detach() + y_soft
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", fixed_gumbel_softmax)
  ref.train(train)
  ref.set_gumbel_temperature(tau)
  with torch.no_grad():
    out = ref(torch.from_numpy(wave), attention_mask=torch.from_numpy(~padding).long(),
              mask_time_indices=torch.tensor(mask), sampled_negative_indices=torch.from_numpy(ref_neg))
  n = float(mask.sum())
  return out.loss.item() / n, out.contrastive_loss.item() / n


@pytest.mark.slow  # ~25 s of CPU: HF forward twice, init + step compiled, 8 steps
def test_step0_losses_equal_the_reference_and_training_lowers_them(reference, trainer, monkeypatch,
                                                                   capsys):
  ref, path = reference
  config = _config(init_from=path)
  state = init_from.initial_state(trainer, config)
  out = capsys.readouterr().out
  assert f"init_from {path} (hf): loaded" in out and "re-initialised 0 arrays" in out
  wave, padding = pu.random_batch(3, SAMPLES, [SAMPLES, 4800, 5600], seed=32)
  lengths = (~padding).sum(1).astype(np.int32)
  batch = {"waveform": jnp.asarray(wave), "lengths": jnp.asarray(lengths)}
  model_cfg, objective = trainer.model.config, config.objective
  shapes = ts.StepShapes.create(model_cfg, objective, SAMPLES)

  # Validation at step 0 (argmax codes, no dropout): the masks/negatives of eval's key.
  eval_key = jax.random.key(1000)
  ours = jax.device_get(trainer.evaluate(state, batch, eval_key))
  draws = w2v.sample_draws(eval_key, jnp.asarray(lengths), model_cfg, objective, shapes)
  mask, ref_neg, _ = _reference_layout(draws)
  _, ref_contrastive = _reference_loss(ref, wave, padding, mask, ref_neg, train=False)
  assert abs(ours["contrastive_loss"] - ref_contrastive) <= TOL * abs(ref_contrastive)

  # The first training step's loss (Gumbel noise, tau at step 0, diversity term) on its own draws.
  key = jax.random.fold_in(state.rng, 0)
  mask_key, gumbel_key, _, _ = jax.random.split(key, 4)
  draws = w2v.sample_draws(mask_key, jnp.asarray(lengths), model_cfg, objective, shapes, gumbel_key)
  mask, ref_neg, noise = _reference_layout(draws)
  ref_loss, ref_contrastive = _reference_loss(ref, wave, padding, mask, ref_neg, train=True,
                                              tau=objective.gumbel_start, noise=noise,
                                              monkeypatch=monkeypatch)
  state, metrics = trainer.step(state, batch)
  metrics = jax.device_get(metrics)
  assert abs(metrics["contrastive_loss"] - ref_contrastive) <= TOL * abs(ref_contrastive)
  assert abs(metrics["loss"] - ref_loss) <= TOL * abs(ref_loss)

  for _ in range(7):  # a few more steps on the same batch lower the validation loss
    state, _ = trainer.step(state, batch)
  after = jax.device_get(trainer.evaluate(state, batch, eval_key))
  assert after["contrastive_loss"] < ours["contrastive_loss"] - 0.05, (ours, after)


def test_init_exclude_keeps_the_random_init_of_matching_parameters(reference, trainer, capsys):
  ref, path = reference
  fresh = jax.device_get(unbox(trainer.create_state().params))
  state = init_from.initial_state(trainer, _config(init_from=path, init_exclude=["^quantizer/"]))
  # codevectors [2, 16, 16], weight_proj kernel [32 conv channels, 2 x 16] and bias [32]
  assert "re-initialised 3 arrays (1,568 parameters)" in capsys.readouterr().out
  params = jax.device_get(unbox(state.params))
  loaded = weight_sources.load_checkpoint(path).params
  for leaf, fresh_leaf in zip(jax.tree.leaves(params["quantizer"]), jax.tree.leaves(fresh["quantizer"])):
    np.testing.assert_array_equal(leaf, fresh_leaf)
  assert not np.array_equal(loaded["quantizer"]["codevectors"], fresh["quantizer"]["codevectors"])
  np.testing.assert_array_equal(params["project_q"]["kernel"], loaded["project_q"]["kernel"])
  np.testing.assert_array_equal(params["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"],
                                loaded["wav2vec2"]["encoder"]["layers"]["attention"]["query_kernel"])
  with pytest.raises(ConfigError, match=r"\['\^quantiser/'\] match no parameter"):
    init_from.initial_state(trainer, _config(init_from=path, init_exclude=["^quantiser/"]))


def test_shape_mismatch_names_every_parameter_with_both_shapes(reference):
  _, path = reference
  config = _config(init_from=path)
  config.model.intermediate_size = 96
  other = build_trainer(config, mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]), SAMPLES)
  with pytest.raises(CheckpointMismatchError) as e:
    init_from.initial_state(other, config)
  message = str(e.value)
  assert message.startswith(f"train.init_from={path} does not match the model (3 difference(s))")
  assert "['wav2vec2']['encoder']['layers']['feed_forward']['intermediate']['kernel']: " \
         "checkpoint (2, 64, 128), model (2, 64, 96)" in message
  assert "['intermediate']['bias']: checkpoint (2, 128), model (2, 96)" in message
  assert "['output']['kernel']: checkpoint (2, 128, 64), model (2, 96, 64)" in message
  assert "\n" not in message


def test_encoder_only_checkpoint_needs_the_head_excluded():
  """A Wav2Vec2Model tree has no quantizer: named as missing unless init_exclude re-draws it."""
  fresh = {"wav2vec2": {"encoder": {"w": np.zeros((2, 3))}}, "quantizer": {"codevectors": np.ones(4)},
           "project_q": {"kernel": np.ones((2, 2))}}
  encoder_only = {"encoder": {"w": np.full((2, 3), 5.0)}}
  tree, dropped = init_from.pretraining_tree({"wav2vec2": encoder_only,
                                              "lm_head": {"kernel": np.ones(1)}})
  assert dropped == ["lm_head"] and set(tree) == {"wav2vec2"}
  tree, _ = init_from.pretraining_tree(encoder_only)
  with pytest.raises(CheckpointMismatchError, match=r"\(2 difference\(s\)\): \['project_q'\]\['kernel'\]: missing "
                     r"from the checkpoint; \['quantizer'\]\['codevectors'\]: missing from the checkpoint"):
    init_from.merge(fresh, tree, [], "x")
  merged, counts = init_from.merge(fresh, tree, ["^quantizer/", "^project_"], "x")
  assert merged["wav2vec2"]["encoder"]["w"][0, 0] == 5.0 and merged["quantizer"] is not None
  assert merged["quantizer"]["codevectors"] is fresh["quantizer"]["codevectors"]
  assert counts == dict(loaded_arrays=1, reinit_arrays=2, loaded_parameters=6, reinit_parameters=8)


def test_partial_merge_keeps_what_the_loaded_tree_lacks_and_names_what_does_not_fit():
  """Fine-tuning's merge (partial=True): the loaded subtrees replace the fresh ones, every other
  parameter stays fresh; a parameter the model lacks or of another shape is named."""
  fresh = {"wav2vec2": {"encoder": {"w": np.zeros((2, 3))}}, "head": {"kernel": np.ones((3, 4))}}
  merged, counts = merge(fresh, {"wav2vec2": {"encoder": {"w": np.full((2, 3), 5.0)}}}, partial=True)
  assert merged["wav2vec2"]["encoder"]["w"][0, 0] == 5.0
  assert merged["head"]["kernel"] is fresh["head"]["kernel"]
  assert counts == dict(loaded_arrays=1, reinit_arrays=1, loaded_parameters=6, reinit_parameters=12)
  with pytest.raises(CheckpointMismatchError, match=r"\['lm_head'\]\['kernel'\]: not in the model"):
    merge(fresh, {"lm_head": {"kernel": np.ones((3, 4))}}, partial=True)
  with pytest.raises(CheckpointMismatchError,
                     match=r"\['head'\]\['kernel'\]: checkpoint \(3, 5\), model \(3, 4\)"):
    merge(fresh, {"head": {"kernel": np.ones((3, 5))}}, partial=True)


def test_architecture_difference_with_equal_shapes_is_refused(reference, trainer):
  _, path = reference
  config = _config(init_from=path)
  config.model.do_stable_layer_norm = False
  other = build_trainer(config, trainer.mesh, SAMPLES)
  with pytest.raises(ConfigError, match="do_stable_layer_norm: checkpoint True, model False"):
    init_from.initial_state(other, config)


def _toy_config(data_dir, num_steps, init):
  """New languages (alpha's fr, sw) replaying beta at 50%, each language scored alone at step 2."""
  c = _config(num_steps=num_steps, log_every=2, eval_every=2, eval_batches=1,
              eval_language_batches=1, checkpoint_every=2, init_from=init)
  c.data.update(data_dir=data_dir, sources=[["toy_speech/alpha", ["fr", "sw"]]],
                replay_sources=[["toy_speech/beta", None]], replay_fraction=0.5,
                max_sample_size=8000, min_sample_size=2000, batch_seconds=2.0, prefetch_batches=1)
  c.mesh.data = 1
  return c


@pytest.mark.slow  # two runs of the loop and an export
def test_loop_starts_from_init_from_then_resumes_its_own_checkpoint(reference, toy_corpus_dir,
                                                                    tmp_path, monkeypatch, capsys):
  """A new run loads init_from; the same command later resumes (init_from is not read again: here
  it no longer exists); per-language validation is written; the continued model's export is a
  --config.init for fine-tuning."""
  from xlsr_jax import export
  from xlsr_jax.downstream import encoders
  from xlsr_jax.training.loop import train_and_evaluate
  _, path = reference
  original = mesh_lib.make_mesh
  monkeypatch.setattr(mesh_lib, "make_mesh",
                      lambda *a, **k: original(*a, **{**k, "devices": jax.devices()[:1]}))
  workdir = str(tmp_path / "run")
  first = train_and_evaluate(_toy_config(toy_corpus_dir, 2, path), workdir)
  assert "init_from" in capsys.readouterr().out and int(first["state"].step) == 2
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["init_from"] == path
  table = json.loads(open(os.path.join(workdir, "language_metrics.json")).read())
  assert table["steps"] == [2] and sorted(table["languages"]) == ["en", "fr", "pt_br", "sw", "yo"]
  for metrics in table["languages"].values():
    assert 0.0 <= metrics["accuracy"][0] <= 1.0 and np.isfinite(metrics["contrastive_loss"][0])
  assert os.path.exists(os.path.join(workdir, "language_metrics.png"))
  second = train_and_evaluate(_toy_config(toy_corpus_dir, 3, str(tmp_path / "gone")), workdir)
  out = capsys.readouterr().out
  assert "resumed from step 2" in out and "not loaded" in out and int(second["state"].step) == 3

  # Fine-tuning input: the continued run's export loads through the downstream --config.init path.
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'export'}"]) == 0
  loaded = encoders.load_encoder(str(tmp_path / "export"))
  trained = jax.device_get(unbox(second["state"].params))["wav2vec2"]
  np.testing.assert_array_equal(loaded.params["feature_projection"]["projection"]["kernel"],
                                trained["feature_projection"]["projection"]["kernel"])
  assert loaded.config == model_config_from(_config())
  assert export.main([f"--workdir={workdir}", f"--out={tmp_path / 'hf'}", "--format=hf"]) == 0
  hf = encoders.load_encoder(str(tmp_path / "hf"))
  assert hf.source == "hf" and hf.config == loaded.config
  for a, b in zip(jax.tree.leaves(hf.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["export", "fairseq"])
def test_export_and_fairseq_layouts_load_the_same_weights(reference, trainer, tmp_path, layout):
  """Our export and a fairseq XLS-R .pt of the reference's weights load what the HF directory does."""
  from tests.test_convert import to_fairseq, write_fairseq_checkpoint
  from xlsr_jax.checkpoints import hf_layout, model_files
  ref, _ = reference
  state_dict = pu.state_dict_numpy(ref)
  cfg = trainer.model.config
  expected = hf_layout.hf_to_ours(state_dict, cfg)
  if layout == "export":
    path = str(tmp_path / "export")
    model_files.save_model(path, expected, cfg)
  else:
    path = str(tmp_path / "checkpoint.pt")
    write_fairseq_checkpoint(path, to_fairseq(state_dict, True), {
        "encoder_attention_heads": 4, "layer_norm_first": True, "latent_groups": 2,
        "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"})
  values, counts = init_from.load_checked(path, unbox(trainer.abstract_state.params), cfg, [])
  jax.tree.map(np.testing.assert_array_equal, values, expected)
  assert counts["source"] == layout and counts["reinit_arrays"] == 0
