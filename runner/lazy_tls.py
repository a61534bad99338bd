"""aiohttp imported without loading the system CA certificates at import time: the aiohttp module
out, with its default SSL contexts loading their certificates on their first TLS handshake. The
embedded simulator (an aiohttp server on plain http) imports aiohttp this way; the runner's own
HTTP client (`transport`) does not use aiohttp and builds its SSL context on its first https
connection.

aiohttp builds two SSL contexts when it is imported, and each reads and parses every CA
certificate of the system (about a fifth of the instructions of a one-request run), whether or
not the run ever talks TLS: a job against a plain-http endpoint (a local server, the simulator)
never needs them. While aiohttp is imported, `SSLContext.set_default_verify_paths` only notes the
context it was called on; each such context then becomes a `_DeferredCAContext`, which makes that
same call before its first handshake. Verification is never skipped: a context is complete before
it wraps a socket, and a context that cannot be deferred is completed at once.
"""

from __future__ import annotations

import ssl
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()


class _DeferredCAContext(ssl.SSLContext):
    """An SSLContext whose `set_default_verify_paths()` is still due: made on first use."""

    __slots__ = ()

    def _complete(self) -> None:
        with _lock:
            if type(self) is _DeferredCAContext:
                ssl.SSLContext.set_default_verify_paths(self)
                self.__class__ = ssl.SSLContext  # type: ignore[assignment]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._complete()
        return ssl.SSLContext.wrap_socket(self, *args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._complete()
        return ssl.SSLContext.wrap_bio(self, *args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._complete()
        return ssl.SSLContext.get_ca_certs(self, binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        self._complete()
        return ssl.SSLContext.cert_store_stats(self)


def import_aiohttp() -> ModuleType:
    """`import aiohttp`, with the CA loading of the SSL contexts it builds deferred."""
    if "aiohttp" in sys.modules:
        return sys.modules["aiohttp"]
    deferred: list[ssl.SSLContext] = []

    def note(self: ssl.SSLContext) -> None:
        deferred.append(self)

    own = vars(ssl.SSLContext).get("set_default_verify_paths")  # None: inherited from C
    with _lock:
        ssl.SSLContext.set_default_verify_paths = note  # type: ignore[method-assign]
        try:
            import aiohttp
        finally:
            if own is None:
                del ssl.SSLContext.set_default_verify_paths
            else:
                ssl.SSLContext.set_default_verify_paths = own  # type: ignore[method-assign]
    for context in deferred:
        if type(context) is ssl.SSLContext:
            context.__class__ = _DeferredCAContext
        else:  # a subclass of someone else's: no deferring there
            context.set_default_verify_paths()
    return aiohttp


import_aiohttp()
