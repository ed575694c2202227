"""studies/mix_credit.py: the tiny run writes every mix x credit row, and each way of crediting a
mixed batch gives each sample the loss the guide says (checked on a hand-made batch)."""

import json

import numpy as np
import torch


class Recorder(torch.nn.Module):
    """A 'model' whose logits are the image's first 3 values: losses follow the inputs exactly."""

    def forward(self, images):
        return images.reshape(images.shape[0], -1)[:, :3]


def test_credits_follow_lambda_on_a_hand_made_batch(study_script, monkeypatch):
    study = study_script("mix_credit")
    images = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3, 1, 1) / 10
    labels = torch.tensor([0, 1, 2, 0])
    batch = (images, labels, torch.tensor([7, 2, 5, 0]), None)
    for lam in (0.8, 0.3):  # sample i dominant, then its neighbour (the batch rolled by one)
        monkeypatch.setattr(np.random, "default_rng", lambda seed, lam=lam: type("R", (), {"beta": lambda *_: lam})())
        got = study.credited_losses(Recorder(), [batch], "mixup", 0.2, 8, seed=0)
        mixed = lam * images + (1 - lam) * images.roll(1, 0)
        ce = torch.nn.functional.cross_entropy
        own = ce(Recorder()(mixed), labels, reduction="none").numpy()
        other = ce(Recorder()(mixed), labels.roll(1, 0), reduction="none").numpy()
        loss = lam * own + (1 - lam) * other
        ids = np.array([7, 2, 5, 0])
        np.testing.assert_allclose(got["sample i"][ids], loss, rtol=1e-6)
        owners = ids if lam >= 0.5 else np.roll(ids, 1)
        np.testing.assert_allclose(got["dominant"][owners], loss, rtol=1e-6)
        by_share = (lam * own + (1 - lam) * np.roll(other, -1))  # sample k: its own image, then image k+1
        np.testing.assert_allclose(got["own label, by share"][ids], by_share, rtol=1e-6)
        np.testing.assert_allclose(got["clean"][ids], ce(Recorder()(images), labels, reduction="none").numpy(),
                                   rtol=1e-6)
    spearman, top = study.agreement(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 4, 3]))
    assert round(spearman, 3) == 0.8 and top == 1.0  # the top two swapped: the same half
    spearman, top = study.agreement(np.array([1.0, 2, 3, 4]), np.array([3.0, 4, 1, 2]))
    assert round(spearman, 3) == -0.6 and top == 0.0


def test_tiny_run_writes_every_mix_and_credit(study_script, tmp_path, fashion_mnist_dir):
    out = tmp_path / "mix_credit.json"
    study_script("mix_credit").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "mix_credit" and written["samples"] == 500 and written["seeds"] == [0]
    assert len(written["rows"]) == 9
    assert all(-1 <= row["spearman"] <= 1 and 0 <= row["top_half_overlap"] <= 1 for row in written["rows"])
    assert "| MixUp alpha 0.2 | dominant |" in out.with_suffix(".md").read_text()
