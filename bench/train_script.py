"""Baseline for the notebook-overhead benchmark: the training notebook's work as a plain script.

Same calls as notebooks/train.ipynb (data, split, train, save, curves),
without papermill, nbconvert or tracking.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from digitops import data, model, plots


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--architecture", default="cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    mnist = data.load()
    (x_train, y_train), (x_val, y_val) = data.split(mnist.x_train, mnist.y_train, 0.1, args.seed, args.limit)
    started = time.perf_counter()
    trained = model.train(args.architecture, (x_train, y_train), (x_val, y_val), seed=args.seed, epochs=args.epochs,
                          batch_size=args.batch_size, progress=False)
    net, history = trained.model, trained.history
    train_seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(net, args.out / "model.keras")
    plots.training_curves(history, args.out / "curves.png")
    (args.out / "metrics.json").write_text(json.dumps({"history": history, "train_seconds": train_seconds}))
    print(json.dumps({"train_seconds": train_seconds, "val_accuracy": history["val_accuracy"][-1]}))


if __name__ == "__main__":
    sys.exit(main())
