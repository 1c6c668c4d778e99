"""``python -m graphopt`` runs the CLI."""

from graphopt.cli import run

run()
