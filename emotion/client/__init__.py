"""The caller's side: `Client`, `emotion predict`, drawing results, and the demo page.

Nothing here imports the server side.
"""

from emotion.client.client import Client

__all__ = ["Client"]
