"""``python -m auditgame`` runs the command line."""

from auditgame.cli import app

app()
