#!/usr/bin/env python3
"""Boot-storm simulator: N machines netboot at once, as BIOS PXE firmware and then iPXE would.

Run it inside the client namespace that bench/run.sh makes. It is the machines *and* their
DHCP relay: every DHCP packet carries giaddr = --relay (so a thousand MACs share one
interface and the server answers the relay unicast, on port 67), and the client namespace
routes the relay's whole subnet to itself (`ip route add local SUBNET dev lo`), so each
machine speaks TFTP and HTTP from the address it was leased, as a real machine would.

Each machine, started at a random moment within --ramp seconds:
  1. PXE DHCP: DISCOVER/OFFER/REQUEST/ACK with option 60 PXEClient, 93 = 0 (BIOS), 94, 97;
     the ACK must name the BIOS boot file (undionly.kpxe).
  2. TFTP: that file, lockstep with blksize 1432 and tsize (what iPXE's ROM asks for);
     its size must match tsize.
  3. iPXE DHCP: DISCOVER/OFFER/REQUEST/ACK again with user class "iPXE"; the boot file must
     be http://SERVER/boot/MAC.ipxe.
  4. HTTP (one keep-alive connection, from the leased address): the boot script, then the
     kernel and initrd it names, each checked against Content-Length.
Retransmissions as firmware does them: DHCP after 4, 8, 16 s; TFTP after 2 s, 5 times.
A machine fails on an ERROR packet, a NAK, a wrong boot file, an HTTP status other than 200,
a short body, or when it runs out of retries or past --deadline.

Prints one JSON object: machines, completed, failed, failures by reason, ramp, wall,
and per-machine time p50/p99/max with per-phase p50/p99.
"""
import argparse
import asyncio
import collections
import ipaddress
import json
import os
import random
import re
import resource
import socket
import struct
import sys
import time

MAGIC = b"\x63\x82\x53\x63"


def build_dhcp(xid, mac, giaddr, msgtype, ipxe, requested=None, server=None, uuid=b""):
    chaddr = bytes(int(x, 16) for x in mac.split(":"))
    hdr = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 1, xid, 4, 0x8000,
        b"\0" * 4, b"\0" * 4, b"\0" * 4, socket.inet_aton(giaddr),
        chaddr + b"\0" * 10, b"\0" * 64, b"\0" * 128,
    )
    opts = [(53, bytes([msgtype])), (57, struct.pack("!H", 1260)),
            (93, b"\0\0"), (94, b"\x01\x02\x01"), (97, b"\0" + uuid),
            (60, b"PXEClient:Arch:00000:UNDI:002001")]
    if ipxe:
        opts.append((77, b"iPXE"))
        opts.append((175, b"\xb1\x05\x01\x10\xec\x80\x00"))  # iPXE's encapsulated options
    if requested:
        opts.append((50, socket.inet_aton(requested)))
    if server:
        opts.append((54, socket.inet_aton(server)))
    opts.append((55, bytes([1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135, 175])))
    body = b"".join(bytes([c, len(v)]) + v for c, v in opts)
    return hdr + MAGIC + body + b"\xff"


def parse_dhcp(data):
    if len(data) < 240 or data[236:240] != MAGIC or data[0] != 2:
        return None
    xid = struct.unpack("!I", data[4:8])[0]
    yiaddr = socket.inet_ntoa(data[16:20])
    siaddr = socket.inet_ntoa(data[20:24])
    file = data[108:236].split(b"\0", 1)[0].decode("latin-1")
    opts = {}
    i = 240
    while i < len(data):
        c = data[i]
        if c == 255:
            break
        if c == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        n = data[i + 1]
        opts[c] = data[i + 2:i + 2 + n]
        i += 2 + n
    if 67 in opts:
        file = opts[67].split(b"\0", 1)[0].decode("latin-1")
    return {"xid": xid, "yiaddr": yiaddr, "siaddr": siaddr, "file": file,
            "type": opts.get(53, b"\0")[0], "server": socket.inet_ntoa(opts[54]) if 54 in opts else None}


