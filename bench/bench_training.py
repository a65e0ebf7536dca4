"""Training throughput per architecture, and time to reach validation-accuracy targets.

Throughput: images per second over one timed epoch after a warm-up epoch
(graph tracing excluded). Time to accuracy: a profile's training with the
wall time and validation accuracy of every epoch, and the first time each
target (99.0 / 99.3 / 99.5 %) is reached.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

TARGETS = (0.990, 0.993, 0.995)


def throughput(architectures: tuple[str, ...] = ("mlp", "cnn", "lenet_bn", "cnn_bn"), images: int = 12_000,
               batch_size: int = 128) -> dict[str, float]:
    """Images per second for one epoch of each architecture."""
    import keras

    from digitops import data, model

    mnist = data.load()
    x, y = data.subset(mnist.x_train, mnist.y_train, images, 0)
    out = {}
    for arch in architectures:
        net = model.build(arch, seed=0)
        model.fit(net, (x[:2000], y[:2000]), epochs=1, batch_size=batch_size, progress=False)  # warm-up
        started = time.perf_counter()
        model.fit(net, (x, y), epochs=1, batch_size=batch_size, progress=False)
        out[arch] = len(x) / (time.perf_counter() - started)
        keras.backend.clear_session()
    return out


def time_to_accuracy(profile: str = "ci", max_epochs: int | None = None) -> dict[str, Any]:
    """Train the profile's model; record each epoch's time and validation accuracy."""
    import keras

    from digitops import data, model, profiles

    p = profiles.load(profile)
    epochs = max_epochs or p["epochs"]
    mnist = data.load()
    (xt, yt), (xv, yv) = data.split(mnist.x_train, mnist.y_train, p.get("validation_split", 0.1), p["seed"], p["limit"])
    net = model.build(p["architecture"], learning_rate=p["learning_rate"], seed=p["seed"])
    marks: list[tuple[float, float]] = []
    started = time.perf_counter()

    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            marks.append((time.perf_counter() - started, float((logs or {}).get("val_accuracy", 0.0))))

    model.fit(net, (xt, yt), (xv, yv), epochs=epochs, batch_size=p["batch_size"], seed=p["seed"],
              augment=p.get("augment", False), lr_schedule=p.get("lr_schedule", "constant"),
              callbacks=[Clock()], progress=False)
    train_seconds = time.perf_counter() - started
    test = model.evaluate(net, mnist.x_test, mnist.y_test)
    reached = {f"{t:.3f}": next((s for s, acc in marks if acc >= t), None) for t in TARGETS}
    return {"profile": profile, "params": p, "epochs": epochs, "epoch_marks": marks,
            "train_seconds": train_seconds, "test_accuracy": test["test_accuracy"],
            "seconds_to_val_accuracy": reached, "cpu_count": os.cpu_count()}


def table(tp: dict[str, float] | None, tta: dict[str, Any] | None) -> str:
    lines = []
    if tp:
        lines.append("training throughput (images/s, one epoch after warm-up)")
        lines += [f"  {arch:<8} {ips:9.0f}" for arch, ips in tp.items()]
    if tta:
        lines.append(f"profile {tta['profile']}: {tta['epochs']} epochs in {tta['train_seconds']:.0f} s, "
                     f"test accuracy {tta['test_accuracy']:.2%}")
        for target, secs in tta["seconds_to_val_accuracy"].items():
            shown = f"{secs:.0f} s" if secs is not None else "not reached"
            lines.append(f"  val accuracy >= {float(target):.1%}: {shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--skip-throughput", action="store_true")
    ns = ap.parse_args()
    tp = None if ns.skip_throughput else throughput()
    print(table(tp, time_to_accuracy(ns.profile)))
