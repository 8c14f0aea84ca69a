"""The project's exceptions. The CLI turns any AutosegError into a one-line message and exit code 1."""


class AutosegError(Exception):
    """Base class: the message says what is wrong, where (case, file, field) and what to do."""


class DatasetError(AutosegError):
    """A dataset folder, dataset.json or an image file is unusable."""


class ImageReadError(DatasetError):
    """An image or label file cannot be read."""


class PlanError(AutosegError):
    """A plans.json is missing, stale or has an invalid field."""


class CheckpointError(AutosegError):
    """A checkpoint is missing, truncated or belongs to another plan."""


class WorkspaceError(AutosegError):
    """The workspace lacks an artifact a stage needs (e.g. no task planned yet)."""


class BundleError(AutosegError):
    """A model bundle is not a zip file, is unsafe to unpack, or does not match its manifest."""


class BudgetTooSmall(PlanError):
    """Not even the cheapest network and schedule of a configuration trains one fold within the budget."""

    def __init__(self, message: str, configuration: str, minimum_seconds: float, device: str, precision: str):
        super().__init__(message)
        self.configuration = configuration
        self.minimum_seconds = minimum_seconds
        self.device = device
        self.precision = precision


class BackgroundWorkerError(AutosegError):
    """A data-loading worker raised or died; the message holds its own error and traceback."""
