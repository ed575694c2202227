"""Every file the docs and the command line's --help point to exists (issue 34 point 6: `bench
--help` cited BENCHMARKS.md and docs named renamed tests), and what a pip user reads (--help, run
output) names repository files as such: a wheel has no docs/ or benchmarks/ folder."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from fastprune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = "docs|benchmarks|studies|tests|src|scripts"
# a repository path: docs/guide.md, benchmarks/results/end_to_end*.md, end_to_end[_quick].json
REPO_PATH = re.compile(rf"(?<![\w./-])(?:\.\./)*(?:{TOP})/(?:[\w./*-]|\[[\w-]*\])*")
BARE_MARKDOWN = re.compile(r"(?<![\w./-])[\w-]+\.md\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# files a command writes (described, not referenced): they need not be in the repository
WRITTEN = {"benchmarks/results/gpu.json", "benchmarks/results/end_to_end.json",
           "benchmarks/results/end_to_end_quick.json", "benchmarks/results/end_to_end_quick.md"}


def help_texts() -> dict[str, str]:
    texts = {}
    for command in (None, "convert", "info", "train", "bench"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            build_parser(command).parse_args([command, "--help"] if command else ["--help"])
        texts[f"fastprune {command or ''} --help"] = out.getvalue()
    return texts


def _exists(reference: str, folder: Path) -> bool:
    reference = reference.split("#")[0].rstrip(".,;:")
    if not reference:
        return True
    variants = {reference}
    if "[" in reference:  # end_to_end[_quick].json: with and without the optional part
        variants = {re.sub(r"\[([^\]]*)\]", r"\1", reference), re.sub(r"\[[^\]]*\]", "", reference)}
    for variant in variants:
        for base in (folder, ROOT):
            candidate = (base / variant)
            if variant in WRITTEN or (candidate.exists() if "*" not in variant else any(base.glob(variant))):
                break
        else:
            return False
    return True


def missing_references(text: str, folder: Path) -> list[str]:
    """The repository paths, bare NAME.md files and markdown links in ``text`` that do not exist."""
    missing = []
    for match in REPO_PATH.finditer(text):
        if not _exists(match.group(0), folder):
            missing.append(match.group(0))
    for match in BARE_MARKDOWN.finditer(text):
        if not any(ROOT.rglob(match.group(0))):
            missing.append(match.group(0))
    for match in LINK.finditer(text):
        target = match.group(1)
        if not re.match(r"[a-z]+:", target) and not _exists(target, folder):
            missing.append(target)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_reference_only_files_that_exist(doc):
    assert missing_references(doc.read_text(), doc.parent) == []


def test_help_references_only_files_that_exist():
    found = {name: missing_references(text, ROOT) for name, text in help_texts().items()}
    assert {name: refs for name, refs in found.items() if refs} == {}


def repository_only(text: str) -> list[str]:
    """References to the repository's docs and scripts that do not say they are there."""
    unmarked = []
    for match in re.finditer(r"(?<![\w./-])(?:docs/[\w./-]+|[\w./-]+\.md\b|benchmarks/\w+\.py|studies/\w+\.py)", text):
        around = text[max(0, match.start() - 80):match.end() + 80].replace("\n", " ")
        if "source repository" not in " ".join(around.split()):
            unmarked.append(match.group(0))
    return unmarked


def test_help_names_repository_files_as_such():
    """A wheel has no docs/ or benchmarks/: --help says where such a file is."""
    found = {name: repository_only(text) for name, text in help_texts().items()}
    assert {name: refs for name, refs in found.items() if refs} == {}


def test_bench_run_output_names_repository_files_as_such():
    from fastprune.bench import report
    from fastprune.bench.plan import FULL_MODE, QUICK_MODE
    from fastprune.train.recipe import RECIPE

    for mode, quick in ((FULL_MODE, False), (QUICK_MODE, True)):
        note = report.scale_note(mode, RECIPE, quick)
        assert repository_only(note) == [], note
