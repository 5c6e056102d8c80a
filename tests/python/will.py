"""Will messages with Paho: published when the connection drops, not after DISCONNECT.

A watcher subscribes to will/<tag>. A second client connects with a will on that topic and
then ends in one of three ways (--ending):
    abrupt        its socket is closed without a DISCONNECT packet
    disconnect    a normal DISCONNECT (5.0: reason code 0x00)
    with-will     5.0 only: DISCONNECT with reason code 0x04 (Disconnect with Will Message)
The watcher prints
    WILL <payload>     if the will arrives within --wait seconds
    NO WILL            otherwise
"""

import queue
import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from peer import Peer, fail, parser, time_left


def main():
    p = parser(__doc__)
    p.add_argument("--ending", choices=["abrupt", "disconnect", "with-will"], required=True)
    p.add_argument("--wait", type=float, default=3.0)
    args = p.parse_args()
    tag = uuid.uuid4().hex[:8]
    topic = f"will/{tag}"
    watcher = Peer(args, f"paho-watcher-{tag}")
    watcher.subscribe(topic, qos=1)

    # The dying client is driven by hand (no network thread), so closing its socket races
    # with nothing.
    dying = Peer(args, f"paho-dying-{tag}", will=(topic, f"gone {tag}"), loop_thread=False)
    while dying.connacks.empty():
        dying.client.loop(timeout=0.05)
        time_left()  # exits when the overall time limit is reached
    if args.ending == "abrupt":
        dying.client.socket().close()
    elif args.ending == "disconnect":
        dying.client.disconnect()
        dying.client.loop(timeout=0.1)
    else:
        if not dying.v5:
            fail("--ending with-will needs --version 5")
        dying.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        dying.client.loop(timeout=0.1)

    try:
        msg = watcher.messages.get(timeout=args.wait)
        print(f"WILL {msg.payload.decode()}", flush=True)
    except queue.Empty:
        print("NO WILL", flush=True)
    watcher.stop()


if __name__ == "__main__":
    main()
