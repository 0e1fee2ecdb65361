"""The error a training run stops with; its own module so that every layer of training can raise it."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""
