"""The one exception type for errors a user can cause and fix."""


class UserError(ValueError):
    """Bad input, missing data, a bad flag: the CLI prints the message on one line and exits 2.

    A ValueError, so that code using mnistlab as a library can catch it as the usual exception
    for a bad value.
    """
