"""Printing results for scripts: JSON that every JSON reader accepts."""
import json
import math


def to_json(obj, **dumps_options):
    """json.dumps with NaN/inf written as null (bare NaN is not JSON; jq and browsers reject it)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), **dumps_options)
