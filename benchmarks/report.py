"""The tables in README.md and docs/, generated from the results files under benchmarks/results/.

  python -m benchmarks.report            # rewrite every generated table in place
  python -m benchmarks.report --check    # exit 1 naming each table that differs (what the test runs)
  python -m benchmarks.report --list     # each table name, the results files it reads

A generated table sits between `<!-- report:NAME -->` and `<!-- /report -->` in a Markdown file;
everything between the markers is replaced by TABLES[NAME]() followed by a source line naming the
results file, its command, commit, date, machine and what else was running
(`benchmarks.provenance.meta_for`). `md:FILE#N` copies the N-th table of a Markdown results file
verbatim; `text:FILE` shows a text results file in a code block. Edit the results file (by re-running its command), never the table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Callable

from benchmarks.provenance import RESULTS_DIR, meta_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ("README.md", "docs/*.md")
_BLOCK = re.compile(r"(<!-- report:(?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)


class Missing(Exception):
  """A table's results file is absent (an optional run not done yet)."""


def _read(name: str) -> str:
  path = os.path.join(RESULTS_DIR, name)
  if not os.path.exists(path):
    raise Missing(name)
  with open(path) as f:
    return f.read()


def _json(name: str):
  return json.loads(_read(name))


def _concurrent(m: dict) -> str:
  conc = m.get("concurrent")
  if isinstance(conc, dict):
    conc = f"load avg {conc.get('load_avg')}" + (
        "; busiest other processes: " + ", ".join(conc["busy_processes"])
        if conc.get("busy_processes") else "")
  return str(conc)


def _source_line(*names: str) -> str:
  """'Source: ...' naming each results file, its command, commit, date, machine and concurrent load."""
  metas = {name: meta_for(name) for name in names}
  missing = [n for n, m in metas.items() if m is None]
  if missing:
    raise SystemExit("no provenance record (meta in the file, or benchmarks/results/SOURCES.json) "
                     "for: " + ", ".join(missing))
  shared = {(m["machine"], _concurrent(m)) for m in metas.values()}
  lines = []
  for name, m in metas.items():
    text = (f"`benchmarks/results/{name}`: `{m['command']}`, commit {m['commit']}"
            f"{' + uncommitted changes' if m.get('dirty') else ''}, {m['date']}")
    if len(shared) > 1:
      text += f"; {m['machine']}; running beside it: {_concurrent(m)}"
    if m.get("notes"):
      text += f". Note: {m['notes'].rstrip('.')}"
    lines.append(text + ".")
  tail = ""
  if len(shared) == 1:
    machine, conc = next(iter(shared))
    tail = f"Machine: {machine}; running beside it: {conc}."
  if len(lines) == 1:
    return f"Source: {lines[0]} {tail}".rstrip()
  return "Sources:\n\n" + "\n".join(f"* {l}" for l in lines) + (f"\n\n{tail}" if tail else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _with_source(table: str, *names: str) -> str:
  return table + "\n\n" + _source_line(*names)


def md_table(spec: str) -> str:
  """`FILE#N`: the N-th (1-based) Markdown table of results file FILE, verbatim."""
  name, _, index = spec.partition("#")
  tables, current = [], []
  for line in _read(name).splitlines() + [""]:
    if line.startswith("|"):
      current.append(line)
    elif current:
      tables.append("\n".join(current))
      current = []
  n = int(index or 1)
  if n > len(tables):
    raise SystemExit(f"benchmarks/results/{name} has {len(tables)} tables, not {n}")
  return _with_source(tables[n - 1], name)


def text_output(name: str) -> str:
  """A text results file (a benchmark's printout) verbatim in a code block, with its source."""
  return _with_source("```text\n" + _read(name).rstrip() + "\n```", name)


def _md_cells(name: str, table: int, row_prefix: str) -> list[str]:
  text = md_table(f"{name}#{table}").split("\n\n")[0]
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0].startswith(row_prefix):
      return cells
  raise SystemExit(f"no row starting {row_prefix!r} in table {table} of {name}")


