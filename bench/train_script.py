"""Baseline for the notebook-overhead benchmark: the training notebook's work as a plain script.

The same calls as notebooks/train.ipynb with the same parameters (data, split,
field mix, sample strip, model summary, training with the text progress bars,
curves, model file, metrics), writing what a script user would get: the two
figures as PNG files, the model and metrics.json. Not done here, because they
are the notebook path's own costs: the kernel, papermill, the HTML page and the
tracker's writes. Prints one JSON line with the time each phase ended
(``time.time()``), so the benchmark can set the phases side by side.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: they are part of what a script costs

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("DIGITOPS_PROGRESS", "text")  # the bars the runner asks of its kernels

from digitops import data, model, plots  # noqa: E402
from digitops.feedback import dataset as field_data  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--architecture", default="cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=0.001)
    ap.add_argument("--validation-split", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    marks = {"started": STARTED, "imported": time.time()}
    args.out.mkdir(parents=True, exist_ok=True)
    mnist = data.load()
    (x_train, y_train), (x_val, y_val) = data.split(mnist.x_train, mnist.y_train, args.validation_split, args.seed,
                                                    args.limit)
    x_train, y_train, _ = field_data.mix_into_training(x_train, y_train, 0.0)
    print(f"{len(x_train):,} training and {len(x_val):,} validation images (dataset {mnist.checksum})")
    plots.samples(x_train, y_train).savefig(args.out / "samples.png")
    model.build(args.architecture, learning_rate=args.learning_rate, seed=args.seed).summary()
    marks["prepared"] = time.time()
    started, cpu_started = time.perf_counter(), time.process_time()
    trained = model.train(args.architecture, (x_train, y_train), (x_val, y_val), learning_rate=args.learning_rate,
                          seed=args.seed, epochs=args.epochs, batch_size=args.batch_size)
    net, history = trained.model, trained.history
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    marks["trained"] = time.time()
    plots.training_curves(history, args.out / "curves.png", trained.member_epochs)
    model.save(net, args.out / "model.keras")
    final = {"train_seconds": train_seconds, "epochs_run": len(history["loss"]), "train_images": len(x_train),
             **trained.final}
    (args.out / "metrics.json").write_text(json.dumps({"metrics": final, "history": history,
                                                       "train_cpu_seconds": train_cpu_seconds}))
    marks["saved"] = time.time()
    print("MARKS " + json.dumps(marks))


if __name__ == "__main__":
    sys.exit(main())
