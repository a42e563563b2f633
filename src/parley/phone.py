"""Phone numbers, as E.164 (via libphonenumber), for the server and the client alike."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    """Not a phone number Parley can send a code to; the message says why, plainly."""


def e164(raw: str) -> str:
    """``raw`` as E.164 (``+14155550123``), or ``InvalidPhone``."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(
            "not a phone number in international format (+ and the country code, e.g. +14155550123)"
        ) from exc
    if not phonenumbers.is_valid_number(number) or number.extension:
        raise InvalidPhone("not a valid phone number (extensions cannot receive codes)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
