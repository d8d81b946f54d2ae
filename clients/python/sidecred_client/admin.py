"""A small blocking client for the admin socket (``$SIDECRED_ADMIN_SOCKET``): revoke a
session, rotate a secret, list sessions. For security teams, rotation jobs and tests."""

from __future__ import annotations

from typing import Optional

import grpc

from . import _core
from ._core import pb
from .errors import from_rpc_error


class AdminClient:
    def __init__(self, socket=None, *, timeout: float = 10.0):
        self._timeout = timeout
        self._channel = grpc.insecure_channel(_core.target(socket, _core.ADMIN_SOCKET_ENV),
                                              options=list(_core.CHANNEL_OPTIONS))
        self._stub = pb.admin_pb2_grpc.AdminStub(self._channel)

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def revoke_session(self, session_id: str, reason: str = ""):
        """Revokes every lease of the session, at its backends too. Returns the report."""
        return self._call("RevokeSession",
                          pb.admin_pb2.RevokeSessionRequest(session_id=session_id, reason=reason))

    def rotate(self, name: str, *, grace_seconds: int = 0, value: Optional[bytes] = None):
        return self._call("Rotate", pb.admin_pb2.RotateRequest(
            name=name, grace_seconds=grace_seconds, value=value or b""))

    def list_sessions(self):
        return list(self._call("ListSessions", pb.admin_pb2.ListSessionsRequest()).sessions)

    def status(self):
        return self._call("Status", pb.admin_pb2.StatusRequest())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
