"""Safety numbers: 60 digits, 12 groups of 5, equal on both sides, sensitive to keys."""

from __future__ import annotations

import pytest

from parley.protocol.fingerprint import display, parse, safety_number
from parley.protocol.keys import IdentityKeyPair

from .peers import seeded


def test_both_sides_see_the_same_number() -> None:
    rng = seeded(1)
    alice, bob = IdentityKeyPair.generate(rng).public, IdentityKeyPair.generate(rng).public
    a_view = safety_number(alice, "+14155550001", bob, "+14155550002")
    b_view = safety_number(bob, "+14155550002", alice, "+14155550001")
    assert a_view == b_view
    assert len(a_view) == 60 and a_view.isdigit()
    groups = display(a_view).split(" ")
    assert len(groups) == 12 and all(len(g) == 5 for g in groups)
    assert parse(display(a_view)) == a_view


def test_a_changed_identity_key_changes_the_number() -> None:
    rng = seeded(2)
    alice, bob, mallory = (IdentityKeyPair.generate(rng).public for _ in range(3))
    genuine = safety_number(alice, "+1", bob, "+2")
    assert safety_number(alice, "+1", mallory, "+2") != genuine
    assert safety_number(alice, "+1", bob, "+3") != genuine


@pytest.mark.parametrize("bad", ["123", "x" * 60, "1" * 61, "١" * 60])
def test_parse_refuses_what_is_not_60_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)