# --- CPU benchmarks -------------------------------------------------------------------------------

def _train_step_rows() -> dict[str, dict]:
  out, preset = {}, None
  for line in _read("train_step_cpu.txt").splitlines():
    m = re.match(r"== (\w+): ", line)
    if m:
      preset = m.group(1)
      out[preset] = {}
      continue
    if preset is None:
      continue
    f = line.split()
    if f and f[0] in ("ours", "ref") and len(f) >= 12:
      out[preset][f[0]] = dict(ms=float(f[1]), iqr=f[2], audio=f[4], gflops=f[5], peak=f[6],
                               rss=float(f[7]) / 1024)
    elif line.startswith("ratio ref/ours"):
      out[preset]["ratio"] = re.findall(r"([\d.]+)x \((\w+)\)", line)
    elif line.startswith("model FLOPs/step"):
      out[preset]["analytic"] = re.search(r": ([\d.]+) G", line).group(1)
    elif line.startswith("XLA cost_analysis of our step"):
      out[preset]["xla"] = re.search(r"step: ([\d.]+) G", line).group(1)
  return out


def _ms(x: float) -> str:
  return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def _iqr(s: str) -> str:
  a, b = (float(v) for v in s.split("-"))
  return f"{_ms(a)}-{_ms(b)}"


def train_step() -> str:
  rows = []
  for preset, r in _train_step_rows().items():
    o, f = r["ours"], r["ref"]
    ratios = dict((k, v) for v, k in r["ratio"])
    rows.append([preset, f"{_ms(o['ms'])} ({_iqr(o['iqr'])})", f"{_ms(f['ms'])} ({_iqr(f['iqr'])})",
                 f"**{ratios['median']}x** (min {ratios['min']}x)", f"{o['audio']} / {f['audio']}",
                 f"{float(r['analytic']):,.2f} / {float(r['xla']):,.2f}",
                 f"{o['gflops']} / {f['gflops']} ({o['peak']} / {f['peak']})",
                 f"{o['rss']:.1f} / {f['rss']:.1f} GiB"])
  return _with_source(_table(
      ["preset", "ours ms/step (IQR)", "reference ms/step (IQR)", "ref / ours (median)",
       "audio s/s ours / ref", "model GFLOP/step: analytic / XLA",
       "achieved GFLOP/s ours / ref (% of matmul peak)", "peak RSS ours / ref"], rows),
      "train_step_cpu.txt")


def compile_time() -> str:
  line = [l for l in _read("compile_time_cpu.txt").splitlines() if l.startswith("[")][-1]
  rows = []
  for r in json.loads(line):
    name = r["name"].replace("@48", ", 48 layers")
    lower = r["build_s"] + r["lower_s"]
    rows.append([name, str(r["layers"]), f"{r['dtype']}, {r['remat']}", f"{lower:.1f} s",
                 f"{r['compile_s']:.1f} s", f"{lower + r['compile_s']:.1f} s"])
  return _with_source(_table(["preset", "layers", "dtype, remat", "trace + lower", "compile",
                              "total"], rows), "compile_time_cpu.txt")


def batching() -> str:
  rows, started = [], False
  for line in _read("batching_base.txt").splitlines():
    if line.startswith("profile "):
      started = True
      continue
    if started and not line.strip():
      break
    if started:
      p, mode, pad, used, masked, lowest, rate, x = line.split()
      name = p if p.startswith("synthetic") else f"{p} (assumed profile)"
      rows.append([name, mode, pad, used, f"{masked} / {lowest}", rate, x])
  return _with_source(_table(
      ["length profile", "batching", "padding", "audio used", "masked share (mean / lowest row)",
       "model: real audio s per CPU s", "model: x old"], rows), "batching_base.txt")


