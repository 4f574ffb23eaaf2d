"""Convert model parameters between xlsr_jax, Hugging Face wav2vec2 and fairseq (.pt import).

  python -m xlsr_jax.convert --from=hf --input=HF_DIR --output=OUR_DIR
  python -m xlsr_jax.convert --from=fairseq --input=xlsr2_300m.pt --output=OUR_DIR
  python -m xlsr_jax.convert --from=ours --input=OUR_DIR --output=HF_DIR   (writes the HF layout)
OUR_DIR holds Orbax params + model_config.json (as written by xlsr_jax.export).
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from xlsr_jax.checkpoints import fairseq_import, model_files, safe_pickle


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source", required=True, choices=["hf", "fairseq", "ours"])
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--num_attention_heads", type=int, default=None,
                      help="fairseq only, when the checkpoint's settings cannot be read")
  args = parser.parse_args(argv)
  try:
    return convert(args)
  except (ValueError, TypeError, FileNotFoundError, safe_pickle.UnsafeCheckpointError) as e:
    # ConversionError and CheckpointFileError are ValueErrors: every message names the file or key
    print(f"convert error: {e}", file=sys.stderr)
    return 1


def convert(args: argparse.Namespace) -> int:
  if args.source == "ours":
    params, config, _ = model_files.load_model(args.input)
    model_files.save_hf(args.output, params, config)
    print(f"wrote Hugging Face layout to {args.output}")
    return 0
  if args.source == "hf":
    params, config = model_files.load_hf(args.input)
  else:
    params, config = fairseq_import.import_fairseq(args.input, args.num_attention_heads)
  count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  model_files.save_model(args.output, params, config, metadata={"converted_from": args.source,
                                                                 "source_path": args.input})
  print(f"wrote {count:,} parameters ({config.num_hidden_layers} layers, hidden {config.hidden_size}) "
        f"to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
