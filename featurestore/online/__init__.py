"""The online store: latest feature values per entity and small blobs, behind one interface.

Backends: ``memory`` (tests), ``embedded`` (SQLite, the default), ``redis``. Open one with
``open_online_store``; encode keys and values with ``featurestore.online.codec``.
"""

from featurestore.online.base import OnlineStore
from featurestore.online.factory import open_online_store

__all__ = ["OnlineStore", "open_online_store"]
