"""The ``digitops`` command line: one subcommand per stage, shared by CI, the Makefile and people."""

from __future__ import annotations

import importlib
import sys

import click

from digitops import __version__
from digitops.errors import EXIT_ERROR, DigitopsError


class DigitopsGroup(click.Group):
    """The ``digitops`` group: the one place where errors become output and exit codes.

    A :class:`~digitops.errors.DigitopsError` from any subcommand prints
    ``Error: <message>`` on stderr (no traceback) and exits with the class's
    ``exit_code`` (see :mod:`digitops.errors`); a file-system error on our
    folders prints one line naming the path and exits 2.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DigitopsError as exc:
            for line in describe_error(exc):
                click.secho(line, fg="red", err=True) if line.startswith("Error") else click.echo(line, err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            click.secho(f"Error: {describe_os_error(exc)}", fg="red", err=True)
            ctx.exit(EXIT_ERROR)


def describe_error(exc: DigitopsError) -> list[str]:
    """The lines shown for ``exc``: ``Error: <message>``, or what a failed notebook left behind."""
    from digitops.runner import StageFailed

    if not isinstance(exc, StageFailed):
        return [f"Error: {exc}"]
    res = exc.result
    if res.interrupted:
        html = f"; HTML of what ran: {res.html}" if res.html else ""
        return [f"Error: {res.stage} interrupted ({res.interrupted}): run {res.run_id} marked failed{html}"]
    lines = [f"Error: {res.stage} notebook failed at {res.error}", f"  executed notebook: {res.notebook}"]
    if res.html:
        lines.append(f"  HTML (shows the failing cell): {res.html}")
    return lines


@click.group(cls=DigitopsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="digitops")
@click.option(
    "--offline", is_flag=True, envvar="DIGITOPS_COMET_OFFLINE",
    help="With COMET_API_KEY set: keep Comet data in local offline archives (upload later with `digitops sync`).",
)
@click.option(
    "--verbose", is_flag=True,
    help="Show TensorFlow's and Jupyter's own logging too (same as DIGITOPS_LOG_LEVEL=debug).",
)
def cli(offline: bool, verbose: bool) -> None:
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
    if verbose:
        from digitops import quiet

        quiet.set_verbose()
    if offline:
        from digitops import comet_env

        comet_env.force_offline()


#: Modules under digitops.cli, one per command (group) and named after it, each exposing ``COMMANDS``.
COMMAND_MODULES = (
    "data", "params", "run", "pipeline", "runs", "compare", "report", "registry", "publish", "sync", "comet",
    "dashboard", "doctor", "feedback",
)


def _add_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"digitops.cli.{name}")
        for command in module.COMMANDS:
            cli.add_command(command)


_add_commands()


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error on our folders: which path, what is wrong, what to do."""
    import errno

    where = exc.filename or "a file"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make it writable, or point DIGITOPS_HOME / DIGITOPS_RUNS / DIGITOPS_CACHE at a writable folder"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        hint = "a file is where a folder is expected (or the reverse): move it aside"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some disk space and run the command again"
    else:
        hint = "check the path"
    return f"cannot use {where}: {what}; {hint}"


def main() -> None:
    """Console entry point (errors and exit codes: :class:`DigitopsGroup`)."""
    sys.exit(cli.main(standalone_mode=True))
