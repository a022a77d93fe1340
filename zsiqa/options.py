"""Checks of the API's plain options (integers in range, flags, seeds): one rule each, so the
Scorer, the loss and the command line refuse the same values with the same words."""
import numbers

from zsiqa.errors import UserError


def is_integer(x):
    """A Python or numpy integer (a bool is not one here)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def int_option(value, name, minimum, default, below=None, below_text=None):
    """An integer API option in [minimum, below) (None: the default).

    Args:
        value: what the caller gave. name: the parameter's name, for the message.
        minimum: the smallest value taken. default: returned for None.
        below: the first value refused above the range (None: no upper bound); below_text
            says it in words (e.g. '2**63').

    Returns:
        int. Raises UserError naming the parameter for floats, bools, strings and values out
        of range.
    """
    if value is None:
        return default
    if not is_integer(value) or value < minimum:
        raise UserError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    if below is not None and value >= below:
        raise UserError(f"{name} must be below {below_text or below}, got {value}")
    return int(value)


MAX_RESIZE = 16384  # the square resize's largest side: 268 Mpx, past which no scored image lies


def resize_option(value):
    """The square resize's side N (None: off): an integer in [224, MAX_RESIZE]."""
    return int_option(value, "resize", 224, None, below=MAX_RESIZE + 1, below_text=f"{MAX_RESIZE + 1}")


MAX_WORKERS = 64  # image-decoding processes: more only forks memory away (100,000 exhausted a 23 GB machine)


def seed_option(value):
    """The SWD seed (default 0): an integer in [0, 2**63), what torch.Generator takes."""
    return int_option(value, "swd_seed", 0, 0, below=2**63, below_text="2**63")


def bool_option(value, name):
    """A True/False API option; anything else (1, 'yes', None) is refused by name."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be True or False, got {value!r}")
    return value
