"""Negatives, contrastive logits and loss, perplexity, diversity, total loss, HF parity, grads."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import (Wav2Vec2ForPreTraining,
                                                            Wav2Vec2GumbelVectorQuantizer)

from xlsr_jax.objectives import (codebook_perplexity, compute_span_mask, contrastive_logits,
                                 contrastive_loss, diversity_loss, feature_penalty,
                                 masked_positions, max_masked_frames, negatives_equal_positive,
                                 pretraining_loss, sample_negatives)


def _random(seed: int, shape, dtype=np.float32) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _key(seed: int) -> jax.Array:
  """RBG keys: threefry's kernel takes seconds to compile on CPU (the first test uses threefry)."""
  return jax.random.key(seed, impl="rbg")


# Jitted once at module level: op-by-op (eager) execution compiles every primitive separately.
_sample_negatives = jax.jit(sample_negatives, static_argnums=(2, 3))
_pretraining_loss = jax.jit(pretraining_loss, static_argnames=(
    "num_codevectors", "temperature", "diversity_weight", "feature_penalty_weight"))


def test_sample_negatives_never_self_never_out_of_range():
  num_masked = jnp.array([0, 1, 2, 5, 20], jnp.int32)
  negatives = np.asarray(_sample_negatives(jax.random.key(0), num_masked, 20, 64))
  assert negatives.shape == (5, 20, 64) and negatives.dtype == np.int32
  for b, n in enumerate(np.asarray(num_masked)):
    assert np.all((negatives[b] >= 0) & (negatives[b] < max(n, 1))), f"row {b} out of range"
    if n >= 2:
      own = np.arange(n)[:, None]
      assert not np.any(negatives[b, :n] == own), f"row {b}: a frame drew itself"


def test_sample_negatives_is_uniform_over_the_other_frames():
  n, draws = 6, 6000
  negatives = np.asarray(_sample_negatives(_key(1), jnp.array([n]), 8, draws))[0]
  for j in (0, 2, n - 1):
    counts = np.bincount(negatives[j], minlength=n)
    assert counts[j] == 0
    others = np.delete(counts, j)
    expected = draws / (n - 1)        # binomial sd ~31: 10% is ~4 sd
    assert np.all(np.abs(others - expected) < 0.1 * expected), (j, counts)


def _torch_logits(context, targets, negative_indices, temperature=0.1):
  """Straightforward reference: gather the distractor vectors, torch cosine_similarity, -inf."""
  c, q = torch.from_numpy(np.array(context)), torch.from_numpy(np.array(targets))
  idx = torch.from_numpy(np.array(negative_indices)).long()
  negs = torch.stack([q[b][idx[b]] for b in range(q.shape[0])])               # [B, M, K, F]
  candidates = torch.cat([q[:, :, None], negs], dim=2)
  logits = torch.cosine_similarity(c[:, :, None].float(), candidates.float(), dim=-1) / temperature
  neg_is_pos = (negs == q[:, :, None]).all(-1)
  logits[:, :, 1:][neg_is_pos] = float("-inf")
  return logits.numpy()


def test_contrastive_logits_match_torch_including_neg_equal_pos():
  batch, frames, dim, k = 2, 12, 16, 9
  context, targets = _random(0, (batch, frames, dim)), _random(1, (batch, frames, dim))
  targets[0, 3] = targets[0, 7]            # duplicated codevectors
  targets[1, :6] = targets[1, 0]
  negatives = _sample_negatives(_key(2), jnp.array([frames, frames]), frames, k)
  ours = np.asarray(jax.jit(contrastive_logits)(jnp.asarray(context), jnp.asarray(targets),
                                                negatives))
  reference = _torch_logits(context, targets, negatives)
  assert ours.dtype == np.float32 and ours.shape == (batch, frames, 1 + k)
  np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(reference))
  assert np.isneginf(ours).sum() >= 5, "the duplicated targets should have hit some distractors"
  finite = np.isfinite(reference)
  np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-5, atol=1e-5)


