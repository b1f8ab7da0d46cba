#!/usr/bin/env bash
# Control-plane demo (part of `make run`): a control plane and two bridges in two regions on
# loopback; participants join through the control plane's CLI (one with SRTP: the focus returns
# the bridge's key); a conference joined from both regions spans both bridges, relayed (Octo);
# one bridge hangs (SIGSTOP: connection open, no answers), the health probes find it and only
# its participants move. Everything runs from target/release and is stopped on exit.
source "$(dirname "$0")/lib.sh"

ready listen "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$data/store"
url=http://$REPLY
echo "control plane at $url"
for b in eu-1:eu us-1:us; do
  ready media "$bin/ringbridge" --engine auto --workers 1 --no-pin --media 127.0.0.1:0 --api 127.0.0.1:0 \
    --control "$url" --bridge-id "${b%%:*}" --region "${b##*:}"
done
sleep 0.5
ctl() { echo "\$ ringbridge-control $*"; "$bin/ringbridge-control" --control "$url" "$@"; }
ctl bridges
ctl join --conference standup --participant ana --region eu --ssrc 1 --remote-addr 127.0.0.1:41001
ctl join --conference standup --participant ben --region us --ssrc 2 --remote-addr 127.0.0.1:41002
ctl join --conference standup --participant dee --region eu --ssrc 4 --remote-addr 127.0.0.1:41004 \
  --srtp-profile AEAD_AES_128_GCM --srtp-key 000102030405060708090a0b0c0d0e0f101112131415161718191a1b
ctl join --conference webinar --participant cho --region us --ssrc 3 --remote-addr 127.0.0.1:41003
echo "--- standup spans eu-1 (ana, dee) and us-1 (ben): each sends to its own bridge, the bridges relay"
ctl conferences
media_of() { "$bin/ringbridge-control" --control "$url" --json conferences |
  python3 -c "import json,sys; print([b['media_addr'] for c in json.load(sys.stdin) for b in c['bridges'] if '$1' in b['participants']][0])"; }
eu_media=$(media_of ana); us_media=$(media_of ben)
echo "--- media across the relay: ana sends 5 RTP packets to eu-1 ($eu_media); ben listens on 127.0.0.1:41002 behind us-1"
if ! python3 - "$eu_media" <<'PY'
import socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1)
ana = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ana.bind(("127.0.0.1", 41001))
ben = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ben.bind(("127.0.0.1", 41002)); ben.settimeout(1.0)
got = 0
for seq in range(5):
    ana.sendto(struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 1) + b"hello across the relay", (host, int(port)))
    try:
        data = ben.recv(2048); got += 1
    except socket.timeout:
        pass
print(f"    ben received {got} of 5 packets from ana (eu-1 -> relay -> us-1), byte for byte: {data[12:].decode() if got else '-'}")
PY
then echo "    (media check skipped: ports 41001/41002 busy)"; fi
victim=$("$bin/ringbridge-control" --control "$url" --json conferences | grep -o '"bridge_id":"[^"]*"' | head -1 | cut -d'"' -f4)
vpid=${pids[$([ "$victim" = eu-1 ] && echo 1 || echo 2)]}
echo "--- SIGSTOP bridge $victim: it hangs with its connections open; health probes (every 250 ms,"
echo "    500 ms deadline, down after 2 failures) declare it down and only its participants move"
kill -STOP "$vpid"
t0=$(date +%s%N)
for _ in $(seq 200); do # bounded: 10 s
  "$bin/ringbridge-control" --control "$url" --json bridges |
    grep -q "\"bridge_id\":\"$victim\",[^}]*\"state\":\"down\"" && break
  sleep 0.05
done
echo "    $victim declared down after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
sleep 0.3
ctl bridges
ctl conferences
ctl join --conference later --participant eve --region eu --ssrc 5 --remote-addr 127.0.0.1:41005
kill -CONT "$vpid"