def batching_e2e() -> str:
  """Measured end-to-end rates (the real loop on corpora built from the length profiles) beside
  benchmarks.batching's model for the same corpora, preset and settings."""
  data = _json("batching_e2e_cpu.json")
  rows = []
  for name, p in data["profiles"].items():
    c = p["corpus"]
    corpus = f"{c['utterances']} utts, {c['hours']:.2f} h, median {c['median_seconds']:.1f} s"
    for mode in ("old", "crop"):
      m, model = p["measured"][mode], p["model"][mode]
      ratio = ([f"{p['measured_ratio']:.2f}", f"{p['model_ratio']:.2f}",
                f"{p['measured_ratio'] / p['model_ratio']:.2f}"] if mode == "crop"
               else ["1.00", "1.00", ""])
      rows.append([f"{name} (assumed profile)", corpus, mode, str(m["steps"]),
                   f"{m['padding']:.3f} / {model['padding']:.3f}", f"{m['rate']:.2f}",
                   f"{model['rate']:.2f}", *ratio])
  s = data["settings"]
  head = (f"Preset {s['preset']}, {s['batch_seconds']:g} s of audio per step, old: "
          f"{s['crop_seconds']:g} s crops with trimmed masks; crop: buckets "
          f"{', '.join(f'{b:g}' for b in s['bucket_seconds'])} s; min {s['min_seconds']:g} s; one "
          f"CPU device.\n\n")
  return _with_source(head + _table(
      ["length profile", "built corpus", "batching", "steps timed", "padding (measured / model)",
       "measured: real audio s per CPU s", "model: real audio s per CPU s", "measured: x old",
       "model: x old", "measured / model"], rows), "batching_e2e_cpu.json")


def scaling() -> str:
  from benchmarks.common import fit_fixed_plus_flops
  data = _json("scaling.json")
  by_preset: dict[str, list[dict]] = {}
  for r in data["cpu"]:
    by_preset.setdefault(r["preset"], []).append(r)
  rows = []
  for preset, rs in by_preset.items():
    rs = sorted(rs, key=lambda r: r["seconds"])
    t = {r["seconds"]: r["step_s"] for r in rs}
    fl = {r["seconds"]: r["flops"] for r in rs}
    fixed, rate = fit_fixed_plus_flops(rs)
    cells = [f"{1e3 * t[s]:.0f} ms" if t[s] < 1 else f"{t[s]:.3g} s" for s in sorted(t)]
    rows.append([preset, *cells, f"{t[max(t)] / t[min(t)]:.1f}x", f"{fl[max(fl)] / fl[min(fl)]:.1f}x",
                 f"{fixed:.3f} s + FLOPs / {rate / 1e9:.2g} GFLOP/s"])
  secs = sorted({r["seconds"] for r in data["cpu"]})
  cpu = _table(["preset", *[f"{s:g} s" for s in secs], "time longest / shortest",
                "analytic FLOPs longest / shortest", "fit: step = fixed + FLOPs / rate"], rows)
  tpu_rows = [[f"{r['batch_per_chip']:g}", f"{r['total_bytes'] / 2**30:.2f}",
               f"{r['argument_bytes'] / 2**30:.2f}", f"{r['temp_bytes'] / 2**30:.2f}",
               f"{r['compile_seconds']:.0f} s"] for r in data.get("tpu", [])]
  tpu = _table(["20 s crops per chip", "memory / chip (GiB)", "arguments (GiB)",
                "temporaries (GiB)", "AOT compile"], tpu_rows)
  return _with_source(cpu + "\n\nTPU part (xlsr_300m on v5e-8, memory-only AOT compiles):\n\n" + tpu,
                      "scaling.json")


