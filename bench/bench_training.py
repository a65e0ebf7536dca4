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


def throughput(architectures: tuple[str, ...] = ("mlp", "cnn", "lenet_bn", "cnn_bn", "cnn_deep"),
               images: int = 12_000, batch_size: int = 128) -> dict[str, float]:
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
    """Train the profile's model; record each epoch's time and validation accuracy.

    For an ensemble profile each member's epochs are recorded; the targets are
    judged on what the profile would save at that point: the first model's
    epochs, then the average of the models so far after each further one.
    """
    import keras
    import numpy as np

    from digitops import data, model, profiles

    p = profiles.load(profile)
    epochs = max_epochs or p["epochs"]
    members = int(p.get("ensemble", 1))
    mnist = data.load()
    (xt, yt), (xv, yv) = data.split(mnist.x_train, mnist.y_train, p.get("validation_split", 0.1), p["seed"], p["limit"])
    marks: list[tuple[float, float]] = []  # (seconds, validation accuracy of the model as saved so far)
    member_marks: list[list[tuple[float, float]]] = []
    nets: list[keras.Model] = []
    started = time.perf_counter()

    class Clock(keras.callbacks.Callback):
        """model.train() fits each member with this callback: one train_begin/train_end per member."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            member_marks.append([])

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            mark = (time.perf_counter() - started, float((logs or {}).get("val_accuracy", 0.0)))
            member_marks[-1].append(mark)
            if len(member_marks) == 1:  # until a second model exists, the first one is what would be saved
                marks.append(mark)

        def on_train_end(self, logs: dict | None = None) -> None:
            nets.append(self.model)
            if len(nets) > 1:
                proba = np.mean([model.predict_proba(n, xv) for n in nets], axis=0)
                marks.append((time.perf_counter() - started, float(np.mean(proba.argmax(axis=1) == yv))))
                print(f"  model {len(nets)}/{members}: {marks[-1][0]:.0f} s, validation accuracy of the average "
                      f"so far {marks[-1][1]:.2%}", flush=True)

    trained = model.train(p["architecture"], (xt, yt), (xv, yv), members=members, learning_rate=p["learning_rate"],
                          seed=p["seed"], epochs=epochs, batch_size=p["batch_size"], augment=p.get("augment", False),
                          lr_schedule=p.get("lr_schedule", "constant"), callbacks=[Clock()], progress=False)
    train_seconds = time.perf_counter() - started
    test = model.evaluate(trained.model, mnist.x_test, mnist.y_test)
    members_test = [model.evaluate(n, mnist.x_test, mnist.y_test)["test_accuracy"] for n in nets]
    reached = {f"{t:.3f}": next((s for s, acc in marks if acc >= t), None) for t in TARGETS}
    return {"profile": profile, "params": p, "epochs": epochs, "members": members, "epoch_marks": marks,
            "member_epoch_marks": member_marks, "members_test_accuracy": members_test,
            "train_seconds": train_seconds, "test_accuracy": test["test_accuracy"],
            "seconds_to_val_accuracy": reached, "cpu_count": os.cpu_count()}


def table(tp: dict[str, float] | None, tta: dict[str, Any] | None) -> str:
    lines = []
    if tp:
        lines.append("training throughput (images/s, one epoch after warm-up)")
        lines += [f"  {arch:<8} {ips:9.0f}" for arch, ips in tp.items()]
    if tta:
        shape = f"{tta['members']} models x {tta['epochs']} epochs" if tta.get("members", 1) > 1 else f"{tta['epochs']} epochs"
        lines.append(f"profile {tta['profile']}: {shape} in {tta['train_seconds']:.0f} s, "
                     f"test accuracy {tta['test_accuracy']:.2%}")
        if tta.get("members", 1) > 1:
            lines.append("  members' own test accuracy: " + ", ".join(f"{a:.2%}" for a in tta["members_test_accuracy"]))
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
