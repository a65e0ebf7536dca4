"""The ``digitops`` command line: one subcommand per stage, shared by CI, the Makefile and people."""

from __future__ import annotations

import importlib
import sys

import click

from digitops import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="digitops")
@click.option(
    "--offline", is_flag=True, envvar="DIGITOPS_COMET_OFFLINE",
    help="With COMET_API_KEY set: keep Comet data in local offline archives (upload later with `digitops sync`).",
)
def cli(offline: bool) -> None:
    """Notebook-first MLOps for a handwritten-digit recogniser.

    \b
    Typical flow:
      digitops data fetch                 # verified MNIST into ~/.cache/digitops
      digitops pipeline --profile quick   # train -> evaluate -> compare -> report -> register
      digitops registry list              # versions and their status
      digitops dashboard                  # draw a digit, see the production model's guess

    Runs are tracked in .digitops/ (SQLite) unless COMET_API_KEY is set; reports
    are published to GitLab when GITLAB_TOKEN is set.
    """
    if offline:
        from digitops import comet_env

        comet_env.force_offline()


#: Modules under digitops.cli, one per area, each exposing ``COMMANDS``.
COMMAND_MODULES = ("run", "pipeline", "tracking", "registry", "publish", "comet", "dashboard", "doctor")


def _add_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"digitops.cli.{name}")
        for command in module.COMMANDS:
            cli.add_command(command)


_add_commands()


def main() -> None:
    """Console entry point."""
    sys.exit(cli.main(standalone_mode=True))
