"""Model builders, seeded training, evaluation and .keras round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitops import data, model


@pytest.mark.parametrize("name", sorted(model.ARCHITECTURES))
def test_every_architecture_maps_raw_pixels_to_probabilities(name: str) -> None:
    net = model.build(name, seed=0)
    out = np.asarray(net.predict_on_batch(model.as_input(np.full((2, 28, 28), 255, np.uint8))))
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_architecture_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'; choose one of: cnn, cnn_bn, cnn_deep, lenet_bn, mlp"):
        model.build("resnet")


def test_as_input_shapes_and_rejects_wrong_sizes() -> None:
    assert model.as_input(np.zeros((28, 28), np.uint8)).shape == (1, 28, 28, 1)
    assert model.as_input(np.zeros((3, 28, 28), np.uint8)).dtype == np.float32
    with pytest.raises(ValueError, match="expected images of shape"):
        model.as_input(np.zeros((3, 32, 32)))


@pytest.mark.slow
def test_same_seed_same_weights_and_a_saved_model_predicts_the_same(tmp_path: Path) -> None:
    mnist = data.load()
    (xt, yt), (xv, yv) = data.split(mnist.x_train, mnist.y_train, 0.1, seed=0, limit=600)
    runs = []
    for _ in range(2):
        net = model.build("mlp", seed=3)
        history = model.fit(net, (xt, yt), (xv, yv), epochs=1, batch_size=64, seed=3, progress=False)
        runs.append((net, history))
    assert runs[0][1] == runs[1][1], "same seed, same history"
    for a, b in zip(runs[0][0].get_weights(), runs[1][0].get_weights()):
        np.testing.assert_array_equal(a, b)
    path = model.save(runs[0][0], tmp_path / "m.keras")
    x = mnist.x_test[:50]
    np.testing.assert_allclose(model.predict_proba(model.load(path), x), model.predict_proba(runs[0][0], x), rtol=1e-5)
    scores = model.evaluate(runs[0][0], x, mnist.y_test[:50])
    assert 0 <= scores["test_accuracy"] <= 1 and scores["probabilities"].shape == (50, 10)


def test_save_requires_keras_suffix_and_load_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".keras"):
        model.save(model.build("mlp"), tmp_path / "m.h5")
    with pytest.raises(FileNotFoundError, match="no model file"):
        model.load(tmp_path / "missing.keras")


@pytest.mark.slow
def test_augmented_cosine_training_runs_and_lowers_the_learning_rate() -> None:
    mnist = data.load()
    x, y = data.subset(mnist.x_train, mnist.y_train, 400, seed=0)
    net = model.build("lenet_bn", learning_rate=0.002, seed=0)
    history = model.fit(net, (x, y), epochs=2, batch_size=100, augment=True, lr_schedule="cosine", progress=False)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert float(net.optimizer.learning_rate.numpy()) < 0.002  # cosine: epoch 2 runs below the base rate
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        model.fit(net, (x, y), epochs=1, lr_schedule="step", progress=False)


@pytest.mark.slow
def test_an_ensemble_averages_its_members_and_saves_as_one_model(tmp_path: Path) -> None:
    mnist = data.load()
    (xt, yt), (xv, yv) = data.split(mnist.x_train, mnist.y_train, 0.1, seed=0, limit=600)
    trained = model.train("mlp", (xt, yt), (xv, yv), members=3, learning_rate=0.002, seed=5, epochs=2,
                          batch_size=64, progress=False)
    assert trained.model.name == "mlp_x3" and trained.member_epochs == [2, 2, 2]
    assert len(trained.history["loss"]) == 6 and len(trained.history["val_accuracy"]) == 6
    members = [layer for layer in trained.model.layers if isinstance(layer, model.keras.Model)]
    assert [m.name for m in members] == ["mlp_1", "mlp_2", "mlp_3"]
    x = mnist.x_test[:64]
    each = [model.predict_proba(m, x) for m in members]
    assert not np.allclose(each[0], each[1]), "members are seeded differently"
    np.testing.assert_allclose(model.predict_proba(trained.model, x), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    reloaded = model.load(model.save(trained.model, tmp_path / "ens.keras"))
    np.testing.assert_allclose(model.predict_proba(reloaded, x), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    # member 1 of the ensemble is the single model trained with the same seed
    single = model.train("mlp", (xt, yt), (xv, yv), members=1, learning_rate=0.002, seed=5, epochs=2,
                         batch_size=64, progress=False)
    assert single.model.name == "mlp" and single.history["loss"] == trained.history["loss"][:2]
    with pytest.raises(ValueError, match="members must be at least 1"):
        model.train("mlp", (xt, yt), members=0)
