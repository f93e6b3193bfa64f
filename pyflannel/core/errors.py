"""Error types shared by the core and the adapters.

Every error that reaches an operator is one line naming the thing and the value, so
callers can log ``str(err)`` and nothing else.
"""


class FlannelError(Exception):
    """Base of every error pyflannel raises on purpose."""


class ConfigError(FlannelError, ValueError):
    """The network config (``<prefix>/config``) is missing, malformed or invalid."""


class LeaseFormatError(FlannelError, ValueError):
    """A lease key or value in etcd cannot be parsed."""


class SubnetEnvError(FlannelError, ValueError):
    """The subnet file (``subnet.env``) cannot be parsed."""


class OutOfSubnets(FlannelError):
    """No free subnet is left between SubnetMin and SubnetMax."""

    def __init__(self) -> None:
        super().__init__("out of subnets")


class FlagError(FlannelError, ValueError):
    """A command-line flag or FLANNELD_* variable has an invalid value."""


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages about outside input.

    A lease, a key or a config field can be a megabyte long or nested a thousand levels deep;
    the message that names it must stay one short line.
    """
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply>"
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str | bytes) else f"{len(text)} characters as text"
    return f"{text[: limit - 20]}... ({size})"


def shorten_json(value: object, limit: int = 80) -> str:
    """``value`` as compact JSON (how an operator wrote it), cut like :func:`shorten`."""
    import json

    try:
        text = json.dumps(value)
    except (RecursionError, TypeError, ValueError):
        return shorten(value, limit)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} characters as JSON)"
