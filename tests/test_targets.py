"""Targets that are not class labels: a regression number (FloatField) or an array per sample
(NDArrayField: multi-label, several outputs), written by from_arrays(targets=True) or any store,
carried as a batch's labels; the classifiers (fit, train, bench) refuse them in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.errors import ConfigError, ConversionError
from fastprune.store import BytesField, FloatField, IntField, NDArrayField, RGBImageField, Store, write_dataset

N = 37  # not a multiple of the batch size: the last, partial batch is checked too


def _images(n=N, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)


def _every_batch(loader):
    """(ids, labels) of a whole epoch, in the order handed out."""
    ids, labels = [], []
    for batch in loader:
        ids.append(batch.indices.numpy())
        labels.append(batch.labels.numpy())
    return np.concatenate(ids), np.concatenate(labels)


def test_the_index_field_is_never_taken_for_labels_and_unchosen_candidates_warn(tmp_path):
    """write_dataset(index_field=) beside a float target made the sample ids the labels: fastprune
    train took them for 200 classes and trained a classifier on them."""
    rows = [(image, float(i) / 2) for i, image in enumerate(_images())]
    path = write_dataset(tmp_path / "i.beton", rows, {"image": RGBImageField(), "target": FloatField()},
                         index_field="index", workers=1, progress=False)
    with pytest.warns(fastprune.errors.UsageWarning, match=r"i.beton: batches carry no labels \(no field is named "
                                                            r"'label'; fields that could be: target\): "
                                                            r"name one as the Loader's label_field"):
        loader = fastprune.Loader(path, 8)
    assert next(iter(loader)).labels is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastprune.errors.UsageWarning)  # named: no warning
        ids, labels = _every_batch(fastprune.Loader(path, 8, label_field="target", seed=0))
    np.testing.assert_array_equal(labels, ids / 2)


def test_an_array_field_is_not_taken_for_labels_by_default(tmp_path):
    """An NDArrayField's metadata column is its data pointer (an unsigned integer): the Loader
    took such a field for the only integer field and yielded the pointers (8388768, ...) as labels."""
    feats = np.arange(N * 2, dtype=np.int32).reshape(N, 2)
    path = write_dataset(tmp_path / "f.beton", list(zip(_images(), feats)),
                         {"image": RGBImageField(), "feat": NDArrayField(np.int32, (2,))}, workers=1, progress=False)
    with pytest.warns(fastprune.errors.UsageWarning, match="fields that could be: feat"):
        assert next(iter(fastprune.Loader(path, 8))).labels is None
    ids, labels = _every_batch(fastprune.Loader(path, 8, label_field="feat", seed=1))
    assert sorted(ids) == list(range(N)) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, feats[ids])


@pytest.mark.parametrize("dtype, shape", [(">f4", (2, 3)), ("<u2", (4,)), ("bool", (5,)), ("uint8", (64, 48))],
                         ids=["big-endian float", "uint16", "bool", "a 64x48 mask"])
def test_an_array_label_field_arrives_per_sample_in_native_byte_order(tmp_path, dtype, shape):
    rng = np.random.default_rng(3)
    values = (rng.normal(size=(N, *shape)) * 40 + 50).clip(0, 255).astype(dtype)
    path = write_dataset(tmp_path / "a.beton", list(zip(_images(), values, range(N))),
                         {"image": RGBImageField(), "label": NDArrayField(dtype, shape), "y": IntField()},
                         workers=2, progress=False, chunk_size=5)
    loader = fastprune.Loader(path, 8, seed=2)  # "label" is chosen over the only int field, y
    assert loader._source.label_field == "label"
    ids, labels = _every_batch(loader)
    assert labels.shape == (N, *shape) and labels.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(labels, values[ids])


def test_a_label_field_that_holds_no_numbers_is_refused_naming_the_fields(tmp_path):
    path = write_dataset(tmp_path / "b.beton", [(image, b"x", 1) for image in _images(4)],
                         {"image": RGBImageField(), "blob": BytesField(), "label": IntField()},
                         workers=1, progress=False)
    with pytest.raises(ValueError, match=r"label_field='blob' is not an int, float or array field of this store "
                                         r"\(fields: image \(RGBImageField\), blob \(BytesField\), label"):
        fastprune.Loader(path, 4, label_field="blob")


@pytest.mark.parametrize("workers", [1, 2])
def test_from_arrays_stores_regression_targets_as_float64(tmp_path, workers):
    targets = np.random.default_rng(1).normal(size=N).astype(np.float32) * 1e3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "labels are sparse": they are not classes
        path = from_arrays(_images(), targets, tmp_path / "r.beton", targets=True, workers=workers, progress=False)
    with Store(path) as store:
        assert store.fields["label"] == FloatField()
    ids, labels = _every_batch(fastprune.Loader(path, 8, seed=0))
    assert labels.dtype == np.float64
    np.testing.assert_array_equal(labels, targets[ids].astype(np.float64))


def test_from_arrays_stores_multi_label_vectors_as_an_array_field(tmp_path):
    labels = np.random.default_rng(2).random((N, 7)) > 0.5
    path = from_arrays(_images(), labels, tmp_path / "m.beton", targets=True, jpeg=True, index=True, progress=False)
    with Store(path) as store:
        assert store.fields["label"] == NDArrayField(np.bool_, (7,)) and "index" in store.fields
    ids, got = _every_batch(fastprune.Loader(path, 8, seed=0))
    np.testing.assert_array_equal(got, labels[ids])


@pytest.mark.parametrize("targets, message", [
    (np.array(["a"] * N), r"labels must be numbers or booleans, got dtype <U1"),
    (np.r_[np.zeros(N - 2), np.inf, 0.0], r"sample 35's target is not finite \(inf; 1 such samples\)"),
    (np.c_[np.zeros(N), np.r_[np.zeros(N - 1), np.nan]], r"sample 36's target is not finite \(\[ 0. nan\]"),
    (np.float64(2.0), r"must hold one target per sample, got a scalar"),
    ([np.zeros(2)] * 5 + [np.zeros(3)] * (N - 5), r"labels are not all of one shape .*0/1 vector of one length"),
    (np.zeros((N, 0)), r"each sample's target is empty \(shape \(0,\)\)"),
    (np.zeros(N - 1), r"arrays: 37 images but 36 labels"),
])
def test_from_arrays_refuses_targets_it_cannot_train_on_and_writes_nothing(tmp_path, targets, message):
    out = tmp_path / "bad.beton"
    with pytest.raises(ConversionError, match=message):
        from_arrays(_images(), targets, out, targets=True, progress=False)
    assert not out.exists()


def test_targets_options_are_checked(tmp_path):
    with pytest.raises(ConversionError, match=r"from_arrays: class_names \(--class-names\) apply to class labels, "
                                              r"not to targets \(targets=True, --targets\)"):
        from_arrays(_images(), np.zeros(N), tmp_path / "x.beton", targets=True, class_names=["a"], progress=False)
    with pytest.raises(TypeError, match="targets must be True or False, got str 'yes'"):
        from_arrays(_images(), np.zeros(N), tmp_path / "x.beton", targets="yes", progress=False)
    # class labels that are floats say how to store targets instead
    with pytest.raises(ConversionError, match=r"labels must be integers, got dtype float64 \(targets that are "
                                              r"not classes, e.g. regression: pass targets=True, or convert "
                                              r"--targets\)"):
        from_arrays(_images(), np.zeros(N), tmp_path / "x.beton", progress=False)


def test_convert_targets_from_a_npz_and_only_from_one(tmp_path, capsys):
    values = np.random.default_rng(4).normal(size=(N, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=_images()[..., 0], labels=values)
    out = tmp_path / "d.beton"
    assert main(["convert", str(tmp_path / "d.npz"), "-o", str(out), "--targets", "--no-progress"]) == 0
    ids, labels = _every_batch(fastprune.Loader(out, 8, seed=0))
    np.testing.assert_array_equal(labels, values[ids])
    assert main(["convert", str(tmp_path / "d.npz"), "-o", str(tmp_path / "e.beton"), "--no-progress"]) != 0
    assert "convert --targets" in capsys.readouterr().err
    tree = tmp_path / "tree" / "a"
    tree.mkdir(parents=True)
    assert main(["convert", str(tree.parent), "-o", str(tmp_path / "t.beton"), "--targets"]) != 0
    assert "--targets applies to npz and hf sources, not imagefolder" in capsys.readouterr().err


@pytest.fixture
def multi_label_store(tmp_path):
    labels = np.random.default_rng(5).random((N, 4)) > 0.5
    return from_arrays(_images(), labels, tmp_path / "ml.beton", targets=True, progress=False)


def test_fit_refuses_array_labels_in_one_line(multi_label_store):
    from fastprune.train import fit

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(90, 4))
    with pytest.raises(ConfigError, match=r"fit: train_loader's label field 'label' holds arrays of shape \(4,\) "
                                          r"\(bool\); fit trains classifiers .* docs/guide.md#other-tasks"):
        fit(model, fastprune.Loader(multi_label_store, 8), None, epochs=1, progress=False, log=None)


def test_bench_refuses_targets_before_printing_its_plan(multi_label_store, tmp_path, capsys):
    code = main(["bench", "--train", str(multi_label_store), "--val", str(multi_label_store), "--quick",
                 "--out", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code != 0 and "holds arrays of shape (4,) (bool), not class labels" in err
    assert out == "" and not (tmp_path / "b.json").exists()


def test_a_square_loss_is_told_to_squeeze_the_prediction():
    """A [B, 1] prediction against [B] targets broadcasts to a [B, B] loss; the usual advice,
    flatten(1).mean(1), would run and average each prediction's error against every target."""
    strategy = fastprune.UCB(8, keep=0.5, seed=0)
    strategy.select(0)
    prediction, targets = torch.zeros(4, 1), torch.ones(4)
    loss = (prediction - targets) ** 2  # what mse_loss(reduction="none") gives, with a warning
    with pytest.raises(ValueError, match=r"e.g. loss.flatten\(1\).mean\(1\); a \[B, B\] loss is usually a \[B, 1\] "
                                         r"prediction broadcast against \[B\] targets: squeeze\(1\) the prediction\), "
                                         r"got shape \(4, 4\)"):
        strategy.update(torch.arange(4), loss)
    with pytest.raises(ValueError, match=r"e.g. loss.flatten\(1\).mean\(1\)\), got shape \(4, 3\)"):
        strategy.update(torch.arange(4), torch.zeros(4, 3))


