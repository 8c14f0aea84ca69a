"""`python -m autoseg.cli` (torchrun starts its ranks this way)."""

from autoseg.cli import app

app()
