"""Event streams: the reader/writer contract, Redis Streams, and the one event encoding.

``open_stream_reader`` (the stream job) and ``open_stream_writer`` (push) build the transport of
a view's ``stream_source``; ``EventSchema`` says which columns its events carry;
``encode_events`` / ``decode_events`` are the entry format (docs/streaming.md). Importing this
package imports neither redis-py nor the stream job.
"""

from featurestore.streams.base import (
    StreamRead,
    StreamReader,
    StreamWriter,
    open_stream_reader,
    open_stream_writer,
)
from featurestore.streams.encoding import EventError, decode_events, encode_events
from featurestore.streams.schema import AggregateSpec, EventSchema

__all__ = [
    "AggregateSpec",
    "EventError",
    "EventSchema",
    "StreamRead",
    "StreamReader",
    "StreamWriter",
    "decode_events",
    "encode_events",
    "open_stream_reader",
    "open_stream_writer",
]
