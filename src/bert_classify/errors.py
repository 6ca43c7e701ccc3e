"""The one exception type for mistakes a user can cause (bad file, bad flag, bad request).

The CLI prints its message without a traceback and exits with status 2.
"""

from __future__ import annotations


class BertClassifyError(Exception):
    """A user-fixable error. The message names the file, line or field and says what would fix it."""


class DataError(BertClassifyError):
    """Bad input data: the message names the file and line."""


class ConfigError(BertClassifyError):
    """An invalid option or combination of options: the message names the flag to change."""


class CheckpointError(BertClassifyError):
    """A checkpoint that cannot be resumed from (changed configuration, corrupt files)."""


class TrainingError(BertClassifyError):
    """Training cannot go on (a non-finite loss, a full disk): the message says what is kept and what to change."""
