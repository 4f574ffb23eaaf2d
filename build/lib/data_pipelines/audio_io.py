"""Decoding and resampling of audio files into 16 kHz mono int16, with errors that name the file.

Decoding uses soundfile (WAV, FLAC, MP3, OGG/Opus, SPHERE via libsndfile); resampling calls
soxr (high quality) directly, with librosa's output length, which gives librosa.resample's
"soxr_hq" result without importing scipy.signal (seconds per process). tensorflow-io is not
used: it does not work with TF 2.21.
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import soundfile as sf
import soxr

from data_pipelines.features import SAMPLE_RATE


class AudioDecodeError(ValueError):
  """A file could not be turned into usable audio; the message names the file and the reason."""


def resample(wave: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Resample a float waveform `[samples]` from `sample_rate` to `target_rate` (soxr high quality)."""
  if sample_rate == target_rate:
    return wave.astype(np.float32, copy=False)
  out = soxr.resample(wave.astype(np.float32), sample_rate, target_rate, quality="soxr_hq")
  length = int(np.ceil(wave.shape[0] * target_rate / sample_rate))  # librosa.resample's length
  return np.pad(out, (0, max(0, length - out.shape[0])))[:length].astype(np.float32, copy=False)


def float_to_int16(wave: np.ndarray) -> np.ndarray:
  """Float waveform in [-1, 1] `[samples]` -> int16 `[samples]`, clipping out-of-range values."""
  return np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)


def _read(source, label: str, start_s: float, end_s: float | None) -> tuple[np.ndarray, int]:
  """Float32 `[frames, channels]` of `source` between `start_s` and `end_s` (None: to the end)."""
  with sf.SoundFile(source) as f:
    rate = f.samplerate
    if start_s == 0.0 and end_s is None:
      return f.read(dtype="float32", always_2d=True), rate
    start = int(round(start_s * rate))
    if f.frames > 0 and start >= f.frames:
      raise AudioDecodeError(
          f"{label}: segment starts at {start_s:.3f} s, after the end of the audio "
          f"({f.frames / rate:.3f} s)")
    frames = -1 if end_s is None else max(int(round(end_s * rate)) - start, 0)
    f.seek(start)
    return f.read(frames, dtype="float32", always_2d=True), rate


def decode_audio(path_or_bytes: str | os.PathLike | bytes, *, name: str | None = None,
                 target_rate: int = SAMPLE_RATE, min_samples: int = 1,
                 start_s: float = 0.0, end_s: float | None = None,
                 min_source_rate: int = 1) -> np.ndarray:
  """Decode a file (or its bytes) to mono int16 at `target_rate`: `[samples]`.

  `start_s` / `end_s` cut one segment out of a longer recording (seconds, end None: to the end).
  Raises AudioDecodeError naming the file when it cannot be decoded, is empty, is stored at a
  sample rate below `min_source_rate`, or has fewer than `min_samples` samples after resampling.
  """
  label = name or (str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else "<bytes>")
  source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
  try:
    wave, sample_rate = _read(source, label, start_s, end_s)
  except AudioDecodeError:
    raise
  except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
    raise AudioDecodeError(f"{label}: cannot decode audio ({type(e).__name__}: {e})") from e
  if sample_rate < min_source_rate:
    raise AudioDecodeError(
        f"{label}: sample rate {sample_rate} Hz is below the minimum {min_source_rate} Hz")
  if wave.size == 0:
    raise AudioDecodeError(f"{label}: audio is empty (0 samples)")
  mono = wave.mean(axis=1)
  if not np.all(np.isfinite(mono)):
    raise AudioDecodeError(f"{label}: audio contains NaN or Inf samples")
  mono = resample(mono, sample_rate, target_rate)
  if mono.shape[0] < min_samples:
    raise AudioDecodeError(
        f"{label}: {mono.shape[0]} samples at {target_rate} Hz, shorter than the minimum {min_samples}")
  return float_to_int16(mono)


@dataclasses.dataclass
class BuildReport:
  """Counts what a build kept and skipped, with one line per skipped file (path and reason).

  `seconds` holds the kept audio per split name ("train_en": 3600.0), `empty_splits` the splits
  left out because none of their files was usable.
  """
  kept: int = 0
  skipped: list[str] = dataclasses.field(default_factory=list)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  empty_splits: list[str] = dataclasses.field(default_factory=list)

  def skip(self, message: str) -> None:
    self.skipped.append(message)

  def keep(self, split: str, seconds: float) -> None:
    """Counts one kept utterance of `seconds` in `split`."""
    self.kept += 1
    self.seconds[split] = self.seconds.get(split, 0.0) + seconds

  def hours(self) -> dict[str, float]:
    """Kept hours per split name."""
    return {split: s / 3600.0 for split, s in sorted(self.seconds.items())}

  def summary(self) -> str:
    lines = [f"kept {self.kept} utterances, skipped {len(self.skipped)}"]
    lines += [f"  empty split left out: {s}" for s in self.empty_splits]
    lines += [f"  skipped: {m}" for m in self.skipped]
    return "\n".join(lines)

  def to_dict(self) -> dict:
    """A JSON-ready dict: counts, kept hours per split, and every skipped line."""
    return {"kept": self.kept, "skipped_count": len(self.skipped), "hours": self.hours(),
            "empty_splits": list(self.empty_splits), "skipped": list(self.skipped)}