def test_train_refuses_targets_before_any_work(multi_label_store, tmp_path, capsys):
    checkpoint = tmp_path / "run.pt"
    code = main(["train", "--train", str(multi_label_store), "--val", str(multi_label_store), "--epochs", "1",
                 "--checkpoint", str(checkpoint)])
    assert code != 0 and not checkpoint.exists()
    assert ("its label field 'label' holds arrays of shape (4,) (bool), not class labels; fastprune train and "
            "bench train classifiers") in capsys.readouterr().err


def test_the_guide_anchor_for_other_tasks_exists():
    from pathlib import Path

    from fastprune.loader._source import OTHER_TASKS

    guide = Path(__file__).resolve().parents[1] / OTHER_TASKS.split("#")[0]
    headings = [line.lstrip("#").strip() for line in guide.read_text().splitlines() if line.startswith("## ")]
    slugs = {"-".join("".join(c for c in h.lower() if c.isalnum() or c in " -").split()) for h in headings}
    assert OTHER_TASKS.split("#")[1] in slugs


class _Samples:
    """A map-style dataset of (image, target) pairs; ``target(i)`` makes sample i's."""

    def __init__(self, target, n=N):
        self.target, self.images = target, _images(n, seed=6)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.target(i)


@pytest.mark.parametrize("target, field, expected", [
    (lambda i: i / 3, FloatField(), lambda i: i / 3),
    (lambda i: torch.tensor([i, -i], dtype=torch.float32), NDArrayField(np.float32, (2,)),
     lambda i: np.array([i, -i], np.float32)),
    (lambda i: [i % 2 == 0, i % 3 == 0, False], NDArrayField(np.bool_, (3,)),
     lambda i: np.array([i % 2 == 0, i % 3 == 0, 0], bool)),
    (lambda i: torch.tensor([i / 7, -1.0], dtype=torch.bfloat16), NDArrayField(np.float32, (2,)),
     lambda i: torch.tensor([i / 7, -1.0], dtype=torch.bfloat16).float().numpy()),
], ids=["number", "tensor", "list of booleans", "bfloat16 tensor, as float32"])
def test_from_torch_dataset_stores_targets_as_sample_0s_is(tmp_path, target, field, expected):
    from fastprune.convert import from_torch_dataset

    path = from_torch_dataset(_Samples(target), tmp_path / "t.beton", targets=True, workers=2, progress=False)
    with Store(path) as store:
        assert store.fields["label"] == field and store.class_names is None
    ids, labels = _every_batch(fastprune.Loader(path, 8, seed=0))
    np.testing.assert_array_equal(labels, np.stack([expected(i) for i in ids]))


