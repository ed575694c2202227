"""benchmarks/revisions.py: two revisions' loader rows in alternating processes, each importing
its own fastprune."""

import json
import subprocess

import pytest


def test_a_tiny_comparison_runs_each_revision_in_its_own_process(benchmark_script, tmp_path):
    pytest.importorskip("ffcv")  # loader_throughput.py's datasets() writes ffcv's own stores too
    out = tmp_path / "revisions.json"
    benchmark_script("revisions").main([
        "--base", "HEAD", "--pairs", "1", "--epochs", "1", "--rows", "raw28", "photos-rrc224", "--threads", "1",
        "--limit", "600", "--photos", "24", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert [(r["row"], r["threads"]) for r in written["rows"]] == [("raw28", 1), ("photos-rrc224", 1)]
    for row in written["rows"]:
        assert len(row["paired_ratios"]) == 1 and 0.1 < row["paired_ratio_median"] < 10
        assert row["head_img_per_s"] > 0 and row["base_img_per_s"] > 0
    assert "| raw28 | 1 |" in out.with_suffix(".md").read_text()


def test_pairs_alternate_which_revision_runs_first_and_ratios_are_paired(benchmark_script, tmp_path, monkeypatch):
    script = benchmark_script("revisions")
    seen = []
    monkeypatch.setattr(script, "export_base", lambda base, into: into / "src")

    def fake_worker(tree, args):  # the working tree twice the base's rate, both drifting per pair
        seen.append("base" if tree else "head")
        drift = 1 + len(seen) // 2
        return {"raw28 1": [(1 if tree else 2) * 1000.0 * drift]}

    monkeypatch.setattr(script, "run_worker", fake_worker)
    args = script.argparse.Namespace(base="HEAD", pairs=3)
    result = script.compare(args)
    assert seen == ["head", "head", "base", "base", "head", "head", "base"]  # (the first: data and warm-up)
    assert result["rows"][0]["paired_ratios"] == [2.0, 2.0, 2.0]


def test_a_base_with_another_native_core_or_none_at_all_is_refused(benchmark_script, tmp_path, monkeypatch):
    script = benchmark_script("revisions")
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    (repo / "csrc").mkdir(parents=True)
    (repo / "src" / "fastprune").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for version in ("1", "2"):  # the native core changes between the two commits
        (repo / "csrc" / "core.cpp").write_text(f"int v = {version};\n")
        (repo / "src" / "fastprune" / "__init__.py").write_text(f"v = {version}\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", version], check=True)
    monkeypatch.setattr(script, "REPO", repo)
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit, match="native core differs"):
        script.export_base("HEAD~1", tmp_path / "out")
    with pytest.raises(SystemExit, match="--base nope: no such revision"):
        script.export_base("nope", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_the_base_process_must_import_the_exported_tree(benchmark_script, tmp_path, monkeypatch):
    """Were the editable install's finder left in place, the 'base' would be the working tree
    again and every ratio 1: the script checks where fastprune came from."""
    script = benchmark_script("revisions")
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=json.dumps({"fastprune": str(script.REPO / "src/fastprune/__init__.py"), "rates": {}}),
        stderr=""))
    args = script.argparse.Namespace(epochs=1, workdir=tmp_path, photos=1, rows=["raw28"], threads=[1], limit=None)
    with pytest.raises(SystemExit, match="imported .*, not the exported"):
        script.run_worker(tmp_path / "src", args)
