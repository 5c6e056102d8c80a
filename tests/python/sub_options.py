"""MQTT 5.0 subscription options No Local and Retain Handling, with Paho.

No Local: a client subscribes to nl/# with No Local set, publishes nl/own itself, and another
client publishes nl/other. Retain Handling: with a retained message on rh/x, the client
subscribes to rh/# with Retain Handling 1 (new subscription), again with 1 (existing), to
rh/+ with 2, and again to rh/# with 0. After each step a private end marker is published, so
every step prints exactly what it received:
    STEP <name> <topic>[,<topic>...]   (or "-" when nothing arrived)
"""

import uuid

from paho.mqtt.subscribeoptions import SubscribeOptions

from peer import Peer, parser


def main():
    args = parser(__doc__).parse_args()
    args.version = "5"
    tag = uuid.uuid4().hex[:8]
    me = Peer(args, f"paho-opts-{tag}")
    other = Peer(args, f"paho-other-{tag}")
    end_topic = f"$end/{tag}"
    me.subscribe(end_topic, qos=1)

    def step(name):
        other.publish(end_topic, name, qos=1)
        got = []
        while True:
            msg = me.wait(me.messages, f"end of step {name}")
            if msg.topic == end_topic:
                break
            got.append(msg.topic + ("(retained)" if msg.retain else ""))
        print(f"STEP {name} {','.join(got) or '-'}", flush=True)

    me.subscribe("nl/#", options=SubscribeOptions(qos=1, noLocal=True))
    me.publish("nl/own", "mine", qos=1)
    other.publish("nl/other", "theirs", qos=1)
    step("no-local")

    other.publish("rh/x", "kept", qos=1, retain=True)
    step("retained-set")  # nothing: no subscription to rh/ yet
    me.subscribe("rh/#", options=SubscribeOptions(qos=1, retainHandling=1))
    step("rh1-new")
    me.subscribe("rh/#", options=SubscribeOptions(qos=1, retainHandling=1))
    step("rh1-existing")
    me.subscribe("rh/+", options=SubscribeOptions(qos=1, retainHandling=2))
    step("rh2")
    me.subscribe("rh/#", options=SubscribeOptions(qos=1, retainHandling=0))
    step("rh0")
    other.stop()
    me.stop()


if __name__ == "__main__":
    main()
