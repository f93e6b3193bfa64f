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
