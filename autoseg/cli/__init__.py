"""The `autoseg` command line: parse, call the stage's function in autoseg.api (one way to run a stage), print.

Heavy imports (torch, SimpleITK) happen inside the commands so `autoseg --help` is instant.
Any AutosegError becomes one line on stderr and exit code 1; `--debug` shows the traceback.
Each module below registers its commands on the one Typer app of autoseg.cli.common.
"""

# Imported for their side effect, in the order `autoseg --help` lists the commands: the pipeline's order.
from autoseg.cli import data  # noqa: F401
from autoseg.cli import training  # noqa: F401
from autoseg.cli import results  # noqa: F401
from autoseg.cli import prediction  # noqa: F401
from autoseg.cli import models  # noqa: F401
from autoseg.cli.common import app

__all__ = ["app"]
