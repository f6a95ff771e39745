"""``python -m hardened`` (and ``torchrun -m hardened``) runs the command line."""

from hardened.cli.main import main

main()
