"""h2's connection as the server uses it: 1 MiB frames, and no hex dump of every DATA frame."""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import Frame

#: Largest HTTP/2 frame clients may send. At h2's default (16 KiB) a 160 kB
#: image arrives as ten DATA frames, and each costs a pass through h2 and
#: grpclib in Python; at 1 MiB it is one. Measured: 6% less server CPU per
#: call on a 160 kB JPEG (benchmarks/README.md).
MAX_FRAME_SIZE = 1024 * 1024

# hyperframe shows this many bytes of a frame's body in its repr.
_SHOWN = 10


def short_hex(head: bytes, length: int) -> str:
    """hyperframe's ``_raw_data_repr`` text for a body of ``length`` bytes starting with ``head``.

    hyperframe hex-encodes the whole body and then keeps 20 digits; this
    encodes only the bytes it keeps.
    """
    if not length:
        return "None"
    text = binascii.hexlify(head[:_SHOWN]).decode("ascii")
    return f"<hex:{text}...>" if length > _SHOWN else f"<hex:{text}>"


class QuietDataFrame(DataFrame):
    """A received DATA frame whose repr costs ten bytes of hex instead of the whole body.

    h2 formats every received frame for a trace log, eagerly, even when
    nothing logs (``H2Connection._receive_frame`` calls ``repr(frame)``): a
    DataFrame serializes its body (a copy) and hex-encodes all of it. That was
    4% of the server's CPU on 160 kB images. The text is the same.
    """

    def _body_repr(self) -> str:
        padding = self.serialize_padding_data()
        head = padding + self.data[:_SHOWN] + bytes(min(self.pad_length, _SHOWN))
        return short_hex(head, len(padding) + len(self.data) + self.pad_length)


class H2ServerConnection(H2Connection):
    """h2's connection announcing a larger frame size in its very first SETTINGS.

    Changing it later (update_settings) races: h2 applies the client's ACK
    only after the data it arrived with, and rejects a large frame that
    follows the ACK in the same read.

    Received DATA frames become :class:`QuietDataFrame` before h2 formats
    them. This is per connection, where a replacement of hyperframe's
    ``_raw_data_repr`` would change every h2 user in the process (clients
    included) for the same saving: measured on 160 kB DATA frames, h2's
    receive path took about 1200 µs per frame as is, 300-400 µs with the
    module function replaced, and 230-320 µs with this class (it also skips
    the body copy).
    """

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config=config)
        self.local_settings[SettingCodes.MAX_FRAME_SIZE] = MAX_FRAME_SIZE
        self.local_settings.acknowledge()
        self.max_inbound_frame_size = MAX_FRAME_SIZE
        # h2 dispatches on the exact class of a frame.
        self._frame_dispatch_table[QuietDataFrame] = self._frame_dispatch_table[DataFrame]

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if frame.__class__ is DataFrame:
            frame.__class__ = QuietDataFrame
        return super()._receive_frame(frame)
