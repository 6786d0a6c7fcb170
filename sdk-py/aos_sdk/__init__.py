"""The AOS SDK for Python (standard library only, Python 3.10+).

- :class:`AosClient` talks to a kernel over HTTP: syscalls, events, dispatch streams.
- :func:`define_service` turns a function into a skill service that answers hooks,
  receives events and provides operations over the service protocol.
"""

from .client import AosClient, AosError
from .service import Hook, Service, ServiceContext, allow, define_service, hook, reject

__all__ = [
    "AosClient",
    "AosError",
    "Hook",
    "Service",
    "ServiceContext",
    "allow",
    "define_service",
    "hook",
    "reject",
]
__version__ = "0.1.0"