def big_buffers(sock, size=16 << 20):
    """The simulator is one Python thread: give its sockets room for the server's bursts
    (SO_RCVBUFFORCE: we are root in our namespace), so that drops are the server's, not ours."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class Fail(Exception):
    pass


class Relay(asyncio.DatagramProtocol):
    """The relay's socket (giaddr:67): sends every machine's packets, routes replies by xid."""

    def __init__(self):
        self.waiting = {}
        self.transport = None
        self.stray = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        p = parse_dhcp(data)
        if p is None:
            self.stray += 1
            return
        q = self.waiting.get(p["xid"])
        if q is None:
            self.stray += 1
        else:
            q.put_nowait(p)


async def dhcp_exchange(relay, args, mac, ipxe, uuid):
    """DORA through the relay; returns the ACK."""
    xid = random.getrandbits(32)
    q = asyncio.Queue()
    relay.waiting[xid] = q
    dest = (args.server, 67)
    try:
        async def ask(packet, want):
            for timeout in (4, 8, 16):
                relay.transport.sendto(packet, dest)
                end = time.monotonic() + timeout
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        p = await asyncio.wait_for(q.get(), left)
                    except asyncio.TimeoutError:
                        break
                    if p["type"] == 6:
                        raise Fail("DHCP NAK")
                    if p["type"] == want:
                        return p
            raise Fail("DHCP %s: no answer after 3 tries" % ("OFFER" if want == 2 else "ACK"))

        offer = await ask(build_dhcp(xid, mac, args.relay, 1, ipxe, uuid=uuid), 2)
        ack = await ask(build_dhcp(xid, mac, args.relay, 3, ipxe, requested=offer["yiaddr"],
                                   server=offer["server"], uuid=uuid), 5)
        return ack
    finally:
        relay.waiting.pop(xid, None)


class TftpProto(asyncio.DatagramProtocol):
    def __init__(self):
        self.q = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.q.put_nowait((data, addr))

    def error_received(self, exc):
        self.q.put_nowait((None, exc))


async def tftp_get(args, local_ip, server, name):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock, 1 << 20)
    sock.bind((local_ip, 0))
    transport, proto = await loop.create_datagram_endpoint(TftpProto, sock=sock)
    try:
        blksize = 1432
        rrq = b"\0\x01" + name.encode() + b"\0octet\0blksize\0" + str(blksize).encode() + b"\0tsize\x000\0"
        last, dest, peer = rrq, (server, 69), None
        expect, got, tsize = 1, 0, None
        first = True
        while True:
            for _ in range(6):
                transport.sendto(last, peer or dest)
                try:
                    data, addr = await asyncio.wait_for(proto.q.get(), 2.0)
                except asyncio.TimeoutError:
                    continue
                if data is None:
                    raise Fail("TFTP socket error: %s" % addr)
                break
            else:
                raise Fail("TFTP: no answer after 6 tries (block %d)" % expect)
            if peer is None:
                peer = addr
            elif addr != peer:
                continue
            op = struct.unpack("!H", data[:2])[0]
            if op == 5:
                raise Fail("TFTP error %d: %s" % (struct.unpack("!H", data[2:4])[0],
                                                   data[4:].split(b"\0")[0].decode("latin-1")))
            if op == 6 and first:
                f = data[2:].split(b"\0")
                o = dict(zip([x.decode().lower() for x in f[0::2]], f[1::2]))
                blksize = int(o.get("blksize", b"512"))
                tsize = int(o["tsize"]) if "tsize" in o else None
                first = False
                last = b"\0\x04\0\0"
                continue
            if op == 3:
                first = False
                block = struct.unpack("!H", data[2:4])[0]
                if block == (expect & 0xFFFF):
                    got += len(data) - 4
                    last = b"\0\x04" + data[2:4]
                    if len(data) - 4 < blksize:
                        transport.sendto(last, peer)
                        break
                    expect += 1
                # a duplicate: re-ACK it (the loop resends `last`)
                continue
        if tsize is not None and got != tsize:
            raise Fail("TFTP: got %d bytes, tsize said %d" % (got, tsize))
        return got
    finally:
        transport.close()


async def http_get(reader, writer, host, path, keep=True):
    writer.write(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: iPXE/1.0.0+ (storm)\r\n"
                  "Connection: %s\r\n\r\n" % (path, host, "keep-alive" if keep else "close")).encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:
        raise Fail("HTTP %s: no Content-Length" % path)
    n = int(headers["content-length"])
    want_text = n < 65536
    chunks, got = [], 0
    while got < n:
        b = await reader.read(min(1 << 20, n - got))
        if not b:
            raise Fail("HTTP %s: connection closed after %d of %d bytes" % (path.split("?")[0], got, n))
        got += len(b)
        if want_text:
            chunks.append(b)
    if status != 200:
        raise Fail("HTTP %s: status %d" % (path.split("?")[0], status))
    return b"".join(chunks).decode("utf-8", "replace") if want_text else got


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


async def machine(i, mac, relay, args, t_start, results):
    await asyncio.sleep(t_start)
    t0 = time.monotonic()
    phases = {}
    uuid = os.urandom(16)
    try:
        async def run():
            t = time.monotonic()
            ack = await dhcp_exchange(relay, args, mac, False, uuid)
            if ack["file"] != args.bootfile:
                raise Fail("PXE DHCP: boot file %r, expected %r" % (ack["file"], args.bootfile))
            ip = ack["yiaddr"]
            tftp_server = ack["siaddr"] if ack["siaddr"] != "0.0.0.0" else args.server
            phases["dhcp_pxe"] = time.monotonic() - t
            t = time.monotonic()
            await tftp_get(args, ip, tftp_server, ack["file"])
            phases["tftp"] = time.monotonic() - t
            t = time.monotonic()
            ack2 = await dhcp_exchange(relay, args, mac, True, uuid)
            url = ack2["file"]
            m = re.match(r"http://([^/:]+):?(\d*)(/.*)$", url)
            if not m or not url.endswith("/boot/%s.ipxe" % mac):
                raise Fail("iPXE DHCP: boot file %r is not this machine's boot script URL" % url)
            if ack2["yiaddr"] != ip:
                raise Fail("iPXE DHCP: address changed from %s to %s" % (ip, ack2["yiaddr"]))
            phases["dhcp_ipxe"] = time.monotonic() - t
            host, port = m.group(1), int(m.group(2) or 80)
            t = time.monotonic()
            reader, writer = await asyncio.open_connection(host, port, local_addr=(ip, 0), limit=1 << 20)
            try:
                script = await http_get(reader, writer, host, m.group(3))
                phases["script"] = time.monotonic() - t
                k = re.search(r"^kernel\s+(http://\S+)", script, re.M)
                r = re.search(r"^initrd\s+(?:--name\s+\S+\s+)?(http://\S+)", script, re.M)
                if not k or not r:
                    raise Fail("boot script names no kernel/initrd (not an install script)")
                t = time.monotonic()
                for u in (k.group(1), r.group(1)):
                    path = re.sub(r"^http://[^/]+", "", u)
                    await http_get(reader, writer, host, path)
                phases["kernel_initrd"] = time.monotonic() - t
            finally:
                writer.close()
        await asyncio.wait_for(run(), args.deadline)
        results["ok"].append((time.monotonic() - t0, phases))
    except asyncio.TimeoutError:
        results["fail"].append("past the %g s deadline (phases done: %s)" % (args.deadline, ",".join(phases) or "none"))
    except Fail as e:
        results["fail"].append(str(e))
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        results["fail"].append("%s: %s" % (type(e).__name__, e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs", required=True, help="file with one MAC per line")
    ap.add_argument("--server", required=True)
    ap.add_argument("--relay", required=True, help="giaddr: an address of this namespace")
    ap.add_argument("--ramp", type=float, default=3.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--bootfile", default="undionly.kpxe")
    ap.add_argument("-n", type=int, default=0, help="use only the first N MACs")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    macs = [m.strip() for m in open(args.macs) if m.strip()]
    if args.n:
        macs = macs[:args.n]
    loop = asyncio.get_running_loop()
    relay = Relay()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big_buffers(sock)
    sock.bind((args.relay, 67))
    await loop.create_datagram_endpoint(lambda: relay, sock=sock)
    results = {"ok": [], "fail": []}
    starts = sorted(random.uniform(0, args.ramp) for _ in macs)
    t0 = time.monotonic()
    await asyncio.gather(*(machine(i, mac, relay, args, starts[i], results) for i, mac in enumerate(macs)))
    wall = time.monotonic() - t0
    times = [t for t, _ in results["ok"]]
    phase_names = ["dhcp_pxe", "tftp", "dhcp_ipxe", "script", "kernel_initrd"]
    phases = {}
    for p in phase_names:
        v = [ph[p] for _, ph in results["ok"] if p in ph]
        phases[p] = {"p50": pct(v, 50), "p99": pct(v, 99)}
    out = {
        "machines": len(macs),
        "completed": len(results["ok"]),
        "failed": len(results["fail"]),
        "failures": collections.Counter(results["fail"]).most_common(8),
        "ramp": starts[-1] if starts else 0,
        "wall": wall,
        "p50": pct(times, 50),
        "p99": pct(times, 99),
        "max": max(times) if times else None,
        "phases": phases,
        "stray_dhcp_replies": relay.stray,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