def decoding() -> str:
  d = _json("decoding_cpu.json")
  rows = []
  for r in d["rows"]:
    full = (f"{r['recompute_full']['utterances_per_s']:.1f} utt/s ({r['speedup_vs_full']:.2f}x)"
            if "recompute_full" in r else "-")
    rows.append([r["search"], f"{r['cache']['utterances_per_s']:.1f} utt/s",
                 f"{r['recompute_prefix']['utterances_per_s']:.1f} utt/s",
                 f"**{r['speedup']:.2f}x**", full,
                 f"{r['mean_tokens']:.1f} (max {r['max_length']})",
                 "yes" if r["same_tokens"] else "**no**"])
  s = d["setup"]
  head = (f"{s['decoder']}, batch {s['batch']}, end token live, weights: {s['weights']}.\n\n")
  return head + _with_source(_table(
      ["search", "with the cache", "recomputing the prefix so far", "cache speed-up",
       "for reference: recomputing all max_length positions (cache speed-up)",
       "tokens per utterance (mean)", "same tokens"], rows), "decoding_cpu.json")


def demo() -> str:
  d = _json("demo_cpu.json")
  rows = [[k, str(v)] for k, v in d["figures"].items()]
  return _with_source(_table(["figure", "value"], rows), "demo_cpu.json")


def storage() -> str:
  r = _json("corpus_storage.json")["storage"]
  return _with_source(_table(
      ["corpus", "on disk", "audio", "bytes per sample (int16 uncompressed: 2)"],
      [[r["corpus"], f"{r['bytes'] / 2**20:.0f} MiB", f"{r['hours']:.3f} h",
        f"{r['bytes_per_sample']:.2f}"]]), "corpus_storage.json")


TEST_BUDGET_MINUTES = {"fast": 8, "full": 15}  # the project's test-time budget on this machine


def test_tiers() -> str:
  d = _json("test_tiers.json")
  rows = [[t["tier"], t["command"], t["summary"], f"{t['seconds'] / 60:.1f} min",
           f"{TEST_BUDGET_MINUTES[t['tier']]} min" + ("" if t["seconds"] <= 60 * TEST_BUDGET_MINUTES[
               t["tier"]] else " (**over**)")] for t in d["tiers"]]
  table = _table(["tier", "command", "pytest summary", "wall time (with installs)", "budget"], rows)
  slow = [f"* {t['tier']}: " + "; ".join(f"`{line.split()[-1]}` {line.split()[0]} ({line.split()[1]})"
                                          for line in t["slowest"][:6])
          for t in d["tiers"] if t.get("slowest")]
  if slow:
    table += "\n\nSlowest tests (pytest --durations):\n\n" + "\n".join(slow)
  return _with_source(table, "test_tiers.json")


# --- TPU plans ------------------------------------------------------------------------------------

PLAN_FILES = ("plan_xlsr_2b_v5p-64.json", "plan_xlsr_300m_v5e-8.json", "plan_xlsr_300m_v5p-16.json",
              "plan_xlsr_300m_v5p-64_memory.json", "plan_xlsr_1b_v5p-64_memory.json",
              "plan_xlsr_1b_v5p-128_memory.json", "plan_xlsr_2b_v5p-128_memory.json",
              "plan_omni_7b_v5p-64.json")


