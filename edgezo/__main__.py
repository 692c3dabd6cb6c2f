"""``python -m edgezo`` runs the CLI."""

from edgezo.cli import main

main()
