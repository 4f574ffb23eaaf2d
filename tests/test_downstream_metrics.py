"""WER / CER against jiwer (or hand-computed values), accuracy and the confusion matrix."""
import math

import numpy as np
import pytest

from xlsr_jax.downstream import metrics

CASES = [  # (refs, hyps, hand-computed WER, CER)
    (["the cat sat"], ["the cat sat"], 0.0, 0.0),
    (["the cat sat"], ["the bat sat on"], 2 / 3, 4 / 11),
    (["hello world", "good"], ["", "good"], 2 / 3, 11 / 15),  # empty hypothesis: all deletions
    (["a b c d"], ["a x c"], 2 / 4, 3 / 7),
    (["мир труд", "世界"], ["мир труб", "世"], 2 / 3, 2 / 10),
]


@pytest.mark.parametrize("refs,hyps,want_wer,want_cer", CASES)
def test_wer_cer_hand_computed(refs, hyps, want_wer, want_cer):
  assert metrics.wer(refs, hyps) == pytest.approx(want_wer)
  assert metrics.cer(refs, hyps) == pytest.approx(want_cer)


@pytest.mark.parametrize("refs,hyps,want_wer,want_cer", CASES)
def test_wer_cer_equal_jiwer(refs, hyps, want_wer, want_cer):
  jiwer = pytest.importorskip("jiwer")
  assert metrics.wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
  assert metrics.cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


def test_empty_references():
  # An empty reference adds no reference units; its hypothesis counts as insertions.
  assert metrics.wer(["a b", ""], ["a b", "c d"]) == pytest.approx(2 / 2)
  assert metrics.cer(["ab", ""], ["ab", "c"]) == pytest.approx(1 / 2)
  assert metrics.wer([""], [""]) == 0.0
  assert math.isinf(metrics.wer([""], ["x"]))
  assert metrics.edit_distance("", "abc") == 3 and metrics.edit_distance("kitten", "sitting") == 3


def test_asr_metrics_per_language_and_overall():
  out = metrics.asr_metrics(["a b", "c d", "e"], ["a b", "c", "f"], ["en", "fr", "en"])
  assert out["wer"] == pytest.approx(2 / 5)
  assert out["per_language"]["en"]["wer"] == pytest.approx(1 / 3)
  assert out["per_language"]["fr"]["cer"] == pytest.approx(2 / 3)
  assert out["per_language"]["fr"]["num_utterances"] == 1


def test_classification_metrics_and_confusion():
  out = metrics.classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], ["en", "fr", "ru"])
  assert out["accuracy"] == pytest.approx(4 / 6) and out["error_rate"] == pytest.approx(2 / 6)
  np.testing.assert_array_equal(out["confusion"], [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  assert out["per_class_accuracy"]["ru"] == pytest.approx(2 / 3)
