"""Secret values: the bytes live in a bytearray that is zeroed in place on ``close()`` or at
the end of a ``with`` block; repr/str/format never show them, and they refuse to pickle.

Limit: grpcio hands the value over as an immutable ``bytes`` that cannot be wiped; the
package copies it into the bytearray at once and drops its reference.
"""

from __future__ import annotations

import hmac
from typing import Optional, Union


class SecretValue:
    """One credential and its lease metadata. Use ``expose()`` where the value is needed."""

    __slots__ = ("name", "version", "lease_id", "expires_at", "zone", "stale", "previous",
                 "retires_at", "_buf")

    def __init__(self, value: Union[bytes, bytearray], *, name: str = "", version: str = "",
                 lease_id: str = "", expires_at: int = 0, zone: str = "", stale: bool = False,
                 previous: Optional["SecretValue"] = None, retires_at: int = 0):
        self._buf: Optional[bytearray] = bytearray(value)
        self.name = name
        self.version = version
        self.lease_id = lease_id
        self.expires_at = expires_at
        self.zone = zone
        self.stale = stale
        self.previous = previous
        self.retires_at = retires_at

    @property
    def closed(self) -> bool:
        return self._buf is None

    def _live(self) -> bytearray:
        if self._buf is None:
            raise ValueError(f"secret {self.name!r} was closed and wiped")
        return self._buf

    def expose(self) -> memoryview:
        """A read-only view of the value; invalid (all zeros) once the secret is closed."""
        return memoryview(self._live()).toreadonly()

    def text(self, encoding: str = "utf-8") -> str:
        """A str copy, for APIs that need one (HTTP headers). Python cannot wipe it."""
        return self._live().decode(encoding)

    def equals(self, other: Union[bytes, bytearray, memoryview]) -> bool:
        """Constant-time comparison."""
        return hmac.compare_digest(bytes(self._live()), bytes(other))

    def close(self) -> None:
        """Zeroes the buffer in place (and the previous version's). Idempotent."""
        if self._buf is not None:
            self._buf[:] = bytes(len(self._buf))
            self._buf = None
        if self.previous is not None:
            self.previous.close()

    def __enter__(self) -> "SecretValue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        state = "closed" if self._buf is None else f"{len(self._buf)} bytes"
        return (f"SecretValue(name={self.name!r}, version={self.version!r}, "
                f"lease_id={self.lease_id!r}, zone={self.zone!r}, value=<redacted; {state}>)")

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __reduce__(self):
        raise TypeError("SecretValue cannot be pickled")

    def __bytes__(self) -> bytes:
        raise TypeError("SecretValue has no implicit bytes(); use expose() or text()")
