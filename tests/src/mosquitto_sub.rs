//! Helpers shared by the peer tests: a `mosquitto_sub` whose output is read line by line while
//! it runs, and a subscribe barrier built on a retained message.
//!
//! The broker does not log SUBSCRIBE, so a test cannot see from the log when a background
//! `mosquitto_sub` is subscribed. [`Sub::start`] adds a private `$sync/<n>` filter as the last
//! filter of the subscriber and publishes a retained `SYNC` message there first: the subscriber
//! prints that message only once the broker has processed its SUBSCRIBE, so every filter given
//! before it is in place too. `$` topics keep the barrier out of the way of `#` filters
//! [MQTT-4.7.2-1]. The barrier message counts towards `-C`, which [`Sub::start`] accounts for,
//! and its line is left out of [`Sub::finish`]'s result.
//!
//! The subscriber also has a private `$end/<n>` filter: [`Sub::end`] publishes `END` there after
//! the test's messages. Deliveries to one subscriber keep the order in which the broker accepted
//! them, so `END` is the last line unless something unexpected arrived, and the subscriber exits
//! through `-C` as soon as it has printed it. (Tests must not publish a QoS 1 message after a
//! QoS 2 one to the same subscriber and expect that order: see [`Sub::end`].)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{client_id, mosquitto_pub, Broker};

/// Payload of the barrier message; lines containing it are dropped from the results.
pub const SYNC: &str = "SYNC-BARRIER";
/// Payload of the end marker.
pub const END: &str = "END-MARKER";

#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running `mosquitto_sub` whose stdout lines are collected as they come. Killed on drop.
#[derive(Debug)]
pub struct Sub {
    child: Option<Child>,
    out: Arc<Lines>,
    end_topic: String,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Sub {
    /// Starts `mosquitto_sub -V <version> <args> -C <count + 2> -W 15` (`args` must print the
    /// payload, e.g. `-v` or a `-F` with `%p`) and waits until it is subscribed. `count` is the
    /// number of messages the test expects before [`Sub::end`].
    pub fn start(broker: &Broker, version: &str, args: &[&str], count: usize) -> Sub {
        let n = client_id("s");
        let sync_topic = format!("$sync/{n}");
        let end_topic = format!("$end/{n}");
        mosquitto_pub(
            broker,
            &[
                "-V",
                "mqttv311",
                "-q",
                "1",
                "-r",
                "-t",
                &sync_topic,
                "-m",
                SYNC,
            ],
        )
        .expect("publish the barrier");
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &broker.port(), "-V", version])
            .args(args)
            .args(["-t", &end_topic, "-t", &sync_topic])
            .args(["-C", &(count + 2).to_string(), "-W", "15"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::new(Lines::default());
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
        });
        let sub = Sub {
            child: Some(child),
            out,
            end_topic,
            reader: Some(reader),
        };
        sub.wait_line(SYNC, Duration::from_secs(10));
        sub
    }

    /// Waits until a line contains `needle` (panics after `timeout`).
    pub fn wait_line(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut lines = self.out.lines.lock().unwrap();
        while !lines.iter().any(|l| l.contains(needle)) {
            let now = Instant::now();
            assert!(
                now < deadline,
                "mosquitto_sub printed no line containing {needle:?} within {timeout:?}; got {lines:?}"
            );
            lines = self
                .out
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Publishes the end marker (QoS 1, so the broker has routed it when this returns).
    pub fn end(&self, broker: &Broker) {
        mosquitto_pub(
            broker,
            &[
                "-V",
                "mqttv311",
                "-q",
                "1",
                "-t",
                &self.end_topic,
                "-m",
                END,
            ],
        )
        .expect("publish the end marker");
    }

    /// Publishes the end marker, waits (bounded) until the subscriber printed it or exited, and
    /// returns the printed lines without the barrier's and the marker's.
    pub fn finish(mut self, broker: &Broker) -> Vec<String> {
        self.end(broker);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none()
            && Instant::now() < deadline
            && !self
                .out
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(END))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Printing the marker made `-C` complete (unless fewer messages came than expected):
        // the subscriber exits by itself and prints nothing after it.
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.out.lines.lock().unwrap().clone();
        lines
            .into_iter()
            .filter(|l| !l.contains(SYNC) && !l.contains(END))
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mosquitto_pub` at `version` with `args`; panics on failure.
pub fn publish(broker: &Broker, version: &str, args: &[&str]) {
    let mut all = vec!["-V", version];
    all.extend_from_slice(args);
    mosquitto_pub(broker, &all).unwrap();
}

/// Sorted copy, for comparing deliveries whose relative order the spec leaves open.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
