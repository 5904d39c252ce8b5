"""The one exception type for errors a user can cause and fix."""


class UserError(Exception):
    """Bad input, missing data, a bad flag: the CLI prints the message on one line and exits 2."""
