"""The messages between a persistent simulation's driver (:class:`sim.chip_session.ChipSession`)
and its testbench (``sim/tb/chip_session.py``): over a Unix-domain socket, each message is a
pickled dict preceded by its length (8 bytes, little-endian). Both ends are this project's code
in processes of the same user; the socket lives in a private temporary folder."""

import pickle
import struct

__all__ = ["send_message", "recv_message"]

_LEN = struct.Struct("<Q")


def send_message(sock, message):
    """Send ``message`` (a dict of picklable values, numpy arrays included)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection")
        buf += chunk
    return bytes(buf)


def recv_message(sock):
    """The next message; ``EOFError`` when the other end has closed the connection."""
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return pickle.loads(_recv_exact(sock, n))
