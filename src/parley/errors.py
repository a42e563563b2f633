"""Every exception Parley raises, in one tree.

Each error carries a stable ``code`` (a short snake_case string) that the
server renders as ``{"error": {"code", "message"}}`` with ``http_status`` and
the CLI renders as one line on stderr. Errors are raised, never returned.

    ParleyError
    ├── LocalProtocolError        our own misuse of the protocol (a bug here)
    ├── ApiError                  a request the server refuses (4xx JSON error)
    │   ├── BadRequest            400 invalid input (also: invalid_phone, invalid_code)
    │   ├── Unauthorized          401 missing or wrong credential, unknown account
    │   ├── Forbidden             403 authenticated but not allowed (not a member...)
    │   ├── NotFound              404
    │   ├── Conflict              409 (StaleDevices lists missing/extra devices;
    │   │                         VersionConflict names a group's next version)
    │   ├── PayloadTooLarge       413
    │   └── RateLimited           429 with retry_after seconds
    ├── ServerError               the client's view of a server's JSON error
    │   └── Unreachable           no answer from the server at all
    └── RemoteProtocolError       bytes or keys from a peer that must be refused
        ├── MalformedMessage      does not decode (wrong version, length, kind...)
        ├── InvalidSignature      a bundle, prekey or group message signature fails
        ├── InvalidGroupChange    a group change that is unsigned, out of order or not allowed
        └── DecryptionError       a message that does not authenticate
            ├── DuplicateMessage  a replay of a message already decrypted
            ├── TooManySkipped    a gap larger than the skipped-key bound
            ├── UnknownSenderKey  a group message from a sender key we never got
            │   └── NotAGroupMember  ... or from an account not in the signed member list
            └── FrankingError     the franking commitment does not match

The split follows h11/wsproto: ``LocalProtocolError`` means this program did
something wrong; ``RemoteProtocolError`` means the peer (or the network, or the
server) sent something we refuse. Any bytes fed to a decoder either decode or
raise ``RemoteProtocolError``; never another exception.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every Parley error."""

    code: str = "parley_error"
    http_status: int = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class LocalProtocolError(ParleyError):
    """This program misused the protocol (e.g. encrypting on a closed chain)."""

    code = "local_protocol_error"
    http_status = 500


class RemoteProtocolError(ParleyError):
    """The peer sent something that must be refused."""

    code = "remote_protocol_error"


class MalformedMessage(RemoteProtocolError):
    """Bytes that do not decode as the expected wire structure."""

    code = "malformed"


class InvalidSignature(RemoteProtocolError):
    """A signature over a bundle, prekey or group message does not verify."""

    code = "invalid_signature"


class InvalidGroupChange(RemoteProtocolError):
    """A group change that does not verify, does not follow the chain this member
    holds, or that its signer was not allowed to make; nothing is applied."""

    code = "invalid_group_change"


class DecryptionError(RemoteProtocolError):
    """A message that does not authenticate; the session is left unchanged."""

    code = "undecryptable"


class DuplicateMessage(DecryptionError):
    """A message whose key was already used: a replay or a re-delivery."""

    code = "duplicate_message"


class TooManySkipped(DecryptionError):
    """A message further ahead in its chain than the skipped-key bound allows."""

    code = "too_many_skipped"


class UnknownSenderKey(DecryptionError):
    """A group message under a sender key this member never received."""

    code = "unknown_sender_key"


class NotAGroupMember(UnknownSenderKey):
    """A sender key or group message from an account the signed member list lacks."""

    code = "not_a_group_member"


class FrankingError(DecryptionError):
    """A franking commitment or opening that does not match the message."""

    code = "franking_mismatch"


class ApiError(ParleyError):
    """A request the server refuses; rendered as ``{"error": {"code", "message"}}``."""

    code = "bad_request"
    http_status = 400

    def details(self) -> dict[str, object]:
        """Extra fields for the error object (e.g. the stale device lists)."""
        return {}


class BadRequest(ApiError):
    code = "bad_request"
    http_status = 400

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class Unauthorized(ApiError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ApiError):
    code = "forbidden"
    http_status = 403


class NotFound(ApiError):
    code = "not_found"
    http_status = 404


class Conflict(ApiError):
    code = "conflict"
    http_status = 409


class StaleDevices(Conflict):
    """The sender's device list for a recipient is out of date (409)."""

    code = "stale_devices"

    def __init__(self, missing: list[int], extra: list[int]) -> None:
        super().__init__("the device list for this recipient is out of date")
        self.missing = missing
        self.extra = extra

    def details(self) -> dict[str, object]:
        return {"missing_devices": self.missing, "extra_devices": self.extra}


class VersionConflict(Conflict):
    """A group change for a version other than the next one (409, naming the next)."""

    code = "version_conflict"

    def __init__(self, next_version: int) -> None:
        super().__init__("the group has changed: fetch its changes and try again")
        self.next_version = next_version

    def details(self) -> dict[str, object]:
        return {"next_version": self.next_version}


class PayloadTooLarge(ApiError):
    code = "payload_too_large"
    http_status = 413


class RateLimited(ApiError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; retry after {retry_after} s")
        self.retry_after = retry_after

    def details(self) -> dict[str, object]:
        return {"retry_after": self.retry_after}


class ServerError(ParleyError):
    """A JSON error returned by the server, as the client sees it."""

    code = "server_error"

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}


class Unreachable(ServerError):
    """The server did not answer (refused, timed out, or not HTTP)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class Unavailable(ApiError):
    """The server cannot answer correctly right now (e.g. a node still catching up
    with the key directory); the client retries later."""

    code = "unavailable"
    http_status = 503
