"""The CPU loader rows of two revisions of fastprune's Python code, in alternating processes.

    python benchmarks/revisions.py --base e757437 --pairs 8

Why: a change to the loader's Python (which producer builds which batch, the transforms' buffers)
must not make the CPU path slower (issue 35: "no regression beyond noise"), and this shared
machine's speed drifts by more than such a change between sessions. So both revisions run here,
in one session, as separate processes taking turns (each pair starts with the other revision),
and the table gives the median and spread of the paired ratios.

Rows (the loader_throughput.py pipelines, on the files that script writes):
  raw28 / jpeg32: Fashion-MNIST raw 28 px / padded to 32 px as JPEG, RandomCrop pad 4 + flip +
                  Normalize, batch 256; full epochs of the 60k (--limit to cut)
  photos-rrc224:  --photos natural-photo JPEG crops (max side 256), RandomResizedCrop 224 + flip +
                  Normalize, batch 128
Each process warms up one epoch per row (numba's cache, the page cache), then times --epochs.

The base revision's ``src/fastprune`` is exported with ``git archive`` and runs on the working
tree's build of the native core: a base whose csrc/ or CMakeLists.txt differ is refused, because
its Python would call a core it was not written for. The comparison is of the working tree (what
is checked out, edits included) against --base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROWS = ("raw28", "jpeg32", "photos-rrc224")


# -- one revision, in its own process -----------------------------------------------------------

def worker(tree: Path | None, rows: list[str], threads: list[int], epochs: int, workdir: Path, limit: int | None,
           photos: int) -> dict:
    """Images/s of each row and thread count, per timed epoch, with the fastprune under ``tree``
    (None: the installed one, i.e. the working tree), and the file that fastprune was imported from."""
    if tree is not None:
        # The editable install's finder maps `fastprune` to the working tree whatever sys.path says
        sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
        sys.path.insert(0, str(tree))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import loader_throughput as lt

    import fastprune

    data = lt.datasets(workdir, limit)
    rates: dict[str, list[float]] = {}
    for row in rows:
        for count in threads:
            if row == "photos-rrc224":
                loader = fastprune.loader.Loader(lt.photo_store(workdir, photos), 128, threads=count, seed=0,
                                                 transforms=lt.photo_pipeline("rrc", 224))
            else:
                loader = lt.fastprune_loader(data[row][0], count)
            rates[f"{row} {count}"] = lt.measure(loader, epochs)
    return {"fastprune": fastprune.__file__, "rates": rates}


def run_worker(tree: Path | None, args) -> dict[str, list[float]]:
    """The worker's rates; it runs in a process of its own, so each revision imports cleanly."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--epochs", str(args.epochs),
               "--workdir", str(args.workdir), "--photos", str(args.photos), "--rows", *args.rows,
               "--threads", *map(str, args.threads)]
    command += ["--tree", str(tree)] if tree is not None else []
    command += ["--limit", str(args.limit)] if args.limit else []
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        which = "base" if tree else "working-tree"
        raise SystemExit(f"revisions.py: the {which} process failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if tree is not None and not Path(result["fastprune"]).is_relative_to(tree):
        raise SystemExit(f"revisions.py: the base process imported {result['fastprune']}, not the exported {tree}")
    return result["rates"]


# -- the comparison -----------------------------------------------------------------------------

def export_base(base: str, into: Path) -> Path:
    """``base``'s src/fastprune under ``into``, with the working tree's native core beside it."""
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    if known.returncode != 0:
        raise SystemExit(f"revisions.py: --base {base}: no such revision in {REPO} (a shallow clone lacks history)")
    native = subprocess.run(["git", "diff", "--stat", base, "--", "csrc", "CMakeLists.txt"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    if native:
        raise SystemExit(f"revisions.py: --base {base}: its native core differs from the working tree's "
                         f"(git diff --stat {base} -- csrc CMakeLists.txt):\n{native}")
    archive = subprocess.run(["git", "archive", base, "src/fastprune"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    import fastprune._native as native_module

    core = Path(native_module.core.__file__)
    (into / "src" / "fastprune" / core.name).write_bytes(core.read_bytes())
    return into / "src"


def compare(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = export_base(args.base, Path(tmp))
        run_worker(None, args)  # writes the data files before any timed pair
        pairs = []
        for pair in range(args.pairs):
            order = [("head", None), ("base", base_tree)]
            order = order if pair % 2 == 0 else order[::-1]
            results = {name: run_worker(tree, args) for name, tree in order}
            pairs.append(results)
            print(f"pair {pair + 1}/{args.pairs}: " + ", ".join(
                f"{key} {statistics.median(results['head'][key]) / statistics.median(results['base'][key]):.3f}"
                for key in results["head"]), flush=True)
    rows = []
    for key in pairs[0]["head"]:
        head = [statistics.median(p["head"][key]) for p in pairs]
        base = [statistics.median(p["base"][key]) for p in pairs]
        ratios = sorted(h / b for h, b in zip(head, base))
        row, threads = key.rsplit(" ", 1)
        rows.append({"row": row, "threads": int(threads), "head_img_per_s": statistics.median(head),
                     "base_img_per_s": statistics.median(base), "paired_ratio_median": statistics.median(ratios),
                     "paired_ratios": ratios})
    return {"pairs": pairs, "rows": rows}


def report(result: dict) -> list[str]:
    from fastprune.bench.machine import provenance

    lines = [f"# The CPU loader rows: the working tree against {result['base']}", "",
             f"{provenance(result)}; working tree at {result['head']}. {result['pairs_count']} pairs of processes, "
             f"each pair's first process alternating; a process's rate is the median of {result['epochs']} epochs "
             f"after a warm-up one.", "",
             "| row | threads | working tree img/s | base img/s | paired ratio, median | paired ratios, range |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {r['threads']} | {r['head_img_per_s']:,.0f} | {r['base_img_per_s']:,.0f} | "
                     f"{r['paired_ratio_median']:.3f} | {min(r['paired_ratios']):.2f}-{max(r['paired_ratios']):.2f} |")
    return lines


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare the working tree with")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per row in each process")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit", type=int, default=None, help="only the first N Fashion-MNIST images")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "revisions.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args.tree, args.rows, args.threads, args.epochs, args.workdir, args.limit,
                                args.photos)))
        return None
    from fastprune.bench.machine import command_line, machine, now, write_json, write_markdown

    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    result = {"benchmark": "revisions", "command": command_line(), "machine": machine(), "date": now(),
              "base": args.base, "head": head.stdout.strip(), "pairs_count": args.pairs, "epochs": args.epochs,
              "limit": args.limit, "photos": args.photos, **compare(args)}
    out = write_json(args.out, result)
    write_markdown(out, report(result))
    return result


if __name__ == "__main__":
    main()
