"""The one decoder of `data:<type>;base64,<payload>` URIs, for the core's media loading and the
server's ingress alike (standard library only: the ingress never loads torch)."""

from __future__ import annotations

import base64
import binascii

from .errors import InputError


class DataUriTooLargeError(InputError):
    """The decoded payload would be larger than the caller's byte limit. (Built from a reason,
    as every InputError, so callers can re-raise it with a location prefixed.)"""


def decoded_size(payload: str) -> int:
    """Bytes that a base64 payload decodes to: 3 per 4 characters, less one per '=' pad."""
    padding = len(payload) - len(payload.rstrip("="))
    return len(payload) * 3 // 4 - min(padding, 2)


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """`data:[<type>][;params];base64,<payload>` -> bytes. The `;base64` marker is matched
    case-insensitively (RFC 2397 media-type parameters are), and the size is checked before
    anything is decoded. Raises `InputError` (malformed) or `DataUriTooLargeError`."""
    header, comma, payload = uri.partition(",")
    if (
        not comma
        or not header.lower().startswith("data:")
        or not header.lower().endswith(";base64")
    ):
        raise InputError("a data URI must look like 'data:<type>;base64,<payload>'")
    size = decoded_size(payload)
    if size > max_bytes:
        raise DataUriTooLargeError(
            f"the data URI payload ({size} bytes) is larger than the limit of {max_bytes} bytes"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputError(f"the data URI payload is not valid base64 ({error})") from None