def _plan_row(p: dict) -> list[str]:
  """One plan JSON as a row of the plan table (PLAN_COLUMNS)."""
  mesh = p["mesh"]
  per_chip = p["global_batch"] // (mesh["data"] * mesh["fsdp"]) // p["grad_accum_steps"]
  mem = p["memory"]
  fits = "fits" if mem["fits"] else "**does not fit**"
  memory = f"{mem['total_bytes'] / 2**30:.1f} GiB ({p['hbm_bytes'] / 2**30:.0f} GiB): {fits}"
  analytic = f"{p['analytic_flops']['total'] / 1e12:,.0f}"
  if "cost_memory" not in p:
    flops, step, mfu = f"not compiled (`--skip_cost`) ({analytic})", "-", "-"
    compile_s = f"{p['compile_seconds']:.0f} s"
  else:
    flops = f"{p['xla_flops'] / 1e12:,.0f} ({analytic})"
    compile_s = (f"{p['compile_seconds']:.0f} s + {p['cost_compile_seconds']:.0f} s cost + "
                 f"{p['layer_compile_seconds']:.0f} s layer")
    if p.get("optimal_seconds") is None:
      step = (f"none: libtpu's `optimal_seconds` is {p['xla_raw']['optimal_seconds']:.0f} s")
      mfu = "-"
    else:
      step = f"{p['optimal_seconds']:.3f} s"
      mfu = f"{100 * p['estimated_mfu']:.1f}%"
      if p.get("estimated_useful_mfu") is not None:
        mfu += f" (useful {100 * p['estimated_useful_mfu']:.1f}%, {p['length_profile']})"
  objective = p.get("objective", "wav2vec2")
  if objective == "best_rq" and p.get("frontend") == "fbank":
    objective = "best_rq_fbank"
  preset = p["model"] + ("" if objective == "wav2vec2" else f", {TRANSFER_NAMES[objective]}")
  return [preset, f"{p['topology']} ({p['chips']} chips)",
          f"{mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}", p["remat_policy"],
          f"{per_chip} x {p['grad_accum_steps']}",
          f"{p['global_batch']} x {p['num_samples'] / 16000:g} s", memory, flops, step, mfu,
          compile_s]


PLAN_COLUMNS = ["preset", "topology", "mesh (data, fsdp, tensor)", "remat",
                "crops/chip per micro-step x accum", "global batch", "memory / chip (HBM)",
                "XLA TFLOP/step (analytic)", "step estimate (compiler model)", "est. MFU (model)",
                "AOT compile"]


def plan() -> str:
  return _with_source(_table(PLAN_COLUMNS, [_plan_row(_json(n)) for n in PLAN_FILES]), *PLAN_FILES)


OBJECTIVE_PLANS = ("plan_xlsr_300m_v5p-16.json", "plan_xlsr_300m_best_rq_v5p-16.json")


def plan_objectives() -> str:
  """The 0.3B model's v5p-16 plan under each objective (same batch, accumulation and mesh)."""
  return _with_source(_table(PLAN_COLUMNS, [_plan_row(_json(n)) for n in OBJECTIVE_PLANS]),
                      *OBJECTIVE_PLANS)


BUCKET_PLANS = ("plan_xlsr_2b_v5p-64_buckets.json", "plan_xlsr_300m_v5p-64_buckets.json")


def plan_buckets() -> str:
  rows = []
  for name in BUCKET_PLANS:
    p = _json(name)
    bs = p["buckets"]
    largest = max(b["seconds"] for b in bs)
    per = " / ".join(f"{b['optimal_seconds']:.3f}" + ("" if b["seconds"] == largest else "*")
                     for b in bs)
    share = " / ".join(f"{100 * b['step_probability']:.1f}%" for b in bs)
    secs = " / ".join(f"{b['seconds']:g}" for b in bs)
    ref = p["reference"]
    rows.append([p["model"], p["topology"], f"{p['step_seconds']:.3f} s",
                 f"{secs} s: {per} s", share, f"{100 * p['estimated_mfu']:.1f}%",
                 f"{100 * ref['estimated_mfu']:.1f}%",
                 f"{p['largest_memory']['total_bytes'] / 2**30:.1f} GiB of "
                 f"{p['largest_memory']['hbm_bytes'] / 2**30:.0f}"])
  return _with_source(_table(
      ["preset", "topology", "step estimate, bucket mix (model)",
       "per bucket (* = estimated from one-layer compiles)", "share of steps per bucket",
       "est. MFU = useful (model)", "fixed 20 s crops: est. MFU (compiled)",
       "memory (largest bucket, compiled)"], rows), *BUCKET_PLANS)