def test_negatives_equal_positive_is_exact_equality():
  base = _random(3, (1, 1, 8))
  one_ulp = base.copy()
  one_ulp[0, 0, 5] = np.nextafter(one_ulp[0, 0, 5], np.float32(np.inf))
  signed_zero = base.copy()
  signed_zero[0, 0, 2] = 0.0
  negative_zero = signed_zero.copy()
  negative_zero[0, 0, 2] = -0.0
  targets = np.concatenate([base, base, one_ulp, -base, base[:, :, ::-1], signed_zero,
                            negative_zero], axis=1)
  indices = jnp.array([[[1, 2, 3, 4]] + [[0, 0, 0, 0]] * 4 + [[6, 6, 6, 6], [5, 5, 5, 5]]])
  equal = np.asarray(negatives_equal_positive(jnp.asarray(targets), indices))
  np.testing.assert_array_equal(equal[0, 0], [True, False, False, False])
  assert equal[0, 5].all() and equal[0, 6].all(), "-0.0 and +0.0 compare equal (as torch ==)"


def test_contrastive_loss_and_accuracy_rule():
  logits = np.array([[[2.0, 1.0, 0.0],       # correct
                      [1.0, 1.0, 1.0],       # all equal: fairseq does not count it
                      [1.0, 2.0, 0.0],       # wrong
                      [1.0, -np.inf, -np.inf],  # every distractor removed: correct
                      [1.0, 1.0, 0.0],       # tie at the top, argmax picks 0: correct
                      [3.0, 0.0, 0.0]]],     # invalid frame: ignored
                    np.float32)
  valid = np.array([[True] * 5 + [False]])
  loss_sum, correct, count = contrastive_loss(jnp.asarray(logits), jnp.asarray(valid))
  t = torch.from_numpy(logits[0][valid[0]])
  expected = torch.nn.functional.cross_entropy(t, torch.zeros(5, dtype=torch.long), reduction="sum")
  np.testing.assert_allclose(float(loss_sum), float(expected), rtol=1e-6)
  argmax, argmin = t.argmax(-1) == 0, t.argmin(-1) == 0      # fairseq wav2vec_criterion
  assert int(correct) == int(argmax.sum() - (argmax & argmin).sum()) == 3
  assert int(count) == 5


def test_codebook_perplexity_matches_hf_formula():
  rng = np.random.default_rng(4)
  logits = rng.standard_normal((3, 7, 2, 16)).astype(np.float32) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  valid = rng.random((3, 7)) < 0.6
  ours = float(codebook_perplexity(jnp.asarray(probs), jnp.asarray(valid)))
  hf = float(Wav2Vec2GumbelVectorQuantizer._compute_perplexity(
      torch.from_numpy(probs.reshape(21, 2, 16)), torch.from_numpy(valid)))
  marginal = probs[valid].mean(0)                              # fairseq: log(p + 1e-7)
  exact = np.exp(-(marginal * np.log(marginal + 1e-7)).sum(-1)).sum()
  np.testing.assert_allclose(ours, exact, rtol=1e-6)
  np.testing.assert_allclose(ours, hf, rtol=1e-4)              # HF uses xlogy (no 1e-7)
  probs[~valid] = np.nan                                       # invalid frames never read
  assert np.isfinite(float(codebook_perplexity(jnp.asarray(probs), jnp.asarray(valid))))


def test_perplexity_of_one_hot_codes_and_diversity():
  codes = np.eye(4, dtype=np.float32)[np.array([[0, 1], [1, 0], [2, 3], [3, 2]])]   # [4, G=2, V=4]
  np.testing.assert_allclose(float(codebook_perplexity(jnp.asarray(codes))), 8.0, rtol=1e-5)
  collapsed = np.broadcast_to(codes[:1], codes.shape)
  np.testing.assert_allclose(float(codebook_perplexity(jnp.asarray(collapsed))), 2.0, rtol=1e-5)
  assert float(diversity_loss(jnp.float32(8.0), 8)) == 0.0
  np.testing.assert_allclose(float(diversity_loss(jnp.float32(2.0), 8)), 0.75)


def test_feature_penalty_is_float32_mean_square():
  raw = _random(5, (2, 5, 3))
  value = feature_penalty(jnp.asarray(raw, jnp.bfloat16))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), np.mean(np.square(raw)), rtol=1e-2)


