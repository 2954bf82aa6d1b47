"""Text a person typed (a name, a card holder, an email address): the one rule every service's
models use, so no control or format character (a line break, a bidi override, a zero-width
joiner) gets into a name, a log line or an email header. Checked in Python by Unicode category,
and written into the OpenAPI document as a pattern (:data:`VISIBLE_TEXT`) for clients and the
fuzzer.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Unicode categories no name, holder or other typed text needs, and each a way to forge what a
# reader sees: Cc controls (NUL, which PostgreSQL text cannot hold, CR/LF that split a log line or
# an email header), Cf format characters (bidi overrides that reverse what follows, zero-width
# spaces and joiners that make two equal-looking names differ, the BOM, invisible tags), Cs lone
# surrogates (not text at all), Zl/Zp line and paragraph separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _invisible_ranges(end: int = 0x10000) -> list[tuple[int, int]]:
    """The code points below ``end`` in those categories, as (first, last) ranges."""
    ranges: list[tuple[int, int]] = []
    for code in range(end):
        if unicodedata.category(chr(code)) in INVISIBLE_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return ranges


# The same rule as a JSON Schema pattern, for the OpenAPI document (and the fuzzer reading it).
# Only the Basic Multilingual Plane: a `\uXXXX` escape reads the same in ECMA-262, Python and
# Rust regexes; the few format characters beyond it (tags) are refused by :func:`visible` alone.
VISIBLE_TEXT = "^[^" + "".join(
    f"\\u{low:04x}" + (f"-\\u{high:04x}" if high > low else "")
    for low, high in _invisible_ranges()) + "]*$"


def visible(value: str) -> str:
    """``value`` unchanged, or ValueError naming the first control or format character in it."""
    for position, char in enumerate(value):
        if unicodedata.category(char) in INVISIBLE_CATEGORIES:
            name = unicodedata.name(char, unicodedata.category(char))
            raise ValueError(f"U+{ord(char):04X} ({name}) at position {position}: control and "
                             "format characters (line breaks, bidi controls, zero-width "
                             "characters) are not allowed here")
    return value


class _SchemaPattern:
    """Writes :data:`VISIBLE_TEXT` into the field's JSON Schema; :func:`visible` enforces it."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", VISIBLE_TEXT)
        return json_schema


# Text a person typed (a name, a card holder): use it for every such field of every model, with
# Field(min_length=..., max_length=...) as the field needs. Checked in Python, by category, so the
# rule is the same whatever regex engine pydantic uses.
Text = Annotated[str, AfterValidator(visible), _SchemaPattern()]

# An email address: the shape only (something@domain.tld, no spaces), and visible like Text.
_ADDRESS_PART = r"[^@\s\x00-\x1f\x7f]+"
EMAIL = rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}$"
Email = Annotated[str, AfterValidator(visible), Field(max_length=254, pattern=EMAIL)]