# --- BEST-RQ ----------------------------------------------------------------------------------------

TRANSFER_NAMES = {"wav2vec2": "wav2vec 2.0", "best_rq": "BEST-RQ (CNN)",
                  "best_rq_fbank": "BEST-RQ (filterbank)"}


def transfer() -> str:
  """The transfer benchmark's table (benchmarks/transfer.py): accuracy per probe, per seed."""
  from benchmarks import transfer as transfer_lib
  return _with_source(transfer_lib.table(_json("transfer_cpu.json")), "transfer_cpu.json")


def transfer_means() -> dict[str, float]:
  """Held-out-language LID accuracy (%) averaged over seeds, per pretrained encoder."""
  rows = [r for r in _json("transfer_cpu.json")["rows"] if "seed" in r]
  return {e: 100 * sum(r["probes"]["lid_heldout"]["accuracy"] for r in rows if r["encoder"] == e)
          / sum(r["encoder"] == e for r in rows) for e in dict.fromkeys(r["encoder"] for r in rows)}


# --- the README's headline table ------------------------------------------------------------------

def headline() -> str:
  ts = _train_step_rows()["base"]
  ratio = dict((k, v) for v, k in ts["ratio"])["median"]
  lid = _md_cells("downstream_proof_bucketed.md", 1, "LID")
  sid = _md_cells("downstream_proof_bucketed.md", 1, "SID")
  ast = {c[0]: c for c in (_md_cells("ast_proof_cpu.md", 1, "demo-pretrained"),
                           _md_cells("ast_proof_cpu.md", 1, "random init"))}
  p2b = _json("plan_xlsr_2b_v5p-64.json")
  ct = {r["name"]: r for r in json.loads(
      [l for l in _read("compile_time_cpu.txt").splitlines() if l.startswith("[")][-1])}
  c2b = ct["xlsr_2b"]
  first = lambda cell: cell.replace("*", "").split(" / ")[0]
  rows = [
      ["LID probe, 25 languages, accuracy (tiny encoder, CPU)",
       f"{first(lid[1])} pretrained vs {first(lid[2])} random init", "downstream_proof_bucketed.md"],
      ["SID probe, 100 voices, accuracy", f"{first(sid[1])} vs {first(sid[2])}",
       "downstream_proof_bucketed.md"],
      ["speech translation de, fr -> en, corpus BLEU (tiny, CPU)",
       f"{ast['demo-pretrained'][1].strip('*')} pretrained vs {ast['random init'][1]} random init",
       "ast_proof_cpu.md"],
      ["train step vs `transformers` + torch, base preset, CPU", f"{ratio}x faster (median)",
       "train_step_cpu.txt"],
      ["xlsr_2b train-step compile, one CPU device",
       f"{c2b['build_s'] + c2b['lower_s'] + c2b['compile_s']:.1f} s", "compile_time_cpu.txt"],
      ["xlsr_2b on v5p-64, 640 x 20 s crops (AOT compile, compiler's estimate; no TPU run)",
       f"{p2b['memory']['total_bytes'] / 2**30:.1f} GiB / chip, est. MFU {100 * p2b['estimated_mfu']:.1f}%",
       "plan_xlsr_2b_v5p-64.json"],
  ]
  try:
    means = transfer_means()
    result = _json("transfer_cpu.json")
    fbank = 100 * result["baselines"]["lid_heldout"]["fbank"]["accuracy"]
    random = {r["encoder"]: 100 * r["probes"]["lid_heldout"]["accuracy"] for r in result["rows"]
              if r["encoder"].startswith("random init")}
    rows.insert(1, ["LID on 5 languages unseen in pretraining, accuracy % (tiny encoders, equal "
                    "compute, mean of 2 seeds)",
                    ", ".join(f"{TRANSFER_NAMES.get(e, e)} {v:.1f}" for e, v in means.items())
                    + "; " + ", ".join(f"{e} {v:.1f}" for e, v in random.items())
                    + f"; FBANK probe {fbank:.1f}", "transfer_cpu.json"])
  except Missing:
    pass
  try:
    figures = _json("demo_cpu.json")["figures"]
    loss = next(k for k in figures if k.startswith("validation contrastive loss"))
    rows.insert(0, [f"the demo (tiny model, CPU): {loss}", figures[loss], "demo_cpu.json"])
  except Missing:
    pass
  return _table(["what", "figure", "results file"],
                [[a, b, f"`benchmarks/results/{c}`"] for a, b, c in rows])


