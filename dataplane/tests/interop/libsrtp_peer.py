"""A conference participant that protects and unprotects with libsrtp (via pylibsrtp).

Protocol with the test driving it: prints `addr=IP:PORT` (its UDP socket), waits for a line
`go BRIDGE_IP:PORT`, then sends COUNT RTP packets (sequence numbers from FIRST, so they can wrap
past 65535) and one SRTCP sender report, all protected by libsrtp with --send-key, while it
receives and unprotects with libsrtp using --recv-key. Prints one JSON line with what it sent and
what it recovered, and exits.
"""

import argparse
import json
import socket
import struct
import sys
import time

import pylibsrtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def session(profile, key_hex, direction):
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(key_hex), ssrc_type=direction, srtp_profile=PROFILES[profile]
    )
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy=policy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--send-key", required=True)
    ap.add_argument("--recv-key", required=True)
    ap.add_argument("--ssrc", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--expect-rtp", type=int, required=True)
    ap.add_argument("--expect-rtcp", type=int, required=True)
    a = ap.parse_args()

    tx = session(a.profile, a.send_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    rx = session(a.profile, a.recv_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    print("addr=%s:%d" % sock.getsockname(), flush=True)
    cmd = sys.stdin.readline().split()
    host, port = cmd[1].rsplit(":", 1)
    bridge = (host, int(port))

    sent, received, rtcp, failures = [], [], 0, []
    sock.setblocking(False)

    def drain():
        nonlocal rtcp
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            try:
                if 192 <= data[1] <= 223:
                    plain = rx.unprotect_rtcp(data)
                    rtcp += 1
                else:
                    plain = rx.unprotect(data)
                    received.append(plain.hex())
            except pylibsrtp.Error as e:
                failures.append(str(e))

    for k in range(a.count):
        seq = (a.first + k) & 0xFFFF
        payload = ("%s:%d:" % (a.name, seq)).encode() + bytes(range(100))
        plain = struct.pack("!BBHII", 0x80, 96, seq, seq * 960 & 0xFFFFFFFF, a.ssrc) + payload
        sent.append(plain.hex())
        sock.sendto(tx.protect(plain), bridge)
        if k % 8 == 7:
            time.sleep(0.002)
        drain()
    sr = struct.pack("!BBHI", 0x80, 200, 6, a.ssrc) + bytes(20)
    sock.sendto(tx.protect_rtcp(sr), bridge)

    deadline = time.time() + 10
    while time.time() < deadline and (len(received) < a.expect_rtp or rtcp < a.expect_rtcp):
        drain()
        time.sleep(0.005)
    time.sleep(0.2)
    drain()
    print(json.dumps({"sent": sent, "received": received, "rtcp": rtcp, "failures": failures}))


if __name__ == "__main__":
    main()
