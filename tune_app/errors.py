"""The one exception type for user mistakes.

Anything a user can fix (a bad YAML key, a missing data directory, a search space with an empty
value list) raises :class:`UserError`. The CLI catches it once, prints its message as a single line
and exits with code 2; a traceback means a bug in tune_app, not in the user's input.
"""


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the "one clear line" contract.
        super().__init__(" ".join(str(message).split()))
