"""Convert model parameters between xlsr_jax, Hugging Face wav2vec2, fairseq and fairseq2 (.pt import).

  python -m xlsr_jax.convert --from=hf --input=HF_DIR --output=OUR_DIR
  python -m xlsr_jax.convert --from=fairseq --input=xlsr2_300m.pt --output=OUR_DIR
  python -m xlsr_jax.convert --from=fairseq2 --input=omniASR-W2V-7B.pt --output=OUR_DIR
  python -m xlsr_jax.convert --from=ours --input=OUR_DIR --output=HF_DIR   (writes the HF layout)
  python -m xlsr_jax.convert --from=mbart --input=MBART_DIR --output=DECODER_DIR
OUR_DIR holds Orbax params + model_config.json (as written by xlsr_jax.export).

Speech translation: `--from=hf` on a transformers SpeechEncoderDecoderModel directory (e.g.
facebook/wav2vec2-xls-r-300m-21-to-en) writes our translation model (+ its sentencepiece model and
an `hf/` copy); `--from=ours` on one writes the HF layout. `--from=mbart` reads an mBART(-50)
directory (MBartForConditionalGeneration or MBartForCausalLM, config.json + weights, with its
sentencepiece.bpe.model) and writes the decoder alone, for
`--config.translation.decoder_init=DECODER_DIR` of experiments/downstream/ast.py.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from xlsr_jax.checkpoints import fairseq2_import, fairseq_import, model_files, safe_pickle
from xlsr_jax.checkpoints.hf_translation import is_speech_to_text as _is_speech_to_text


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source", required=True, choices=["hf", "fairseq", "fairseq2", "ours", "mbart"])
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--num_attention_heads", type=int, default=None,
                      help="fairseq / fairseq2 only, when the checkpoint does not give it (fairseq "
                           "settings missing; a fairseq2 checkpoint of no Omnilingual size)")
  args = parser.parse_args(argv)
  try:
    return convert(args)
  except (ValueError, TypeError, FileNotFoundError, safe_pickle.UnsafeCheckpointError) as e:
    # ConversionError and CheckpointFileError are ValueErrors: every message names the file or key
    print(f"convert error: {e}", file=sys.stderr)
    return 1


def convert(args: argparse.Namespace) -> int:
  from xlsr_jax.checkpoints import translation_files
  if args.source == "mbart":
    return _import_mbart(args.input, args.output)
  if args.source == "hf" and _is_speech_to_text(args.input):
    params, config = translation_files.load_hf(args.input)
    tokenizer = _tokenizer_beside(args.input)
    translation_files.save_model(args.output, params, config, tokenizer,
                                 {"converted_from": "hf", "source_path": args.input})
    print(f"wrote a speech-translation model ({_count(params):,} parameters; encoder "
          f"{config.encoder.num_hidden_layers} x {config.encoder.hidden_size}, decoder "
          f"{config.decoder.decoder_layers} x {config.decoder.d_model}) to {args.output}"
          + ("" if tokenizer else " (no sentencepiece.bpe.model found beside it)"))
    return 0
  if args.source == "ours" and translation_files.is_translation_export(args.input):
    params, config, tokenizer, _ = translation_files.load_model(args.input)
    translation_files.save_hf(args.output, params, config, tokenizer)
    print(f"wrote the Hugging Face SpeechEncoderDecoderModel layout to {args.output}")
    return 0
  if args.source == "ours":
    params, config, _ = model_files.load_model(args.input)
    model_files.save_hf(args.output, params, config)
    print(f"wrote Hugging Face layout to {args.output}")
    return 0
  if args.source == "hf":
    params, config = model_files.load_hf(args.input)
  elif args.source == "fairseq2":
    params, config = fairseq2_import.import_fairseq2(args.input, args.num_attention_heads)
  else:
    params, config = fairseq_import.import_fairseq(args.input, args.num_attention_heads)
  count = _count(params)
  model_files.save_model(args.output, params, config, metadata={"converted_from": args.source,
                                                                 "source_path": args.input})
  print(f"wrote {count:,} parameters ({config.num_hidden_layers} layers, hidden {config.hidden_size}) "
        f"to {args.output}")
  return 0


def _count(params) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def _tokenizer_beside(path: str):
  import os
  from xlsr_jax.downstream.translation.text import SPM_FILE, Tokenizer
  file = os.path.join(path, SPM_FILE)
  return Tokenizer.load(file) if os.path.exists(file) else None


def _import_mbart(source: str, output: str) -> int:
  import os
  from xlsr_jax.checkpoints import hf_translation, translation_files
  config_path = os.path.join(source, "config.json")
  if not os.path.isfile(config_path):
    print(f"error: {source} has no config.json: not a Hugging Face mBART directory", file=sys.stderr)
    return 2
  hf = model_files.read_json(config_path)
  if hf.get("model_type") != "mbart":
    print(f"error: {config_path} has model_type={hf.get('model_type')!r}, expected 'mbart'",
          file=sys.stderr)
    return 2
  config = hf_translation.decoder_config_from_hf(hf)
  params = hf_translation.mbart_decoder_to_ours(model_files.read_hf_state_dict(source), config)
  tokenizer = _tokenizer_beside(source)
  translation_files.save_decoder(output, params, config, tokenizer,
                                 {"converted_from": "mbart", "source_path": source})
  print(f"wrote an mBART decoder ({_count(params):,} parameters, {config.decoder_layers} x "
        f"{config.d_model}, vocabulary {config.vocab_size}) to {output}"
        + ("" if tokenizer else " (no sentencepiece.bpe.model found beside it)"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