@pytest.mark.parametrize("target, message", [
    (lambda i: None if i == 3 else 1.0, r"sample 3 of _Samples: target is missing \(None\)"),
    (lambda i: float("nan") if i == 7 else 1.0, r"sample 7 of _Samples: target is not finite \(nan\)"),
    (lambda i: np.zeros(2 if i < 5 else 3), r"sample 5 of _Samples: target has shape \(3,\), sample 0's \(2,\): "
                                            r"every sample's target needs one shape"),
    (lambda i: 1.0 if i < 3 else np.zeros(2), r"sample 3 of _Samples: target has shape \(2,\), sample 0's \(\)"),
    (lambda i: np.zeros(2, np.float32 if i < 5 else np.float64),
     r"sample 5 of _Samples: target is float64, sample 0's float32, which it does not cast to safely"),
    (lambda i: np.zeros(0), r"sample 0 of _Samples: target is empty \(shape \(0,\)\)"),
    (lambda i: "cat", r"sample 0 of _Samples: target must be a number or an array of numbers, got str"),
])
def test_from_torch_dataset_refuses_a_target_naming_its_sample(tmp_path, target, message):
    from fastprune.convert import from_torch_dataset

    out = tmp_path / "bad.beton"
    with pytest.raises(ConversionError, match=message):
        from_torch_dataset(_Samples(target), out, targets=True, workers=1, progress=False)
    assert not out.exists()


