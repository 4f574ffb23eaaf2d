"""Export the parameters of a pretraining run's checkpoint as a standalone model (no optimizer state).

  python -m xlsr_jax.export --workdir=DIR --out=OUT [--format=orbax|hf] [--step=N]

DIR is a training workdir: DIR/config.json (the run's config, `config.to_json()`) and
DIR/checkpoints/ (xlsr_jax.checkpoints.manager). Only the `params` item of the newest (or the
given) step is read. `orbax` writes OUT/params + OUT/model_config.json (model_files.save_model,
what downstream evaluation loads); `hf` writes the Hugging Face wav2vec2 layout (config.json +
model.safetensors, loadable by transformers.Wav2Vec2ForPreTraining; a BEST-RQ run's encoder by
transformers.Wav2Vec2Model).
"""
from __future__ import annotations

import argparse
import sys

from xlsr_jax.checkpoints.run_export import (  # noqa: F401  (the public API of a run's export)
    FORMATS, export, export_every_format, export_or_say, load_params, read_run_config)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--format", default="orbax", choices=FORMATS)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  args = parser.parse_args(argv)
  return 0 if export_or_say(args.workdir, args.out, args.format, args.step) else 1


if __name__ == "__main__":
  sys.exit(main())
