"""The Redis key layouts of the online store: one for a single Redis, one for Redis Cluster.

Both are data contracts (docs/online-store.md, docs/redis-cluster.md) pinned byte for byte by
tests/online/test_redis_layout_golden.py and tests/online/test_redis_cluster_layout_golden.py.

**Single Redis** (layout 1)::

    {P}:{V}:{K}                    a row of view V, entity key K
    {P}:__meta__:newest:{V}        8-byte newest event time written to V
    {P}:__meta__:writes:{V}        count of winning writes to V that did not raise the newest time
    {P}:__blob__:{NS}:{K}          a blob

**Redis Cluster** (cluster layout 1): every key carries a hash tag ``{T}``, one of 64 *bucket
tags*, so that the keys one script touches share a slot while a view spreads over every shard::

    {P}:{V}:{T}:{K}                a row; T = BUCKET_TAGS[bucket_of(K)]
    {P}:__meta__:{T}:newest:{V}    newest event time written to V's rows of that bucket
    {P}:__meta__:{T}:writes:{V}    count of winning writes to V's rows of that bucket
    {P}:__blob__:{T}:{NS}:{K}      a blob; T = BUCKET_TAGS[bucket_of(K)]

``bucket_of(K)`` is CRC16/XMODEM of the entity key's bytes (the hash Redis Cluster itself uses)
modulo 64. Bucket ``i``'s tag is the first text ``"{i}.{n}"`` (n = 0, 1, 2, ...) whose hash slot
lies in ``[256 i, 256 i + 256)``: the 64 tags sit evenly across the 16,384 slots, so the even,
contiguous slot ranges ``redis-cli --cluster create`` gives each primary hold equal shares of
every view (21 or 22 buckets each of 3 primaries). Project and view names cannot hold braces
(registry rule), so the tag is always the key's first ``{...}``; what follows it (an entity
key, a namespace) may hold any bytes.

Stream-side keys (the push marker, the stream job's state) must share the slot of their stream,
because one script touches both: in cluster mode they are the single-Redis key behind the
stream's own tag, ``{S}:`` + key (``stream_slot_prefix``).
"""

from __future__ import annotations

from binascii import crc_hqx

from registry.errors import ConfigError

#: Versions of the two layouts (docs/online-store.md, docs/redis-cluster.md).
LAYOUT_VERSION = 1
CLUSTER_LAYOUT_VERSION = 1
HASH_SLOTS = 16_384
BUCKETS = 64
_SLOTS_PER_BUCKET = HASH_SLOTS // BUCKETS


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of a key: CRC16 of its hash tag, or of the whole key.

    >>> key_slot(b"{user1000}.following") == key_slot(b"user1000")
    True
    """
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) % HASH_SLOTS


def _bucket_tag(bucket: int) -> bytes:
    n = 0
    while crc_hqx(b"%d.%d" % (bucket, n), 0) % HASH_SLOTS // _SLOTS_PER_BUCKET != bucket:
        n += 1
    return b"%d.%d" % (bucket, n)


#: The hash tag of each bucket, braces included (``b"{0.178}"``), and its slot.
BUCKET_TAGS: tuple[bytes, ...] = tuple(b"{" + _bucket_tag(i) + b"}" for i in range(BUCKETS))
BUCKET_SLOTS: tuple[int, ...] = tuple(key_slot(tag) for tag in BUCKET_TAGS)


def bucket_of(entity_key: bytes) -> int:
    """The bucket of an entity key (or a blob key) in the cluster layout.

    >>> bucket_of(b"42"), bucket_of(b"43")
    (0, 33)
    """
    return crc_hqx(entity_key, 0) % BUCKETS


class StandaloneKeys:
    """Key names of one project on a single Redis (layout 1)."""

    def __init__(self, project: str) -> None:
        self.prefix = project.encode() + b":"

    def row_prefix(self, view: str) -> bytes:
        return self.prefix + view.encode() + b":"

    def newest(self, view: str) -> bytes:
        return self.prefix + b"__meta__:newest:" + view.encode()

    def writes(self, view: str) -> bytes:
        return self.prefix + b"__meta__:writes:" + view.encode()

    def blob_prefix(self, namespace: str) -> bytes:
        return self.prefix + b"__blob__:" + namespace.encode() + b":"


class ClusterKeys:
    """Key names of one project on Redis Cluster (cluster layout 1). Per bucket ``b``:

    >>> keys = ClusterKeys("demo")
    >>> keys.row(keys.row_prefixes("users"), b"42")
    b'demo:users:{0.178}:42'
    >>> keys.newest("users", 0), keys.blob(keys.blob_prefixes("model.taste.v1"), b"42")
    (b'demo:__meta__:{0.178}:newest:users', b'demo:__blob__:{0.178}:model.taste.v1:42')
    """

    def __init__(self, project: str) -> None:
        self.prefix = project.encode() + b":"

    def row_prefixes(self, view: str) -> tuple[bytes, ...]:
        """``{P}:{V}:{T}:`` for every bucket, in bucket order."""
        head = self.prefix + view.encode() + b":"
        return tuple(head + tag + b":" for tag in BUCKET_TAGS)

    @staticmethod
    def row(prefixes: tuple[bytes, ...], entity_key: bytes) -> bytes:
        return prefixes[crc_hqx(entity_key, 0) % BUCKETS] + entity_key

    def newest(self, view: str, bucket: int) -> bytes:
        return self.prefix + b"__meta__:" + BUCKET_TAGS[bucket] + b":newest:" + view.encode()

    def writes(self, view: str, bucket: int) -> bytes:
        return self.prefix + b"__meta__:" + BUCKET_TAGS[bucket] + b":writes:" + view.encode()

    def blob_prefixes(self, namespace: str) -> tuple[bytes, ...]:
        head = self.prefix + b"__blob__:"
        tail = b":" + namespace.encode() + b":"
        return tuple(head + tag + tail for tag in BUCKET_TAGS)

    blob = row


def stream_slot_prefix(stream: str) -> str:
    """``{S}:``: put in front of a stream-side key, it lands in the stream's slot (a script that
    touches the stream and the key needs both in one slot). ``S`` is the stream's own hash tag
    when its name has one (``{clicks}.eu`` -> ``{clicks}:``), else its whole name.

    >>> stream_slot_prefix("clicks")
    '{clicks}:'
    """
    raw = stream.encode()
    start = raw.find(b"{")
    end = raw.find(b"}", start + 1) if start > -1 else -1
    tag = raw[start + 1 : end] if start > -1 and end > start + 1 else raw
    prefix = b"{" + tag + b"}:"
    if key_slot(prefix) != key_slot(raw):
        # A name with a "}" but no hash tag: no tag can name its slot.
        raise ConfigError(
            f"stream name {stream!r} cannot be used on Redis Cluster: its state and push markers "
            "cannot be placed in its hash slot",
            hint="rename the stream without braces, or give it a hash tag such as {clicks}",
        )
    return prefix.decode()


def cluster_stream_prefix(project: str, view: str, stream: str) -> str:
    """The prefix of a view's stream-job state in cluster mode: ``{S}:{P}:__stream__:{V}:``,
    in the slot of the view's stream ``S`` (the single-Redis prefix is ``{P}:__stream__:{V}:``).

    >>> cluster_stream_prefix("demo", "user_agg", "clicks")
    '{clicks}:demo:__stream__:user_agg:'
    """
    return f"{stream_slot_prefix(stream)}{project}:__stream__:{view}:"
