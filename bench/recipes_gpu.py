"""Recipe search for the training profiles, run once on a borrowed GPU machine.

Trains the same Keras models as digitops.model (JAX backend there, since that
machine has no TensorFlow) for several recipes in parallel and records each
epoch's validation accuracy and the final test accuracy. It only ranks
recipes; the chosen profiles are then timed and scored on 2 CPU cores with
TensorFlow by bench_training.py.

    python bench/recipes_gpu.py --data DIR_WITH_IDX_GZ --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPES = {
    # first search (cnn_bn is ~8x the classic CNN's work: too slow for 4 min on 2 CPU cores)
    "cnn-const-12": dict(architecture="cnn", epochs=12, lr=1e-3, augment=False, schedule="constant", batch=128),
    "bn-const-12": dict(architecture="cnn_bn", epochs=12, lr=1e-3, augment=False, schedule="constant", batch=128),
    "bn-cos-5": dict(architecture="cnn_bn", epochs=5, lr=2e-3, augment=False, schedule="cosine", batch=128),
    # second search: the CPU-cheap lenet_bn
    "lenet-cos-3": dict(architecture="lenet_bn", epochs=3, lr=2e-3, augment=False, schedule="cosine", batch=128),
    "lenet-cos-4": dict(architecture="lenet_bn", epochs=4, lr=2e-3, augment=False, schedule="cosine", batch=128),
    "lenet-cos-5": dict(architecture="lenet_bn", epochs=5, lr=2e-3, augment=False, schedule="cosine", batch=128),
    "lenet-cos-4-s1": dict(architecture="lenet_bn", epochs=4, lr=2e-3, augment=False, schedule="cosine", batch=128, seed=1),
    "lenet-cos-6-b256": dict(architecture="lenet_bn", epochs=6, lr=3e-3, augment=False, schedule="cosine", batch=256),
    "lenet-cos-8": dict(architecture="lenet_bn", epochs=8, lr=2e-3, augment=False, schedule="cosine", batch=128),
    "bn-aug-cos-15": dict(architecture="cnn_bn", epochs=15, lr=2e-3, augment=True, schedule="cosine", batch=128),
}


def train_one(name: str, data_dir: str) -> dict:
    import numpy as np
    import keras

    from digitops import data, model

    r = RECIPES[name]
    seed = r.get("seed", 0)
    data.fetch(from_dir=data_dir, use_npm=False, use_keras=False)
    mnist = data.load()
    (xt, yt), (xv, yv) = data.split(mnist.x_train, mnist.y_train, 0.1, seed, 0)
    net = model.build(r["architecture"], learning_rate=r["lr"], seed=seed)
    trainer = net
    if r["augment"]:
        trainer = keras.Sequential([keras.Input(model.INPUT_SHAPE), model._augmenter(seed), net])
        trainer.compile(optimizer=keras.optimizers.Adam(r["lr"]), loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
    epochs = r["epochs"]
    cbs = []
    if r["schedule"] == "cosine":
        cbs.append(keras.callbacks.LearningRateScheduler(
            lambda e: r["lr"] * 0.5 * (1 + np.cos(np.pi * e / epochs))))
    val_acc = []

    class Val(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            val_acc.append(float(model.evaluate(net, xv, yv)["test_accuracy"]))

    started = time.time()
    trainer.fit(model.as_input(xt), yt.astype("int64"), epochs=epochs, batch_size=r["batch"],
                callbacks=[*cbs, Val()], verbose=0)
    test = model.evaluate(net, mnist.x_test, mnist.y_test)
    return {"recipe": name, **r, "val_accuracy": val_acc, "test_accuracy": test["test_accuracy"],
            "seconds": time.time() - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--one")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--only", help="comma-separated recipe names")
    ns = ap.parse_args()
    if ns.one:
        print(json.dumps(train_one(ns.one, ns.data)))
        return

    def launch(name: str) -> dict:
        env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
               "DIGITOPS_CACHE": f"/tmp/digitops-cache-{name}"}
        proc = subprocess.run([sys.executable, __file__, "--data", ns.data, "--out", ns.out, "--one", name],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"recipe": name, "error": proc.stderr[-1500:]}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: test {result['test_accuracy']:.4f} in {result['seconds']:.0f} s", flush=True)
        return result

    names = ns.only.split(",") if ns.only else list(RECIPES)
    with ThreadPoolExecutor(ns.parallel) as pool:
        results = list(pool.map(launch, names))
    Path(ns.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