@jax.jit
def _mask_and_negatives(key: jax.Array, lengths: jax.Array):
  """Span mask over 40 frames, masked positions padded to the static bound, 10 negatives."""
  key_mask, key_neg = jax.random.split(key)
  mask = compute_span_mask(key_mask, lengths, 40, mask_prob=0.65, mask_length=5)
  bound = max_masked_frames(40, 0.65, 5, 2)
  indices, valid = masked_positions(mask, bound)
  return mask, indices, valid, sample_negatives(key_neg, valid.sum(-1), bound, 10)


def _masked_batch(seed: int, dim=16, groups=2, entries=8):
  """A [3, 40] full-sequence batch with span masks, plus everything gathered at masked frames."""
  batch, frames = 3, 40
  mask, indices, valid, negatives = _mask_and_negatives(_key(seed), jnp.array([frames, 33, 25]))
  full = {"context": _random(seed, (batch, frames, dim)),
          "targets": _random(seed + 1, (batch, frames, dim))}
  full["targets"][2, np.asarray(indices[2, :4])] = full["targets"][2, 0]   # some neg == pos
  logits = _random(seed + 2, (batch, frames, groups, entries))
  full["probs"] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  rows = np.arange(batch)[:, None]
  gathered = {k: v[rows, np.asarray(indices)] for k, v in full.items()}
  return full, np.asarray(mask), indices, valid, negatives, gathered


def test_pretraining_loss_matches_hf_sum_convention():
  full, mask, indices, valid, negatives, g = _masked_batch(6)
  batch, frames, dim = full["context"].shape
  num_codevectors = 16
  loss, metrics = _pretraining_loss(g["context"], g["targets"], negatives, valid, g["probs"],
                                    num_codevectors=num_codevectors)

  # HF Wav2Vec2ForPreTraining.forward steps 3-8 on the full sequence, our negatives mapped to
  # HF's flat [batch * frames] indices.
  hf_negatives = np.zeros((batch, frames, negatives.shape[-1]), np.int64)
  for b in range(batch):
    n = int(valid[b].sum())
    positions = np.asarray(indices[b, :n])
    hf_negatives[b, positions] = b * frames + positions[np.asarray(negatives[b, :n])]
  q = torch.from_numpy(full["targets"])
  negs = q.view(-1, dim)[torch.from_numpy(hf_negatives).view(-1)]
  negs = negs.view(batch, frames, -1, dim).permute(2, 0, 1, 3)
  logits = Wav2Vec2ForPreTraining.compute_contrastive_logits(
      q[None], negs, torch.from_numpy(full["context"]), 0.1)
  neg_is_pos = (q == negs).all(-1)
  logits[1:][neg_is_pos] = float("-inf")
  logits = logits.transpose(0, 2).reshape(-1, logits.size(0))
  mask_t = torch.from_numpy(mask.copy())
  target = ((1 - mask_t.long()) * -100).transpose(0, 1).flatten()
  contrastive = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
  perplexity = Wav2Vec2GumbelVectorQuantizer._compute_perplexity(
      torch.from_numpy(full["probs"]).view(batch * frames, 2, 8), mask_t)
  diversity = (num_codevectors - perplexity) / num_codevectors * mask_t.sum()
  hf_loss = contrastive + 0.1 * diversity

  assert int(metrics["num_masked"]) == mask.sum()
  assert neg_is_pos[:, mask_t].any(), "the test should exercise the -inf path"
  np.testing.assert_allclose(float(metrics["contrastive_loss_sum"]), float(contrastive), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["code_perplexity"]), float(perplexity), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_sum"]), float(hf_loss), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(hf_loss) / mask.sum(), rtol=1e-5)


def test_pretraining_loss_terms_and_metrics():
  _, _, _, valid, negatives, g = _masked_batch(7)
  raw = _random(8, (3, 40, 4))
  loss, m = _pretraining_loss(g["context"], g["targets"], negatives, valid, g["probs"],
                              num_codevectors=16, raw_features=jnp.asarray(raw),
                              diversity_weight=0.1, feature_penalty_weight=10.0)
  n = float(valid.sum())
  penalty = np.mean(np.square(raw))
  diversity = (16 - float(m["code_perplexity"])) / 16
  expected = float(m["contrastive_loss_sum"]) + 0.1 * diversity * n + 10.0 * penalty * n
  np.testing.assert_allclose(float(loss) * n, expected, rtol=1e-5)
  np.testing.assert_allclose(float(m["feature_penalty"]), penalty, rtol=1e-5)
  np.testing.assert_allclose(float(m["diversity_loss"]), diversity, rtol=1e-5)
  np.testing.assert_allclose(float(m["contrastive_loss_bits"]),
                             float(m["contrastive_loss"]) / math.log(2), rtol=1e-6)
  assert 0.0 <= float(m["accuracy"]) <= 1.0 and float(m["num_masked"]) == n
  assert all(v.shape == () for v in m.values())


