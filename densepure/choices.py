"""Enums of user-facing choices (``--mode``, ``--precision``, ...) that parse a string with a one-line error.

A subclass names what it chooses once, ``class Mode(Choice, what="mode")``; ``Mode.parse("x")`` then raises
``ConfigError: mode must be one of ..., got 'x'`` (plus the subclass's ``hint``, if any).
"""

from __future__ import annotations

import enum
from typing import TypeVar

from densepure.errors import ConfigError

C = TypeVar("C", bound="Choice")


class Choice(enum.Enum):
    """Base of the choice enums: members are ``NAME = "value"``, parsed from their values."""

    def __init_subclass__(cls, what: str = "value", hint: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._what_, cls._hint_ = what, hint  # sunder names: class attributes, not members

    @classmethod
    def parse(cls: type[C], value: C | str) -> C:
        """A member, or its value -> the member; anything else is a :class:`ConfigError` naming the choices."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(member.value for member in cls)
            raise ConfigError(f"{cls._what_} must be one of {allowed}{cls._hint_}, got {value!r}") from None
