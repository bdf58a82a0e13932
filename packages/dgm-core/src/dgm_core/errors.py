"""The one exception type that means "the user asked for something impossible"."""


class UserError(Exception):
    """A mistake in the user's input (flags, config, files) rather than a bug.

    CLIs built with :func:`dgm_core.cli.run` print these as one line
    (``prog: error: message``) and exit with status 2, without a traceback.
    The message should name the offending value and, where possible, the fix.
    """
