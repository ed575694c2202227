"""Which per-sample loss should a pruning strategy get under MixUp or CutMix?

A mixed image is lambda of sample i and 1 - lambda of its neighbour in the batch (torchvision's
pairing: the batch rolled by one). A model is trained a few epochs on a Fashion-MNIST subset
without mixing; then, over one pass, each sample's clean loss (its own image and label) is
compared with the loss each way of crediting a mixed batch gives it:

- "sample i": the mixed image's loss always goes to sample i, whatever lambda is;
- "dominant": it goes to the sample the image is mostly of (i when lambda >= 0.5, else the
  neighbour): still one loss per sample per step (docs/guide.md, "MixUp and CutMix");
- "own label, by share": each sample's own label's loss on both images it is in, weighted by its
  share (two contributions per sample).

Rows give the Spearman rank correlation with the clean losses and the overlap of the top halves
(what a keep-0.5 strategy would keep).

    .venv/bin/python studies/mix_credit.py [--samples 10000] [--epochs 2] [--seeds 0 1 2] [--tiny]

Prints a table; writes studies/results/mix_credit.json and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastprune import Loader, Store
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown
from fastprune.convert import from_arrays, from_idx
from fastprune.loader import Normalize
from fastprune.models import SmallResNet

MIXES = (("MixUp alpha 0.2", "mixup", 0.2), ("MixUp alpha 1", "mixup", 1.0), ("CutMix alpha 1", "cutmix", 1.0))
CREDITS = ("sample i", "dominant", "own label, by share")


def subset_store(workdir: Path, samples: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    full = workdir / "fmnist-train.beton"
    if not full.exists():
        from_idx(None, full, progress=False)
    path = workdir / f"fmnist-{samples}.beton"
    if not path.exists():
        with Store(full) as store:
            rows = [store[i] for i in range(samples)]
        from_arrays(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]), path, progress=False)
    return path


def cutmix(images: torch.Tensor, lam: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """torchvision's CutMix box for ``lam``, pasted from the rolled batch; the area actually kept."""
    height, width = images.shape[-2:]
    ratio = (1 - lam) ** 0.5
    box_h, box_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images.roll(1, 0)[..., y0:y1, x0:x1]
    return mixed, 1 - (y1 - y0) * (x1 - x0) / (height * width)


def credited_losses(model, loader: Loader, kind: str, alpha: float, size: int, seed: int) -> dict:
    """Clean loss and each way's credited loss, per sample id, over one pass."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    clean = np.zeros(size)
    credited = {name: np.zeros(size) for name in CREDITS}
    share = np.zeros(size)
    with torch.no_grad():
        for images, labels, indices, _ in loader:
            ids = indices.numpy()
            clean[ids] = F.cross_entropy(model(images), labels, reduction="none").numpy()
            lam = float(rng.beta(alpha, alpha))
            if kind == "cutmix":
                mixed, lam = cutmix(images, lam, generator)
            else:
                mixed = lam * images + (1 - lam) * images.roll(1, 0)
            logits = model(mixed)
            own = F.cross_entropy(logits, labels, reduction="none").numpy()
            other = F.cross_entropy(logits, labels.roll(1, 0), reduction="none").numpy()
            loss = lam * own + (1 - lam) * other
            credited["sample i"][ids] = loss
            credited["dominant"][ids if lam >= 0.5 else np.roll(ids, 1)] = loss
            credited["own label, by share"][ids] += lam * own
            credited["own label, by share"][np.roll(ids, 1)] += (1 - lam) * other
            share[ids] += lam
            share[np.roll(ids, 1)] += 1 - lam
    credited["own label, by share"] /= np.maximum(share, 1e-12)
    return {"clean": clean, **credited}


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def agreement(clean: np.ndarray, credited: np.ndarray) -> tuple[float, float]:
    """(Spearman correlation, overlap of the top halves) of two per-sample losses."""
    spearman = float(np.corrcoef(ranks(clean), ranks(credited))[0, 1])
    half = len(clean) // 2
    top = len(set(np.argsort(-clean)[:half]) & set(np.argsort(-credited)[:half])) / half
    return spearman, top


def trained_model(loader: Loader, epochs: int, seed: int) -> torch.nn.Module:
    """The study's model, trained ``epochs`` plain epochs (no mixing), in eval mode."""
    torch.manual_seed(seed)
    model = SmallResNet(in_channels=3, num_classes=10, widths=(8, 16, 32))
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels, _, _ in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs before the losses are compared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are written")
    parser.add_argument("--out", type=Path, default=Path("studies/results/mix_credit.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.epochs, args.seeds = 500, 1, [0]
    found = {}  # (mix, credit) -> [(spearman, overlap) per seed]
    with tempfile.TemporaryDirectory() as tmp:
        with Store(subset_store(args.workdir or Path(tmp), args.samples)) as store:
            normalize = Normalize(mean=[0.286] * 3, std=[0.353] * 3)
            for seed in args.seeds:
                loader = Loader(store, 250, seed=seed, even_batches=True, transforms=[normalize])
                model = trained_model(loader, args.epochs, seed)
                for name, kind, alpha in MIXES:
                    losses = credited_losses(model, loader, kind, alpha, len(store), seed)
                    for credit in CREDITS:
                        found.setdefault((name, credit), []).append(agreement(losses["clean"], losses[credit]))
    rows = []
    for (name, credit), values in found.items():
        spearman, top = np.mean(values, axis=0)
        rows.append({"mix": name, "credit": credit, "spearman": round(float(spearman), 3),
                     "top_half_overlap": round(float(top), 3),
                     "spearman_per_seed": [round(v[0], 3) for v in values]})
        print(f"{name:16s} {credit:20s} Spearman {spearman:.3f}  top-half overlap {top:.3f}", flush=True)
    result = {"benchmark": "mix_credit", "command": command_line(), "machine": machine(), "date": now(),
              "samples": args.samples, "epochs": args.epochs, "seeds": args.seeds, "rows": rows}
    out = write_json(args.out, result)
    lines = ["# MixUp/CutMix: which sample a mixed image's loss should go to", "",
             f"{provenance(result)}: SmallResNet (8/16/32) trained {args.epochs} epochs on {args.samples} "
             f"Fashion-MNIST training samples; agreement of each sample's credited loss with its clean loss, "
             f"means over seeds {args.seeds} (per seed in the JSON).",
             "", "| mix | credited to | Spearman | top-half overlap |", "|---|---|---|---|"]
    lines += [f"| {r['mix']} | {r['credit']} | {r['spearman']:.3f} | {r['top_half_overlap']:.3f} |" for r in rows]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
