"""fastprune.Loader as every kind of PyTorch Lightning loader (train, val, test, predict), with
logging to a CSVLogger and a resume from a Lightning checkpoint (CPU, a tiny model, a toy task)."""

import csv

import numpy as np
import pytest
import torch

import fastprune
from fastprune.convert import from_arrays
from fastprune.loader import Normalize

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

NORMALIZE = Normalize(mean=[0.5] * 3, std=[0.29] * 3)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lightning")
    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 512), ("val", 256)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 192, (n, 8, 8, 3), dtype=np.uint8)
        images[..., 0] += (64 * labels[:, None, None]).astype(np.uint8)  # learnable: class 1 is redder
        paths.append(from_arrays(images, labels, folder / f"{name}.beton", progress=False))
    return paths


class Classifier(L.LightningModule):
    def __init__(self, train_path, val_path):
        super().__init__()
        self.train_path, self.val_path = train_path, val_path
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        self.strategy = fastprune.UCB(len(fastprune.Store(train_path)), keep=0.5, seed=0)
        self.criterion = torch.nn.CrossEntropyLoss(reduction="none")
        self.loader = None
        self.samples_seen = {}

    def train_dataloader(self):
        if self.loader is None:
            self.loader = fastprune.Loader(self.train_path, batch_size=32, sampler=self.strategy,
                                           transforms=[NORMALIZE], seed=0)
        self.loader.set_epoch(self.current_epoch)
        return self.loader

    def val_dataloader(self):
        return fastprune.Loader(self.val_path, batch_size=64, shuffle=False, transforms=[NORMALIZE])

    def training_step(self, batch, batch_index):
        images, labels, indices, weights = batch
        self.samples_seen[self.current_epoch] = self.samples_seen.get(self.current_epoch, 0) + len(indices)
        loss = self.criterion(self.net(images), labels)
        self.strategy.update(indices, loss.detach())
        return (loss * weights).mean()

    def validation_step(self, batch, batch_index):
        images, labels, _, _ = batch
        self.log("val_acc", (self.net(images).argmax(1) == labels).float().mean(), on_epoch=True)

    test_step = validation_step

    def predict_step(self, batch, batch_index):
        return self.net(batch[0]).argmax(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["fastprune_strategy"] = self.strategy.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.strategy.load_state_dict(checkpoint["fastprune_strategy"])
        self.restored_selection = self.strategy.select(2).indices.copy()


def trainer(tmp_path, max_epochs, version):
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, reload_dataloaders_every_n_epochs=1,
                     logger=CSVLogger(tmp_path, name="logs", version=version), log_every_n_steps=1,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def logged_val_acc(tmp_path, version):
    with open(tmp_path / "logs" / version / "metrics.csv") as f:
        return {int(row["epoch"]): float(row["val_acc"]) for row in csv.DictReader(f) if row.get("val_acc")}


def test_loader_as_lightning_train_val_test_and_predict_loader_with_logging_and_resume(tmp_path, stores):
    train_path, val_path = stores
    first = Classifier(train_path, val_path)
    trainer(tmp_path, 2, "first").fit(first)
    assert sorted(logged_val_acc(tmp_path, "first")) == [0, 1]
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert checkpoint.is_file()

    resumed = Classifier(train_path, val_path)
    second = trainer(tmp_path, 4, "resumed")
    second.fit(resumed, ckpt_path=checkpoint)
    # the resumed run trained epochs 2 and 3 only, each on exactly its pruned selection, which the
    # restored strategy draws as the uninterrupted one would (its state came back from the checkpoint)
    assert sorted(resumed.samples_seen) == [2, 3]
    assert resumed.samples_seen == {e: resumed.loader.samples_in_epoch(e) for e in (2, 3)} == {2: 256, 3: 256}
    assert np.array_equal(resumed.restored_selection, first.strategy.select(2).indices)
    val_acc = logged_val_acc(tmp_path, "resumed")
    assert sorted(val_acc) == [2, 3]
    assert val_acc[3] >= 0.9, val_acc  # learns the task (2 classes: chance is 0.5)

    val = fastprune.Loader(val_path, batch_size=64, shuffle=False, transforms=[NORMALIZE])
    tested = second.test(resumed, dataloaders=val, verbose=False)
    assert tested[0]["val_acc"] >= 0.9
    predicted = torch.cat(second.predict(resumed, dataloaders=val))
    labels = torch.as_tensor(np.asarray(fastprune.Store(val_path).metadata["f1"]))
    assert len(predicted) == 256 and (predicted == labels).float().mean() >= 0.9
