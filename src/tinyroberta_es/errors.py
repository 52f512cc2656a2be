"""The one exception type for bad input.

Library code raises `UserError` for anything the user can fix (a wrong path, a malformed file, a bad
flag). The CLI prints its message on one line, without a traceback, and exits with status 2. Every
message names the input and says what to do.

`ModelOutputError` is the `UserError` of a model whose outputs cannot be used (NaN or infinite logits): the
fix is the user's (the checkpoint, the export or the precision), so the CLI prints it the same way.
"""


class UserError(Exception):
    """Bad input from the user; the message names the input and the fix."""


class ModelOutputError(UserError):
    """The model gave unusable outputs (NaN or infinite logits); the message names the model and the fix."""
