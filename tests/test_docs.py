"""The documentation builds, its links and code references resolve, and its tables are generated.

README.md and docs/*.md name modules (`python -m x.y`), files and pages; each must exist in the
repository, so a renamed module or a moved page fails here instead of in a user's terminal. The
tables between `<!-- report:NAME -->` markers must equal what `python -m benchmarks.report`
generates from benchmarks/results/.
"""
from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess
import sys

import pytest

from benchmarks import regenerate, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
# Top-level directories whose paths and modules the docs may name.
TOP = ("xlsr_jax", "data_pipelines", "benchmarks", "experiments", "scripts", "tests", "docs")


def _text(path: str) -> str:
  with open(path) as f:
    return f.read()


def _expand_braces(s: str) -> list[str]:
  """'a/{b,c}.py' -> ['a/b.py', 'a/c.py'] (shell brace expansion, any number of groups)."""
  parts = re.split(r"\{([^{}]*)\}", s)
  choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
  return ["".join(c) for c in itertools.product(*choices)]


def test_mkdocs_build_strict(tmp_path):
  """`mkdocs build --strict` succeeds: every page in nav exists, no broken link or anchor."""
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                         str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (tmp_path / "site" / "performance" / "index.html").exists()


def _slug(heading: str) -> str:
  from markdown.extensions.toc import slugify
  return slugify(heading, "-")


def _anchors(path: str) -> set[str]:
  return {_slug(m.group(1).strip()) for m in re.finditer(r"^#+ (.+)$", _text(path), re.M)}


def test_readme_links_resolve():
  """Every relative link in README.md names an existing file (and heading, for a #anchor)."""
  text = _text(os.path.join(REPO, "README.md"))
  links = re.findall(r"\]\(([^)\s]+)\)", text)
  assert links, "README.md has no links"
  for link in links:
    if re.match(r"[a-z]+://", link):
      continue
    target, _, anchor = link.partition("#")
    path = os.path.join(REPO, target)
    assert os.path.exists(path), f"README.md links to {link}: no such file"
    if anchor:
      assert anchor in _anchors(path), f"README.md links to {link}: no such heading"


def _module_exists(module: str) -> bool:
  base = os.path.join(REPO, *module.split("."))
  return (os.path.exists(base + ".py") or os.path.exists(os.path.join(base, "__main__.py"))
          or os.path.exists(os.path.join(base, "__init__.py")))


def _code_references() -> list[tuple[str, str, str]]:
  """(doc, kind, reference) for every `python -m MODULE` and repository path the docs name."""
  refs = []
  for doc in DOCS:
    # What else was running when a result was measured (other people's commands) is not a reference.
    text = re.sub(r"running beside it: [^\n]*", "", _text(doc))
    name = os.path.relpath(doc, REPO)
    for module in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text):
      if module.split(".")[0] in TOP:
        refs.append((name, "module", module))
    for span in re.findall(r"`([^`\n]+)`", text) + re.findall(r"(?:bash|python3?) (\S+\.(?:sh|py))", text):
      for token in re.findall(r"(?<![\w./$-])((?:%s)/[\w./{},*-]*)" % "|".join(TOP), span):
        token = token.rstrip(".,")
        for path in _expand_braces(token):
          refs.append((name, "path", path))
  return refs


def test_code_references_exist():
  """Modules run with `python -m` and repository paths named in README.md and docs/ exist."""
  refs = _code_references()
  kinds = {k for _, k, _ in refs}
  assert kinds == {"module", "path"}, kinds
  missing = []
  for doc, kind, ref in refs:
    if kind == "module":
      ok = _module_exists(ref)
    else:
      # A results file that a committed command writes but that was not produced yet counts.
      ok = bool(glob.glob(os.path.join(REPO, ref))) or (
          ref.startswith("benchmarks/results/") and os.path.basename(ref) in regenerate.outputs())
    if not ok:
      missing.append(f"{doc}: {kind} {ref}")
  assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_code_reference_check_catches_a_missing_module(monkeypatch):
  """The reference scan sees `python -m` lines and paths (it would catch a renamed module)."""
  monkeypatch.setattr(sys.modules[__name__], "DOCS", [os.path.join(REPO, "README.md")])
  refs = {r for _, _, r in _code_references()}
  assert "xlsr_jax.main" in refs and "scripts/test.sh" in refs
  assert not _module_exists("xlsr_jax.no_such_module")


def test_generated_tables_are_current():
  """Every documented table equals what `python -m benchmarks.report` generates."""
  assert report.main(["--check"]) == 0


def test_report_detects_an_edited_table():
  """A table edited by hand (one figure changed) is reported as differing from its results file."""
  path = os.path.join(REPO, "docs", "performance.md")
  text = _text(path)
  start = text.index("<!-- report:train_step -->")
  row = text.index("\n| ", text.index("|---", start))  # the first data row
  digit = re.compile(r"\d").search(text, row)
  edited = text[:digit.start()] + str((int(digit.group()) + 1) % 10) + text[digit.end():]
  _, changed = report.update(edited)
  assert changed == ["train_step"]
  _, unchanged = report.update(text)
  assert unchanged == []


def test_every_generated_table_names_its_source():
  """Each generated table ends with a source line naming a results file and its command."""
  names = set()
  for doc in DOCS:
    names |= set(re.findall(r"<!-- report:(\S+) -->", _text(doc)))
  assert {"headline", "train_step", "plan", "decoding"} <= names
  for name in sorted(names - {"headline"}):
    body = report.render(name)
    if body.startswith("*No results file yet"):
      continue
    assert "benchmarks/results/" in body and ("Source: " in body or "Sources:" in body), name


@pytest.mark.parametrize("doc", [d for d in DOCS if d.endswith("README.md")])
def test_readme_is_short(doc):
  """The README stays a guide (the reference lives in docs/)."""
  assert len(_text(doc).splitlines()) <= 300


def test_regenerate_lists_every_results_file():
  """Every file in benchmarks/results/ is written by a job of `python -m benchmarks.regenerate`
  (or is the provenance index), and every skipped job says why."""
  outputs = regenerate.outputs()
  # xlsr_jax.plan's human-readable printout beside its JSON; the provenance index.
  known = outputs | {o[:-5] + ".txt" for o in outputs if o.startswith("plan_")} | {"SOURCES.json"}
  present = set(os.listdir(os.path.join(REPO, "benchmarks", "results")))
  assert present <= known, sorted(present - known)
  assert all(job.skip or job.steps for job in regenerate.JOBS)
  assert regenerate.main(["--dry-run"]) == 0
