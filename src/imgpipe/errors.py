"""Errors a user can fix: each message names what is wrong and how to fix it."""


class PipelineError(Exception):
    """Base class: a stage prints the message on one line and exits with status 2."""


class ParamsError(PipelineError):
    """A key of params.yaml is missing, unknown, of the wrong type or out of range."""


class DataError(PipelineError):
    """The dataset cannot be used as it is (too few classes or images, bad manifest)."""


class BackboneError(PipelineError):
    """The backbone cannot be built or its weights cannot be loaded."""
