"""The simulated WT310 of wt310_sim.py over VXI-11, the protocol of the WT310's Ethernet
interface (the /C7 option; IM WT310-17EN chapter 4), so that the resource name a real meter on
Ethernet takes, ``TCPIP::<address>::INSTR``, is exercised through pyvisa-py's own VXI-11 client.

Only what a VISA client needs of the VXI-11 core channel (VXI-11 rev. 1.0, "TCP/IP Instrument
Protocol Specification", program 0x0607AF version 1, ONC RPC over TCP with record marking,
RFC 5531/4506): create_link, device_write, device_read, device_readstb, device_clear,
device_remote, device_local and destroy_link. Each complete message written (the END flag) is
answered by the simulation, its answer kept for the next device_read; a message holding a
``:COMMunicate:WAIT`` is answered after the wait, so device_write returns then.

There is no portmapper (it would need port 111): the server listens on 127.0.0.1 at a port of
its own, which pyvisa-py takes in the resource name as ``TCPIP::127.0.0.1,<port>::INSTR``
(pyvisa-py then skips the portmapper). A real meter is addressed ``TCPIP::<address>::INSTR``
and its portmapper is asked. Nothing here has been compared with a real WT310's VXI-11 server.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from wt310_sim import SimWT310, close_listener, listen

PROG, VERS = 0x0607AF, 1
CREATE_LINK, DEVICE_WRITE, DEVICE_READ, DEVICE_READSTB = 10, 11, 12, 13
DEVICE_CLEAR, DEVICE_REMOTE, DEVICE_LOCAL, DESTROY_LINK = 15, 16, 17, 23
END_FLAG, RX_END = 0x08, 0x04
ERR_NONE, ERR_BAD_LINK, ERR_IO_TIMEOUT, ERR_UNSUPPORTED = 0, 4, 15, 8


class _Unpacker:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u32(self) -> int:
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return v

    def opaque(self) -> bytes:
        n = self.u32()
        v = self.data[self.pos:self.pos + n]
        self.pos += (n + 3) // 4 * 4
        return v


def _u32(*vals: int) -> bytes:
    return b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in vals)


def _opaque(b: bytes) -> bytes:
    return _u32(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv_record(conn: socket.socket) -> bytes:
    """One ONC RPC record (its fragments joined)."""
    out = b""
    while True:
        (head,) = struct.unpack(">I", _recv_exact(conn, 4))
        out += _recv_exact(conn, head & 0x7FFFFFFF)
        if head & 0x80000000:
            return out


class Vxi11Server:
    """Serve ``sim`` over VXI-11 on 127.0.0.1 (``port`` 0: any free one)."""

    def __init__(self, sim: SimWT310, port: int = 0) -> None:
        self.sim = sim
        self.port = port
        self._srv: socket.socket | None = None
        self._links: dict[int, dict] = {}
        self._next_link = 1
        self._lock = threading.Lock()

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1,{self.port}::INSTR"

    def start(self) -> int:
        self._srv = listen(self.port, self._serve)
        self.port = self._srv.getsockname()[1]
        return self.port

    def stop(self) -> None:
        srv, self._srv = self._srv, None
        close_listener(srv)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    call = _recv_record(conn)
                except (OSError, ConnectionError, struct.error):
                    return
                reply = self._call(call)
                if reply is None:
                    continue
                try:
                    conn.sendall(_u32(0x80000000 | len(reply)) + reply)
                except OSError:
                    return

    def _call(self, data: bytes) -> bytes | None:
        """One RPC call -> its reply record (accepted; PROG_UNAVAIL / PROC_UNAVAIL otherwise)."""
        u = _Unpacker(data)
        xid, mtype = u.u32(), u.u32()
        if mtype != 0:
            return None
        _rpcvers, prog, vers, proc = u.u32(), u.u32(), u.u32(), u.u32()
        for _ in range(2):  # credentials, verifier
            u.u32()
            u.opaque()
        head = _u32(xid, 1, 0, 0, 0)  # REPLY, MSG_ACCEPTED, verifier AUTH_NONE (0, empty)
        if prog != PROG or vers != VERS:
            return head + _u32(1)  # PROG_UNAVAIL
        handler = {CREATE_LINK: self._create_link, DEVICE_WRITE: self._write,
                   DEVICE_READ: self._read, DEVICE_READSTB: self._readstb,
                   DEVICE_CLEAR: self._generic, DEVICE_REMOTE: self._generic,
                   DEVICE_LOCAL: self._generic, DESTROY_LINK: self._destroy}.get(proc)
        if handler is None:
            return head + _u32(3)  # PROC_UNAVAIL
        return head + _u32(0) + handler(u)  # SUCCESS, results

    def _create_link(self, u: _Unpacker) -> bytes:
        u.u32(), u.u32(), u.u32()  # client id, lock device, lock timeout
        u.opaque()  # device name, e.g. inst0
        with self._lock:
            lid = self._next_link
            self._next_link += 1
            self._links[lid] = {"inbuf": b"", "out": b""}
        return _u32(ERR_NONE, lid, 0, 1 << 20)  # error, link id, abort port, max recv size

    def _write(self, u: _Unpacker) -> bytes:
        lid, _io_timeout, _lock_timeout, flags = u.u32(), u.u32(), u.u32(), u.u32()
        data = u.opaque()
        link = self._links.get(lid)
        if link is None:
            return _u32(ERR_BAD_LINK, 0)
        link["inbuf"] += data
        if flags & END_FLAG or link["inbuf"].endswith(b"\n"):
            message = link["inbuf"].decode("ascii", "replace").strip()
            link["inbuf"] = b""
            reply = self.sim.handle(message)
            if reply is not None and self.sim.fault != "silent":
                link["out"] += reply.encode() + b"\n"
        return _u32(ERR_NONE, len(data))

    def _read(self, u: _Unpacker) -> bytes:
        lid, size, io_timeout = u.u32(), u.u32(), u.u32()
        link = self._links.get(lid)
        if link is None:
            return _u32(ERR_BAD_LINK, 0) + _opaque(b"")
        if not link["out"]:  # nothing to send: the read times out, as a silent meter's does
            time.sleep(min(io_timeout / 1000.0, 30.0))
            return _u32(ERR_IO_TIMEOUT, 0) + _opaque(b"")
        data, link["out"] = link["out"][:size], link["out"][size:]
        return _u32(ERR_NONE, 0 if link["out"] else RX_END) + _opaque(data)

    def _readstb(self, u: _Unpacker) -> bytes:
        return _u32(ERR_NONE, 0)

    def _generic(self, u: _Unpacker) -> bytes:
        lid = u.u32()
        return _u32(ERR_NONE if lid in self._links else ERR_BAD_LINK)

    def _destroy(self, u: _Unpacker) -> bytes:
        with self._lock:
            found = self._links.pop(u.u32(), None)
        return _u32(ERR_NONE if found is not None else ERR_BAD_LINK)
