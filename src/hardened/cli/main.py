"""The ``hardened`` command: one module per command group; parse, call the API, render."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from hardened.errors import HardenedError


class _HardenedGroup(TyperGroup):
    """Turns the library's errors into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except HardenedError as error:
            message = " ".join(str(error).split())
            typer.echo(f"error: {message} [{type(error).__name__}]", err=True)
            raise typer.Exit(code=2) from None


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


_register()


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
