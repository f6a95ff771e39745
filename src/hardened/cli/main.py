"""The ``hardened`` command: one module per command group; parse, call the API, render."""

from __future__ import annotations

import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from hardened.errors import HardenedError, HardenedWarning

# typer vendors click privately; BadParameter is public and its base is click's UsageError
_UsageError: type[typer.TyperException] = typer.BadParameter.__mro__[1]


def _fail(message: str, kind: str) -> typer.Exit:
    """Print ``error: MESSAGE [KIND]`` as one line on stderr; the exit (code 2) to raise."""
    typer.echo(f"error: {' '.join(message.split())} [{kind}]", err=True)
    return typer.Exit(code=2)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """The library's own warnings as one line ``warning: MESSAGE`` on stderr; others as Python shows them."""
    if issubclass(category, HardenedWarning):
        typer.echo(f"warning: {' '.join(str(message).split())}", err=True)
    else:
        warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, *args, **kwargs))  # type: ignore[attr-defined]


class _HardenedGroup(TyperGroup):
    """Turns the library's errors and the option parser's usage errors into one line on stderr
    and exit code 2, with no traceback and no usage box."""

    def invoke(self, ctx: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except HardenedError as error:
            raise _fail(str(error), type(error).__name__) from None
        except _UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
                raise
            failed = getattr(error, "ctx", None) or ctx  # the (sub)command whose options were wrong
            where = failed.command_path
            raise _fail(f"{error.format_message().rstrip('.')}; see '{where} --help'", "UsageError") from None


app = typer.Typer(
    cls=_HardenedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Attack, explain, defend, certify and guard PyTorch image classifiers.",
)


def _register() -> None:
    from hardened.cli import attack, audit, certify, evaluate, train

    app.command("train")(train.train_command)
    app.command("defend-compare")(train.compare_command)
    app.command("attack")(attack.attack_command)
    app.command("evaluate")(evaluate.evaluate_command)
    app.command("audit")(audit.audit_command)
    app.command("certify")(certify.certify_command)

    from hardened.cli import benchmark_attacks, explain

    app.command("explain")(explain.explain_command)
    app.command("benchmark-attacks")(benchmark_attacks.benchmark_attacks_command)

    from hardened.cli.guard import guard_app

    app.add_typer(guard_app, name="guard")

    from hardened.cli import serve

    app.command("serve")(serve.serve_command)
    app.command("predict")(serve.predict_command)


_register()


def main() -> None:
    """Console entry point: glibc keeps freed memory (``hardened._util.allocator``: a LeNet
    forward 1.38x, forward and backward 1.13x faster on CPU, benchmarks/allocator.py), then the
    command."""
    from hardened._util.allocator import keep_freed_memory

    keep_freed_memory()
    app()


if __name__ == "__main__":
    main()
