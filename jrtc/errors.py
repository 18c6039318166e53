"""User-facing errors: the CLI prints their message on one line and exits nonzero, without a traceback."""


class JrtcError(Exception):
    """A problem with the user's input (checkpoint, engine, prompt, environment) that they can fix."""
