"""The errors a user can cause, and only those.

Every failure that comes from user input (a bad file, a bad config, a bad
checkpoint, a bad prompt) raises an ``LMCoreError`` subclass whose message is
one line that says what went wrong and what to do. The app shows the message
with ``st.error``; the CLI prints it to stderr and exits with status 2.
Programming errors stay ordinary exceptions (and asserts) so tests see them.
"""


class LMCoreError(Exception):
    """Base class of every error a user can cause; the message is one line."""


class DataError(LMCoreError):
    """A corpus that cannot be used: missing, empty, binary, too short or too big."""


class TokenizerError(LMCoreError):
    """Text that a tokenizer cannot encode, or a tokenizer that cannot be built."""


class ConfigError(LMCoreError):
    """A model, training or sampling setting that is impossible or inconsistent.

    ``field``: the config field to change (None when no one field is to blame);
    ``fields``: every field the message names, ``field`` first. A page shows
    them by their labels and suggests a value without reading the message.
    """

    def __init__(self, message: str, field: str | None = None, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.fields = tuple(dict.fromkeys(((field,) if field else ()) + tuple(fields)))

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.field, self.fields))


class CheckpointError(LMCoreError):
    """A checkpoint file that is missing, malformed, hostile or inconsistent."""


class TrainingError(LMCoreError):
    """A training run that cannot go on (NaN loss, out of memory, no data)."""
