"""Audio hours built per CPU-hour: single-process builds against Beam's DirectRunner (2 workers).

Two corpora, each at two sizes: synthetic_speech (4 languages: espeak synthesis + resampling,
one work item per (language, split)) and audio_manifest over generated 44.1 kHz FLAC files of
8-12 s (decode + resample to 16 kHz + zlib encode, one work item per file). Each build runs in its
own child process; its CPU time is the child's user + system time including the children it waited
for (the Beam worker processes), from wait4's rusage. Single and Beam builds alternate, so a burst
of load from elsewhere on the shared machine hits both.

A Beam pipeline has a fixed cost (worker processes importing TensorFlow, per-stage bookkeeping)
that a small build is dominated by; the two sizes separate it: the marginal rate
(extra audio hours / extra CPU-hours between the sizes) is what a large build runs at, and the
fixed CPU-seconds per pipeline is what each build pays once.

  PYTHONPATH=$PWD python benchmarks/beam_build.py [--repeats 1]

Writes benchmarks/results/beam_build_cpu.json: per corpus, size and mode the audio hours, wall and
CPU seconds and audio hours per CPU-hour; per corpus and mode the marginal rate and fixed cost;
and the extrapolation to XLS-R's 436K hours. Needs requirements-beam.txt.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEAM = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
XLSR_HOURS = 436_000


SIZES = {"synthetic_speech": (1.25, 5.0),  # head_minutes per language (4 languages, no Zipf tail)
         "audio_manifest": (120, 480)}  # FLAC files of 8-12 s


def _one(corpus: str, mode: str, size: str, manual_dir: str, data_dir: str) -> None:
  """Child process: one build; prints a JSON line with the audio hours built."""
  import tensorflow_datasets as tfds
  from data_pipelines import build_outputs
  options = build_outputs.beam_pipeline_options(BEAM if mode == "beam" else "")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None, beam_options=options,
                                        compute_stats=tfds.download.ComputeStatsMode.SKIP)
  if corpus == "synthetic_speech":
    from data_pipelines.synthetic_speech import SyntheticSpeech, SyntheticSpeechConfig
    builder = SyntheticSpeech(config=SyntheticSpeechConfig(
        name="bench", languages=("en", "de", "fr", "es"), head_minutes=float(size), zipf_exponent=0.0,
        speakers_per_language=2, min_utterances_per_speaker=1), data_dir=data_dir)
  else:
    from data_pipelines.corpora import AudioManifest
    builder = AudioManifest(config="all", data_dir=data_dir)
  builder.download_and_prepare(download_config=config)
  hours = sum(builder.info.metadata["hours"].values())
  examples = sum(s.num_examples for s in builder.info.splits.values())
  print("@@result " + json.dumps({"hours": hours, "examples": examples}))


def _make_manifest(root: Path, files: int) -> None:
  """`files` FLAC files of 8-12 s at 44.1 kHz, two languages, listed in manifest.tsv (the first n
  rows of a larger manifest are the smaller corpus: same files)."""
  sys.path.insert(0, str(ROOT))
  from tests.fixtures.make_corpus_fixtures import write_audio
  lines = ["path\tlanguage\tsplit"]
  for i in range(files):
    name = f"clips/{i:05d}.flac"
    write_audio(root / name, 8.0 + (i % 5), 44100, seed=i % 17)
    lines.append(f"{name}\t{('en', 'de')[i % 2]}\t{('train', 'train', 'train', 'test')[i % 4]}")
  (root / "manifest.tsv").write_text("\n".join(lines) + "\n")


def _measure(corpus: str, mode: str, size, manual_dir: str, work: Path) -> dict:
  data_dir = work / f"data_{corpus}_{mode}"
  shutil.rmtree(data_dir, ignore_errors=True)
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, __file__, "--one", corpus, mode, str(size), manual_dir,
                           str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, env=env, cwd=ROOT)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  if status != 0:
    raise RuntimeError(f"{corpus} {mode} build failed (status {status})")
  result = json.loads(next(l for l in out.splitlines() if l.startswith("@@result "))[9:])
  cpu = usage.ru_utime + usage.ru_stime  # the child and the children it waited for
  shutil.rmtree(data_dir, ignore_errors=True)
  return dict(result, wall_s=wall, cpu_s=cpu, load_avg_after=os.getloadavg())


def _fit(small: dict, large: dict) -> dict:
  """Marginal audio hours per CPU-hour between two sizes, and the fixed CPU-seconds per build."""
  rate = (large["hours"] - small["hours"]) / ((large["cpu_s"] - small["cpu_s"]) / 3600)
  return {"marginal_audio_hours_per_cpu_hour": rate,
          "fixed_cpu_s_per_build": small["cpu_s"] - small["hours"] / rate * 3600}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    _one(*args.one)
    return
  work = Path(tempfile.mkdtemp(prefix="beam_bench_"))
  load_before = os.getloadavg()
  others = subprocess.run(["ps", "-eo", "pcpu,etime,comm", "--sort=-pcpu"], capture_output=True,
                          text=True).stdout.splitlines()[:10]
  runs: dict[str, dict[str, dict[str, list[dict]]]] = {}  # corpus -> size -> mode -> runs
  for corpus, sizes in SIZES.items():
    for size in sizes:
      manual = ""
      if corpus == "audio_manifest":
        manual = str(work / f"manifest_{size}")
        _make_manifest(Path(manual), size)
      for _ in range(args.repeats):
        for mode in ("single", "beam"):
          r = _measure(corpus, mode, size, manual, work)
          print(corpus, size, mode, r, flush=True)
          runs.setdefault(corpus, {}).setdefault(str(size), {}).setdefault(mode, []).append(r)
  shutil.rmtree(work, ignore_errors=True)
  best = lambda rs: min(rs, key=lambda r: r["cpu_s"])
  results, fits = {}, {}
  for corpus, by_size in runs.items():
    results[corpus] = {size: {mode: {
        "audio_hours": best(rs)["hours"], "examples": best(rs)["examples"],
        "cpu_s": [round(r["cpu_s"], 1) for r in rs], "wall_s": [round(r["wall_s"], 1) for r in rs],
        "audio_hours_per_cpu_hour": best(rs)["hours"] / (best(rs)["cpu_s"] / 3600)}
        for mode, rs in modes.items()} for size, modes in by_size.items()}
    small, large = (str(x) for x in SIZES[corpus])
    fits[corpus] = {mode: _fit(best(by_size[small][mode]), best(by_size[large][mode]))
                    for mode in ("single", "beam")}
  # 436K hours at the Beam marginal rate; the fixed cost is paid once per pipeline (one per
  # language of each corpus: a few hundred pipelines, minutes each, negligible next to the rest).
  extrapolation = {}
  for corpus, fit in fits.items():
    rate = fit["beam"]["marginal_audio_hours_per_cpu_hour"]
    cpu_hours = XLSR_HOURS / rate
    extrapolation[corpus] = {
        "cpu_hours": cpu_hours,
        "wall_hours_100_workers_x16_vcpus": cpu_hours / 1600,
        "wall_hours_200_workers_x16_vcpus": cpu_hours / 3200,
        "workers_x16_vcpus_for_24_wall_hours": cpu_hours / 24 / 16,
    }
  out = {
      "command": "PYTHONPATH=$PWD python benchmarks/beam_build.py " + " ".join(sys.argv[1:]),
      "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
                 f", Python {platform.python_version()}",
      "what_else_was_running": {
          "note": "shared 2-core machine: the lead and 3 other helpers ran tests and builds at the "
                  "same time (load average about 10 on 2 cores); CPU seconds are this build's own "
                  "(rusage), wall seconds include waiting for the CPU, so only CPU figures are "
                  "compared",
          "load_avg_before": load_before, "top_processes_before": others},
      "beam_pipeline_options": BEAM,
      "configs": {"synthetic_speech": "4 languages (en de fr es), head_minutes per language as "
                                      "the size, 4 speakers, no Zipf tail",
                  "audio_manifest": "size = number of 44.1 kHz mono FLAC files of 8-12 s"},
      "results": results,
      "fit": fits,
      "extrapolation_436k_hours": extrapolation,
      "caveats": "FLAC and espeak here; real corpora are MP3 (Common Voice, CoVoST), OGG/Vorbis "
                 "and Opus (VoxPopuli, VoxLingua107), FLAC (MLS), SPHERE (BABEL): decode costs "
                 "differ per format. A remote runner adds reading from and writing to object "
                 "storage and its own shuffle (the TFDS writer's GroupByKey moves every example "
                 "once).",
      "raw": runs,
  }
  path = ROOT / "benchmarks" / "results" / "beam_build_cpu.json"
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps({k: out[k] for k in ("results", "fit", "extrapolation_436k_hours")}, indent=1))


if __name__ == "__main__":
  main()
