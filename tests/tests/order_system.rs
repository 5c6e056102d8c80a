//! The order-system example (issue 13, `broker/examples/order_system/`) against the real
//! broker in `durable` mode: a burst of orders reaches every consumer group, each order at
//! least once, also when the broker is killed with SIGKILL in the middle of the drain and
//! restarted on the same port and data directory.
//!
//! The example is built by [`order_system_bin`] (`cargo build -p sluice --example
//! order_system`, in the tests' profile). Its last line, `order-system: {json}`, is what the
//! tests read.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{order_system_bin, run_bounded, Broker, BrokerOpts};

const GROUPS: [&str; 3] = ["inventory", "sms", "redpacket"];

/// A durable broker on `data`, on `port` (0: any free port).
fn broker(data: &Path, port: u16) -> Broker {
    Broker::start_with(BrokerOpts {
        config: format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n"),
        env: vec![(
            "SLUICE__PERSISTENCE__DIR".into(),
            data.display().to_string(),
        )],
        no_bind: true,
        ..Default::default()
    })
    .expect("start sluice")
}

/// The example's command line against `port`, writing its chart to `svg`.
fn example(port: u16, orders: u32, svg: &Path) -> Command {
    let mut cmd = Command::new(order_system_bin());
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--orders", &orders.to_string()])
        .args(["--timeout-seconds", "120"])
        .arg("--svg")
        .arg(svg);
    cmd
}

/// The JSON of the `order-system: {json}` line, which must be the last line of `stdout`.
fn summary(stdout: &str) -> Value {
    let last = stdout.lines().last().unwrap_or_default();
    let json = last
        .strip_prefix("order-system: ")
        .unwrap_or_else(|| panic!("last line is not the summary: {last:?}\n{stdout}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {json}"))
}

/// Every group had every order: nothing missing, each distinct order counted.
fn assert_complete(s: &Value, orders: u64, out: &str) {
    assert_eq!(
        s["acked"], orders,
        "every order acknowledged to the shop:\n{out}"
    );
    assert_eq!(s["timed_out"], false, "{out}");
    assert_eq!(s["missing"], 0, "{out}");
    for g in GROUPS {
        let group = &s["groups"][g];
        assert_eq!(group["missing"], 0, "{g}: acknowledged orders lost:\n{out}");
        assert_eq!(group["distinct"], orders, "{g}:\n{out}");
        assert_eq!(group["foreign"], 0, "{g}:\n{out}");
        assert!(group["drain_seconds"].is_number(), "{g}: drained:\n{out}");
    }
}

/// 300 orders through a durable broker: every group gets every order exactly once (nothing
/// is redelivered without a reconnect), the exit status is 0 and the chart is written.
#[test]
fn every_group_gets_every_order() {
    let data = tempfile::tempdir().unwrap();
    let broker = broker(data.path(), 0);
    let svg = data.path().join("chart.svg");
    let out = run_bounded(
        example(broker.addr.port(), 300, &svg),
        Duration::from_secs(180),
    )
    .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&stdout);
    assert_complete(&s, 300, &stdout);
    for g in GROUPS {
        assert_eq!(
            s["groups"][g]["received"], 300,
            "{g}: no duplicates:\n{stdout}"
        );
    }
    assert_eq!(s["groups"]["sms"]["members"], 3);
    assert_eq!(s["groups"]["redpacket"]["members"], 2);
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(
        chart.starts_with("<svg") && chart.matches("<polyline").count() == 3,
        "{chart}"
    );
}

/// A child process stopped by its PID (SIGKILL) and reaped when the test ends, also when it
/// fails.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--kill-broker`: the example kills the broker with SIGKILL mid-drain; the test restarts it
/// on the same port and data directory as soon as the example says so. The consumers resume
/// their persistent sessions: no acknowledged order is missing in any group, and an order
/// comes at most twice (what was in flight at the kill, or acknowledged but not yet written
/// by the broker, is sent once more). How many that is depends on how far the broker's lazy
/// commits lag on a loaded machine, so the count itself is not bounded here.
#[test]
fn nothing_acknowledged_is_lost_when_the_broker_is_killed_mid_drain() {
    const ORDERS: u64 = 600;
    let data = tempfile::tempdir().unwrap();
    let mut broker = broker(data.path(), 0);
    let port = broker.addr.port();
    let svg = data.path().join("chart.svg");
    let mut cmd = example(port, ORDERS as u32, &svg);
    cmd.args(["--kill-broker", &broker.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Stopped(cmd.spawn().expect("spawn the example"));
    // Stdout is read line by line as it comes (the kill line asks for a restart) and to its
    // end: the reader's channel closes only at EOF, after the example's last line (the
    // summary), which a look at the exit status first could miss.
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.0.stderr.take().unwrap();
    let progress = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    let mut restarted = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if line.starts_with("kill: sent SIGKILL") {
                    // Reap the killed broker, then the same port and data directory again.
                    broker.kill();
                    restarted = Some(self::broker(data.path(), port));
                }
                seen.push(line);
            }
            // EOF: every line the example wrote is in `seen`.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the example ran over 180 s; so far:\n{}", seen.join("\n"))
            }
        }
    }
    // Its stdout is closed: it is exiting (bounded, in case it closed stdout and went on).
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the example closed its stdout but did not exit within 180 s:\n{}",
            seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = seen.join("\n");
    let progress = progress.join().unwrap();
    assert!(
        restarted.is_some(),
        "the example never killed the broker:\n{out}\n{progress}"
    );
    assert!(status.success(), "exit {status:?}\n{out}\n{progress}");
    let s = summary(&out);
    assert_complete(&s, ORDERS, &out);
    assert!(
        s["killed_at_seconds"].is_number() && s["back_at_seconds"].is_number(),
        "{out}"
    );
    for g in GROUPS {
        let group = &s["groups"][g];
        assert!(
            group["max_copies"].as_u64().unwrap() <= 2,
            "{g}: an order came more than twice after one kill:\n{out}"
        );
    }
}
