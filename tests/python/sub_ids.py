"""MQTT 5.0 Subscription Identifiers on overlapping subscriptions, with Paho.

One client subscribes to sid/# (QoS 1) with Subscription Identifier 1 and to sid/+ (QoS 2)
with 2, in separate SUBSCRIBE packets since the identifier belongs to the packet. Another
client publishes sid/both at QoS 2 (matches both filters), then sid/deep/only (sid/# only).
The subscriber prints one line per PUBLISH it receives, sorted by topic (Paho hands a QoS 2
message over only at PUBREL, so arrival order says nothing), after waiting 0.3 s for copies:
    RECEIVED <topic> qos=<qos> ids=<sorted identifiers, comma separated>
"""

import queue
import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from peer import Peer, parser, show_ids


def sub_id(n):
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = n
    return props


def main():
    args = parser(__doc__).parse_args()
    args.version = "5"
    tag = uuid.uuid4().hex[:8]
    sub = Peer(args, f"paho-sid-{tag}")
    sub.subscribe("sid/#", qos=1, properties=sub_id(1))
    sub.subscribe("sid/+", qos=2, properties=sub_id(2))

    pub = Peer(args, f"paho-sidpub-{tag}")
    pub.publish("sid/both", "b", qos=2)
    pub.publish("sid/deep/only", "d", qos=1)
    received = []
    while {m.topic for m in received} != {"sid/both", "sid/deep/only"}:
        received.append(sub.wait(sub.messages, "message"))
    try:
        while True:
            received.append(sub.messages.get(timeout=0.3))
    except queue.Empty:
        pass
    for msg in sorted(received, key=lambda m: m.topic):
        print(f"RECEIVED {msg.topic} qos={msg.qos} ids={show_ids(msg)}", flush=True)
    pub.stop()
    sub.stop()


if __name__ == "__main__":
    main()
