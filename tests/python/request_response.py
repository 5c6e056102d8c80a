"""MQTT 5.0 request/response through the broker, with Paho.

A responder subscribes to req/+ and answers each request on its Response Topic, copying the
Correlation Data. A requester subscribes to its own response topic and sends one request
whose Correlation Data is binary (not UTF-8). Printed:
    REQUEST response_topic=<topic> correlation=<hex>      (as the responder saw it)
    RESPONSE topic=<topic> correlation=<hex> payload=<payload>   (as the requester saw it)
"""

import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from peer import Peer, parser

CORRELATION = bytes([0x00, 0xFF, 0x10, 0x80]) + b"id-7"


def main():
    args = parser(__doc__).parse_args()
    args.version = "5"
    tag = uuid.uuid4().hex[:8]
    responder = Peer(args, f"paho-responder-{tag}")
    responder.subscribe("req/+", qos=1)
    requester = Peer(args, f"paho-requester-{tag}")
    reply_topic = f"resp/{tag}"
    requester.subscribe(reply_topic, qos=1)

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = CORRELATION
    requester.publish("req/time", "what time is it", qos=1, properties=props)

    request = responder.wait(responder.messages, "request")
    seen_topic = getattr(request.properties, "ResponseTopic", None)
    seen_corr = getattr(request.properties, "CorrelationData", b"")
    print(f"REQUEST response_topic={seen_topic} correlation={seen_corr.hex()}", flush=True)
    answer = Properties(PacketTypes.PUBLISH)
    answer.CorrelationData = seen_corr
    responder.publish(seen_topic, "noon", qos=1, properties=answer)

    response = requester.wait(requester.messages, "response")
    corr = getattr(response.properties, "CorrelationData", b"")
    print(
        f"RESPONSE topic={response.topic} correlation={corr.hex()} "
        f"payload={response.payload.decode()}",
        flush=True,
    )
    responder.stop()
    requester.stop()


if __name__ == "__main__":
    main()
