"""``python -m edgezo`` runs the CLI."""

from edgezo.app.cli import main

main()