TABLES: dict[str, Callable[[], str]] = {
    "headline": headline, "train_step": train_step, "compile_time": compile_time,
    "batching": batching, "batching_e2e": batching_e2e, "scaling": scaling, "decoding": decoding,
    "demo": demo, "test_tiers": test_tiers, "storage": storage, "plan": plan,
    "plan_objectives": plan_objectives, "plan_buckets": plan_buckets,
    "transfer": transfer,
}


def render(name: str) -> str:
  """The Markdown that belongs between the markers of table `name`."""
  try:
    if name.startswith("md:"):
      return md_table(name[3:])
    if name.startswith("text:"):
      return text_output(name[5:])
    if name not in TABLES:
      raise SystemExit(f"unknown report table {name!r}; known: {', '.join(sorted(TABLES))}, md:FILE#N")
    return TABLES[name]()
  except Missing as e:
    return (f"*No results file yet: `benchmarks/results/{e.args[0]}` is written by "
            f"`python -m benchmarks.regenerate` (see its listing).*")


# Figures shown in docs/ (mkdocs serves only docs/): byte-identical copies of results files.
FIGURES = {"docs/scaling.png": "scaling.png"}


def sync_figures(check: bool, repo: str = REPO) -> list[str]:
  """Copy each results figure to its docs path (or, with check, name those that differ)."""
  stale = []
  for dest, name in FIGURES.items():
    with open(os.path.join(RESULTS_DIR, name), "rb") as f:
      data = f.read()
    path = os.path.join(repo, dest)
    current = open(path, "rb").read() if os.path.exists(path) else None
    if current != data:
      stale.append(f"{dest}: copy of benchmarks/results/{name}")
      if not check:
        with open(path, "wb") as f:
          f.write(data)
  return stale


def doc_paths(repo: str = REPO) -> list[str]:
  paths = []
  for pattern in DOC_FILES:
    paths += sorted(glob.glob(os.path.join(repo, pattern)))
  return paths


def update(text: str) -> tuple[str, list[str]]:
  """`text` with every generated table re-rendered, and the names of those that changed."""
  changed = []

  def sub(m: re.Match) -> str:
    body = render(m.group("name")) + "\n"
    if body != m.group("body"):
      changed.append(m.group("name"))
    return m.group(1) + body + m.group(4)

  return _BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 naming every table that differs")
  parser.add_argument("--list", action="store_true", help="list the tables each document holds")
  args = parser.parse_args(argv)
  stale = []
  for path in doc_paths():
    with open(path) as f:
      text = f.read()
    rel = os.path.relpath(path, REPO)
    if args.list:
      for m in _BLOCK.finditer(text):
        print(f"{rel}: {m.group('name')}")
      continue
    new, changed = update(text)
    stale += [f"{rel}: {name}" for name in changed]
    if changed and not args.check:
      with open(path, "w") as f:
        f.write(new)
  if not args.list:
    stale += sync_figures(args.check)
  if args.check and stale:
    print("generated tables differ from benchmarks/results/ (run `python -m benchmarks.report`):\n  "
          + "\n  ".join(stale), file=sys.stderr)
    return 1
  if not args.check and not args.list:
    print("\n".join(f"updated {s}" for s in stale) or "every generated table is up to date")
  return 0


if __name__ == "__main__":
  sys.exit(main())
