"""Errors that reach the user as one line (``run.py`` prints them and exits non-zero)."""


class HarnessError(Exception):
    """A problem the user can fix; the message names the fix."""


class ConfigError(HarnessError):
    """Bad configuration: unknown name, out-of-range parameter, missing path."""


class BudgetViolation(AssertionError):
    """The cache held more tokens than the policy's budget after a step (an engine bug, never user error)."""
