"""Import pyroute2's IPRoute without the ~40 modules its package ``__init__`` pulls in.

``import pyroute2`` loads NDB, IPDB, conntrack, ipset, nl80211, wireguard and more, about
45 ms of a daemon start that is mostly imports (bench/README.md, join to ready). The daemon
needs only ``pyroute2.iproute.linux``. So, when nothing has imported pyroute2 yet, the
package is registered as a bare module with the real search path, and only the needed
submodules load. The bare module carries a ``__getattr__`` that runs the real package
``__init__`` the first time anyone asks for an attribute it lacks, so other code in the same
process (``from pyroute2 import NDB``) still gets the whole package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _install_lazy_package() -> None:
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a normal package: let the plain import below do whatever it does
    pkg = types.ModuleType("pyroute2")
    pkg.__spec__ = spec
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = spec.origin
    pkg.__package__ = "pyroute2"
    loaded = False

    def __getattr__(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__"):
            raise AttributeError(name)
        # Submodules do ``from pyroute2 import config``, which asks here first: a name that is a
        # submodule is imported as such, without running the package __init__.
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        if not loaded:
            loaded = True
            del pkg.__getattr__  # type: ignore[attr-defined]
            spec.loader.exec_module(pkg)  # type: ignore[union-attr]
            return getattr(pkg, name)
        raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")

    pkg.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = pkg


def import_iproute() -> tuple[Any, type[Exception]]:
    """(IPRoute, NetlinkError), importing as little of pyroute2 as possible."""
    if "pyroute2" not in sys.modules:
        _install_lazy_package()
    linux = importlib.import_module("pyroute2.iproute.linux")
    exceptions = importlib.import_module("pyroute2.netlink.exceptions")
    return linux.IPRoute, exceptions.NetlinkError
