"""The one exception type for bad input.

Library code raises `UserError` for anything the user can fix (a wrong path, a malformed file, a bad
flag). The CLI prints its message on one line, without a traceback, and exits with status 2. Every
message names the input and says what to do.
"""


class UserError(Exception):
    """Bad input from the user; the message names the input and the fix."""
