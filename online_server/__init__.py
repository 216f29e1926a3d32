"""The online HTTP server (FastAPI): features, predictions and feedback over cached features.

Only entry points (``featurestore serve``) import this package; the SDK never does.
"""

from online_server.app import create_app

__all__ = ["create_app"]
