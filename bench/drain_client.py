# Minimal MQTT 3.1.1 QoS 1 client: `pub PORT N` publishes N x 100 B QoS 1 (window 256),
# `sub PORT` subscribes persistently and disconnects, `drain PORT N` reconnects and receives N.
import socket, struct, sys

def enc_len(n):
    out = b""
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out

def s(x): x = x.encode(); return struct.pack(">H", len(x)) + x

def connect(port, cid, clean):
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = s("MQTT") + bytes([4, 0x02 if clean else 0x00]) + struct.pack(">H", 600) + s(cid)
    c.sendall(b"\x10" + enc_len(len(body)) + body)
    return c, Reader(c)

class Reader:
    def __init__(self, c): self.c, self.buf = c, bytearray()
    def ready(self):
        # A whole packet is buffered already.
        if len(self.buf) < 2: return False
        mult, n, i = 1, 0, 1
        while i < len(self.buf):
            b = self.buf[i]; n += (b & 127) * mult; mult *= 128; i += 1
            if not b & 128: return len(self.buf) >= i + n
        return False
    def packet(self):
        while True:
            if len(self.buf) >= 2:
                mult, n, i = 1, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]; n += (b & 127) * mult; mult *= 128; i += 1
                    if not b & 128: break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + n:
                    t = self.buf[0]; body = bytes(self.buf[i:i+n]); del self.buf[:i+n]
                    return t, body
            d = self.c.recv(1 << 16)
            if not d: raise EOFError
            self.buf += d

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "sub":
    c, r = connect(port, "drainsub", False); r.packet()
    body = struct.pack(">H", 1) + s("bench/drain") + b"\x01"
    c.sendall(b"\x82" + enc_len(len(body)) + body); r.packet()
    c.sendall(b"\xe0\x00"); c.close()
elif mode == "pub":
    n = int(sys.argv[3]); c, r = connect(port, "drainpub", True); r.packet()
    sent = acked = 0; pk = 0
    while acked < n:
        out = []
        while sent < n and sent - acked < 256:
            pk = pk % 65535 + 1; sent += 1
            body = s("bench/drain") + struct.pack(">H", pk) + (b"%0100d" % sent)
            out.append(b"\x32" + enc_len(len(body)) + body)
        if out: c.sendall(b"".join(out))
        t, _ = r.packet()
        if t >> 4 == 4: acked += 1
    c.sendall(b"\xe0\x00"); c.close()
elif mode == "drain":
    # Acknowledges everything one read brought in with one write (as sluice-bench does).
    n = int(sys.argv[3]); c, r = connect(port, "drainsub", False); r.packet()
    got = 0
    while got < n:
        acks = []
        while True:
            t, body = r.packet()
            if t >> 4 == 3:
                tl = struct.unpack(">H", body[:2])[0]
                acks.append(b"\x40\x02" + body[2+tl:4+tl]); got += 1
            if not r.ready() or got >= n: break
        c.sendall(b"".join(acks))
    c.sendall(b"\xe0\x00"); c.close(); print("received", got)
