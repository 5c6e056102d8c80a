//! 00: the binary starts, serves a publish/subscribe round trip and shuts down cleanly.

use std::time::Duration;

use sluice_tests::{mosquitto_pub, mosquitto_sub, Broker};

/// The README's "done when": `mosquitto_sub -V mqttv5 -q 2 -t 'a/#'` sees
/// `mosquitto_pub -q 2 -t a/b -m hi -r`, and a later subscriber gets it as retained.
#[test]
fn readme_example_with_mosquitto_clients() {
    let mut broker = Broker::start();
    let sub = mosquitto_sub(
        &broker,
        &["-V", "mqttv5", "-q", "2", "-t", "a/#", "-C", "1", "-v"],
    )
    .unwrap();
    broker
        .wait_log("client connected", Duration::from_secs(10))
        .unwrap();
    mosquitto_pub(
        &broker,
        &["-V", "mqttv5", "-q", "2", "-t", "a/b", "-m", "hi", "-r"],
    )
    .unwrap();
    let out = sub.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a/b hi\n");
    let late = mosquitto_sub(&broker, &["-V", "mqttv311", "-t", "a/#", "-C", "1", "-v"]).unwrap();
    let out = late.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a/b hi\n",
        "[MQTT-3.3.1-6] retained on subscribe"
    );
    let status = broker.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}
