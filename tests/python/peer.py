"""Shared plumbing for the Paho peer scripts run by tests/tests/paho_peer.rs.

Each script takes --host and --port (added by the Rust harness), prints what it observed as
plain lines on stdout for the Rust test to assert, and exits non-zero when something it waits
for does not happen within its time limit. Nothing here retries or sleeps unboundedly.
"""

import argparse
import queue
import sys
import time

import paho.mqtt.client as mqtt

# Every script gives up after this many seconds overall.
TIME_LIMIT = 10.0
_START = time.monotonic()


def parser(description):
    """An argument parser with --host, --port and --version (311 or 5)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=["311", "5"], default="5")
    return p


def fail(message):
    """Reports a failure on stderr and exits with status 2."""
    print(f"FAIL {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def time_left():
    """Seconds left of the script's overall time limit (fails when none are)."""
    left = TIME_LIMIT - (time.monotonic() - _START)
    if left <= 0:
        fail("overall time limit reached")
    return left


class Peer:
    """A Paho client run by its own network thread, with its events put on queues."""

    def __init__(self, args, client_id, will=None, loop_thread=True):
        protocol = mqtt.MQTTv5 if args.version == "5" else mqtt.MQTTv311
        kwargs = {}
        if protocol == mqtt.MQTTv311:
            kwargs["clean_session"] = True
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            **kwargs,
        )
        self.v5 = protocol == mqtt.MQTTv5
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.published = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_publish = lambda c, u, mid, rc, props: self.published.put((mid, rc))
        if will is not None:
            topic, payload = will
            self.client.will_set(topic, payload, qos=1)
        self.client.connect(args.host, args.port, keepalive=30)
        if loop_thread:
            self.client.loop_start()
            rc = self.wait(self.connacks, "CONNACK")
            if rc.is_failure:
                fail(f"{client_id}: CONNACK {rc}")

    def wait(self, q, what, timeout=None):
        """The next item of queue `q`, within `timeout` (default: the time left)."""
        try:
            return q.get(timeout=min(timeout or TIME_LIMIT, time_left()))
        except queue.Empty:
            fail(f"no {what} in time")

    def subscribe(self, topic, qos=1, properties=None, options=None):
        """Subscribes and waits for the SUBACK; returns its reason codes."""
        if options is not None:
            self.client.subscribe(topic, options=options, properties=properties)
        else:
            self.client.subscribe(topic, qos=qos, properties=properties)
        return self.wait(self.subacks, f"SUBACK for {topic}")

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and, for QoS 1 and 2, waits until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.wait(self.published, f"publish completion for {topic}")
        return info

    def stop(self):
        """A normal DISCONNECT, then the network thread ends."""
        self.client.disconnect()
        self.client.loop_stop()


def show_ids(message):
    """The message's Subscription Identifiers, sorted, as '1,2' (or '-' when none)."""
    props = getattr(message, "properties", None)
    ids = getattr(props, "SubscriptionIdentifier", None) if props else None
    if not ids:
        return "-"
    if not isinstance(ids, list):
        ids = [ids]
    return ",".join(str(i) for i in sorted(ids))
