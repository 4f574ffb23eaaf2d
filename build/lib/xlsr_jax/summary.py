"""Parameter count and per-component breakdown of a preset, from shapes only (jax.eval_shape).

  python -m xlsr_jax.summary --preset xlsr_2b
"""
from __future__ import annotations

import argparse
import sys

import flax.linen as nn
import jax
import numpy as np

from xlsr_jax.models import PRESETS, Wav2Vec2ForPreTraining, get_preset
from xlsr_jax.models import params as params_lib
from xlsr_jax.models.config import Wav2Vec2Config

COMPONENTS = (  # (label, path prefix in the params tree)
    ("feature encoder (convs)", ("wav2vec2", "feature_extractor")),
    ("feature projection", ("wav2vec2", "feature_projection")),
    ("mask embedding", ("wav2vec2", "masked_spec_embed")),
    ("positional conv embedding", ("wav2vec2", "encoder", "pos_conv_embed")),
    ("transformer layers", ("wav2vec2", "encoder", "layers")),
    ("final layer norm", ("wav2vec2", "encoder", "layer_norm")),
    ("quantizer", ("quantizer",)),
    ("project_q", ("project_q",)),
    ("project_hid", ("project_hid",)),
)


def abstract_params(config: Wav2Vec2Config):
  """Parameter shapes of the pretraining model (boxed with logical axis names), no memory allocated."""
  return params_lib.abstract_params(Wav2Vec2ForPreTraining(config))


def count_by_component(config: Wav2Vec2Config) -> list[tuple[str, int]]:
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_params(config)))[0]
  counts = {label: 0 for label, _ in COMPONENTS}
  for path, leaf in flat:
    keys = tuple(p.key for p in path)
    for label, prefix in COMPONENTS:
      if keys[:len(prefix)] == prefix:
        counts[label] += int(np.prod(leaf.shape))
        break
    else:
      raise AssertionError(f"parameter {'/'.join(keys)} belongs to no component")
  return list(counts.items())


def format_summary(name: str, config: Wav2Vec2Config) -> str:
  rows = count_by_component(config)
  total = sum(n for _, n in rows)
  encoder = total - sum(n for label, n in rows if label in ("quantizer", "project_q", "project_hid"))
  lines = [f"preset {name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
           f"FFN {config.intermediate_size}, heads {config.num_attention_heads}, "
           f"codevector {config.codevector_dim} / final {config.proj_codevector_dim}",
           f"{'component':<28}{'parameters':>16}{'share':>8}"]
  for label, n in rows:
    lines.append(f"{label:<28}{n:>16,}{100 * n / total:>7.2f}%")
  lines.append(f"{'encoder (fine-tuning)':<28}{encoder:>16,}")
  lines.append(f"{'total (pretraining)':<28}{total:>16,}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
  args = parser.parse_args(argv)
  print(format_summary(args.preset, get_preset(args.preset)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
