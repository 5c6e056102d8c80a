"""Publish/subscribe round trip with Paho at one protocol level and one QoS.

A subscriber subscribes to pubsub/# at --qos and waits for the SUBACK; a publisher publishes
one message at --qos and waits for its flow to complete; the subscriber prints
    SUBACK <granted QoS>
    RECEIVED <topic> <qos> <payload>
and then, after a private end marker, how many copies it got in total:
    COUNT <n>
"""

import uuid

from peer import Peer, parser


def main():
    p = parser(__doc__)
    p.add_argument("--qos", type=int, choices=[0, 1, 2], required=True)
    args = p.parse_args()
    tag = uuid.uuid4().hex[:8]
    sub = Peer(args, f"paho-sub-{tag}")
    granted = sub.subscribe("pubsub/#", qos=args.qos)
    print(f"SUBACK {granted[0].value}", flush=True)
    end_topic = f"$end/{tag}"
    sub.subscribe(end_topic, qos=2)

    pub = Peer(args, f"paho-pub-{tag}")
    payload = f"hello at qos {args.qos}"
    pub.publish("pubsub/x", payload, qos=args.qos)
    # The marker goes at the same QoS: Paho hands a QoS 2 message to on_message only at PUBREL,
    # so a QoS 1 marker could overtake a QoS 2 message on the subscriber's side.
    pub.publish(end_topic, "end", qos=args.qos)

    count = 0
    while True:
        msg = sub.wait(sub.messages, "message")
        if msg.topic == end_topic:
            break
        count += 1
        print(f"RECEIVED {msg.topic} {msg.qos} {msg.payload.decode()}", flush=True)
    print(f"COUNT {count}", flush=True)
    pub.stop()
    sub.stop()


if __name__ == "__main__":
    main()