def test_from_torch_dataset_says_how_to_store_float_labels(tmp_path):
    from fastprune.convert import from_torch_dataset

    with pytest.raises(ConversionError, match=r"sample 0 of _Samples: label must be an integer, got float 0.0 "
                                              r"\(targets that are not classes, e.g. regression: pass targets=True"):
        from_torch_dataset(_Samples(float), tmp_path / "x.beton", progress=False)
    with pytest.raises(ConversionError, match=r"dataset _Samples: drop_unlabeled \(--drop-unlabeled\) apply to class"):
        from_torch_dataset(_Samples(float), tmp_path / "x.beton", targets=True, drop_unlabeled=True, progress=False)


def test_a_hugging_face_list_column_keeps_its_declared_dtype(tmp_path):
    """datasets reads a list column back as Python numbers: stored as float64/int64, they were
    twice to eight times the bytes of the float32/int8 the column declares."""
    datasets = pytest.importorskip("datasets")
    from fastprune.convert import from_hf_dataset

    values = np.random.default_rng(8).normal(size=(N, 3)).astype(np.float32)
    features = datasets.Features({"image": datasets.Array3D((6, 5, 3), "uint8"),
                                  "y": datasets.Sequence(datasets.Value("float32")),
                                  "t": datasets.Sequence(datasets.Value("int8"), length=3)})
    dataset = datasets.Dataset.from_dict({"image": list(_images()), "y": values.tolist(),
                                          "t": (values * 10).astype(np.int8).tolist()}, features=features)
    for column, dtype, expected in (("y", np.float32, values), ("t", np.int8, (values * 10).astype(np.int8))):
        path = from_hf_dataset(dataset, tmp_path / f"{column}.beton", label_column=column, targets=True,
                               progress=False)
        with Store(path) as store:
            assert store.fields["label"] == NDArrayField(dtype, (3,))
        ids, labels = _every_batch(fastprune.Loader(path, 8, seed=0))
        np.testing.assert_array_equal(labels, expected[ids])