def test_gradients_reach_targets_and_skip_padding_entries():
  _, _, _, valid, negatives, g = _masked_batch(9)
  pad = ~np.asarray(valid)
  assert pad.any(), "the test needs padded (invalid) masked entries"
  zero_pad = lambda x: jnp.where(jnp.asarray(pad)[..., None], 0.0, x)   # zero vectors: 0/0 risk
  context, targets = zero_pad(g["context"]), zero_pad(g["targets"])

  def loss_fn(context, targets, probs):
    return pretraining_loss(context, targets, negatives, valid, probs, num_codevectors=16)[0]
  grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)))(context, targets, g["probs"])
  for name, grad in zip(("context", "targets", "probs"), grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)), f"non-finite gradient wrt {name}"
    assert np.abs(grad[~pad]).sum() > 0, f"no gradient reaches {name}"
    assert np.all(grad[pad] == 0), f"padding entries of {name} got gradient"


def test_bf16_inputs_give_float32_logits():
  context, targets = _random(10, (2, 8, 16)), _random(11, (2, 8, 16))
  negatives = _sample_negatives(_key(3), jnp.array([8, 8]), 8, 5)
  low = jax.jit(contrastive_logits)(jnp.asarray(context, jnp.bfloat16),
                                    jnp.asarray(targets, jnp.bfloat16), negatives)
  rounded = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
  reference = _torch_logits(rounded(context), rounded(targets), negatives)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(low), reference, rtol=1e-5, atol=1e-5)


def test_loss_never_builds_a_batch_by_k_by_feature_tensor():
  batch, frames, dim, k = 4, 200, 256, 100
  spec = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)

  def loss_fn(context, targets, negatives, valid, probs):
    return pretraining_loss(context, targets, negatives, valid, probs, num_codevectors=640)[0]
  compiled = jax.jit(jax.grad(loss_fn, argnums=(0, 1))).lower(
      spec(batch, frames, dim), spec(batch, frames, dim), spec(batch, frames, k, dtype=jnp.int32),
      spec(batch, frames, dtype=jnp.bool_), spec(batch, frames, 2, 320)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < batch * frames * k * dim // 4, f"{temp / 1e6:.1f} MB of temporaries"


def test_contrastive_sums_per_batch_shard_equal_the_global_computation():
  """shard_map over (data, fsdp) of the contrastive sums: same values and gradients as one device."""
  from xlsr_jax.objectives.losses import contrastive_sums
  from xlsr_jax.sharding.mesh import make_mesh
  rng = np.random.default_rng(0)
  batch, m, k, f = 8, 12, 5, 16
  context = jnp.asarray(rng.standard_normal((batch, m, f)), jnp.float32)
  targets = jnp.asarray(rng.standard_normal((batch, m, f)), jnp.float32)
  targets = targets.at[0, 3].set(targets[0, 4])  # a distractor equal to the positive: -inf logit
  indices = jnp.asarray(rng.integers(0, m, (batch, m, k)), jnp.int32)
  valid = jnp.asarray(rng.random((batch, m)) < 0.8)

  def total(c):  # per batch shard under a mesh (the rule table's batch axes), whole without one
    loss_sum, correct, count = contrastive_sums(c, targets, indices, valid, 0.1)
    return loss_sum, (correct, count)

  (expected, aux), grad = jax.value_and_grad(total, has_aux=True)(context)
  mesh = make_mesh(4, 2, 1, devices=jax.devices()[:8])
  with jax.set_mesh(mesh):
    (got, got_aux), got_grad = jax.jit(jax.value_and_grad(total, has_aux=True))(context)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert tuple(map(int, got_aux)) == tuple(map(int, aux))
  np.testing.assert_allclose(got_grad, grad, rtol=1e-5, atol=1e-6)  # jit vs eager rounding
