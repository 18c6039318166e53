"""User-facing errors: the CLI prints their message on one line and exits nonzero, without a traceback.

Also the checks that turn a number read from a file or an argument into such an error: JSON gives
strings, nulls, floats and booleans where an integer belongs, and each must be refused by name.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class JrtcError(Exception):
    """A problem with the user's input (checkpoint, engine, prompt, environment) that they can fix."""


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``, else a one-line error naming ``name``.

    Booleans are refused (``True`` is an int to Python, not to a user), and so are integral floats.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise JrtcError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise JrtcError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise JrtcError(f"{name} must be at most {maximum}, got {value}")
    return int(value)


def check_number(name: str, value: Any, minimum: float, open_minimum: bool = False) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` with ``open_minimum``), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise JrtcError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (open_minimum and value == minimum):
        raise JrtcError(f"{name} must be {'>' if open_minimum else '>='} {minimum}, got {value}")
    return float(value)
