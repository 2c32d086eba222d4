"""The caller's side: `Client`, `SyncClient`, `emotion predict`, drawing results, and the demo page.

Nothing here imports the server side.
"""

from emotion.client.client import Client
from emotion.client.sync import SyncClient

__all__ = ["Client", "SyncClient"]