def test_a_hugging_face_float_column_converts_as_targets(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from fastprune.convert import from_hf_dataset

    values = np.random.default_rng(7).normal(size=(N, 2)).astype(np.float32)
    dataset = datasets.Dataset.from_dict({"image": list(_images()), "depth": values.tolist(),
                                          "score": values[:, 0].tolist()})
    path = from_hf_dataset(dataset, tmp_path / "hf.beton", label_column="depth", targets=True, progress=False)
    ids, labels = _every_batch(fastprune.Loader(path, 8, seed=0))
    np.testing.assert_array_equal(labels, values[ids].astype(np.float64))  # from_dict infers float64 from Python floats
    dataset.save_to_disk(tmp_path / "saved")
    out = tmp_path / "cli.beton"
    assert main(["convert", str(tmp_path / "saved"), "-o", str(out), "--columns", "image,score", "--targets",
                 "--no-progress"]) == 0
    ids, labels = _every_batch(fastprune.Loader(out, 8, seed=0))
    np.testing.assert_array_equal(labels, values[ids, 0].astype(np.float64))


def test_describe_stores_and_export_scores_refuse_targets_naming_the_field(multi_label_store, tmp_path):
    from fastprune.prune import export_scores
    from fastprune.train import describe_stores

    with pytest.raises(ConfigError, match=r"ml.beton: its label field 'label' holds arrays of shape \(4,\) \(bool\), "
                                          r"not class labels"):
        describe_stores(multi_label_store, multi_label_store)
    strategy = fastprune.UCB(N, keep=0.5, seed=0)
    strategy.select(0)
    out = tmp_path / "scores.csv"
    with pytest.raises(ConfigError, match=r"its label field 'label' holds arrays of shape \(4,\) \(bool\), not class "
                                          r"labels: report without the store"):
        export_scores(strategy, out, store=multi_label_store)
    assert not out.exists()
    assert export_scores(strategy, out).exists()  # without the store: scores, no labels


def test_an_int_label_field_beside_float_and_array_fields_is_still_chosen(tmp_path):
    """The only integer field (not 'index') is the labels whatever float or array fields sit
    beside it: stores of image + target + weight trained on target before targets existed."""
    rows = [(image, i % 3, i * 0.5, np.full(2, i, np.int16)) for i, image in enumerate(_images())]
    path = write_dataset(tmp_path / "k.beton", rows, {"image": RGBImageField(), "target": IntField(),
                                                     "weight": FloatField(), "feat": NDArrayField(np.int16, (2,))},
                         index_field="index", workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastprune.errors.UsageWarning)
        ids, labels = _every_batch(fastprune.Loader(path, 8, seed=0))
    np.testing.assert_array_equal(labels, ids % 3)


def test_info_shows_targets_not_a_histogram_of_them_or_of_the_ids(tmp_path, capsys):
    from fastprune.store.info import summary

    path = from_arrays(_images(), np.arange(N) * 0.5, tmp_path / "t.beton", targets=True, index=True, progress=False)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "targets:     'label' holds targets, not classes" in out and "\nclasses" not in out  # no histogram
    with Store(path) as store:
        record = summary(store)
        assert record["classes"] is None and record["targets"] == "label" and store.class_names is None
    classes = from_arrays(_images(), np.arange(N) % 2, tmp_path / "c.beton", index=True, class_names=["a", "b"],
                          progress=False)
    with Store(classes) as store:  # the labels, not the ids, whichever field comes first
        assert summary(store)["classes"]["field"] == "label" and store.class_names == ["a", "b"]


@pytest.mark.parametrize("how", ["copy.copy", "pickled beside its store"])
def test_a_copy_of_a_loader_over_a_callers_store_leaves_that_store_open(tmp_path, how):
    import copy
    import pickle

    path = from_arrays(_images(), np.arange(N) % 2, tmp_path / "s.beton", progress=False)
    store = Store(path)
    loader = fastprune.Loader(store, 8, seed=0)
    if how == "copy.copy":
        twin = copy.copy(loader)
    else:
        _, twin = pickle.loads(pickle.dumps((store, loader)))
    twin.close()
    store.check_unchanged()  # still open: the caller's
    assert len(_every_batch(loader)[0]) == N
    store.close()


def test_image_statistics_serve_a_store_of_any_labels(tmp_path):
    """describe_stores refuses targets (it counts classes); a loop of one's own still needs the
    mean and std Normalize takes, computed here without choosing (or warning about) labels."""
    from fastprune.train import describe_stores, image_statistics

    images = _images()
    targets = from_arrays(images, np.arange(N) * 0.5, tmp_path / "t.beton", targets=True, progress=False)
    mean, std = image_statistics(targets)
    pixels = images.reshape(-1, 3) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-9)
    classes = from_arrays(images, np.arange(N) % 2, tmp_path / "c.beton", progress=False)
    spec = describe_stores(classes, classes)
    assert (spec.mean, spec.std) == image_statistics(classes)
    rows = [(image, 1, 2) for image in images]  # two int fields, neither named label: no warning here
    ambiguous = write_dataset(tmp_path / "a.beton", rows, {"image": RGBImageField(), "x": IntField(),
                                                           "y": IntField()}, workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastprune.errors.UsageWarning)
        assert image_statistics(ambiguous) == (mean, std)
