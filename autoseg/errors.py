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
