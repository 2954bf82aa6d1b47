"""What tests read off an AMQP message: its headers are typed as any AMQP field value (a
number, a table, bytes...), while the saga's own headers are text."""

from __future__ import annotations

from aio_pika.abc import AbstractMessage


def text_header(message: AbstractMessage, name: str) -> str:
    """The text header ``name`` of ``message``; an assertion error if it is not text."""
    value = message.headers[name]
    assert isinstance(value, str), f"{name}: {value!r} is not text"
    return value
