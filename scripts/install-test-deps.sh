#!/usr/bin/env bash
# Installs the real MQTT peers the integration tests talk to:
#   - mosquitto_pub / mosquitto_sub (Debian package mosquitto-clients)
#   - mosquitto (the broker and mosquitto_passwd: the ACL differential test and the benchmark's baseline)
#   - nats-server (Debian package nats-server, 2.9.x with JetStream: the cluster tests and `sluice-bench --cluster`)
#   - Paho's Python client (paho-mqtt) in a project-local virtualenv (.venv)
#   - chromium + chromium-driver (the admin dashboard's browser test, tests/tests/admin.rs)
# Idempotent: skips what is already there. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian package enables and starts a system broker on :1883; the tests never use it, so
# stop that one service (and only it: other mosquitto processes, such as a benchmark's, stay).
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
if [ -f /run/mosquitto/mosquitto.pid ]; then
    $SUDO kill "$(cat /run/mosquitto/mosquitto.pid)" >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import paho.mqtt' >/dev/null 2>&1; then
    echo "install-test-deps: pip install paho-mqtt" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check 'paho-mqtt>=2.1,<3'
fi
# The Debian package may enable a system nats-server; the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true; fi
echo "install-test-deps: mosquitto_pub $(command -v mosquitto_pub), nats-server $(command -v nats-server), paho-mqtt $(.venv/bin/python -c 'import paho.mqtt; print(paho.mqtt.__version__)')" >&2
