//! Debian's Mosquitto broker (`/usr/sbin/mosquitto`, installed by
//! `scripts/install-test-deps.sh`) as a real peer: on a free loopback port, waited for until it
//! accepts connections, stopped by its PID.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A Mosquitto broker on a loopback port, configured in its own directory, so that it can be
/// stopped and started again on the same port (with its sessions, given [`Mosquitto::PERSISTENT`]).
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
    extra: String,
}

impl Mosquitto {
    /// Configuration lines for persistence in the broker's directory (`{dir}` is replaced).
    pub const PERSISTENT: &'static str =
        "persistence true\npersistence_location {dir}/\nautosave_interval 1\n";

    /// Starts one on a free port in `dir`; `extra` is added to its configuration (listener
    /// options such as TLS files, `acl_file`, [`Mosquitto::PERSISTENT`]; `{dir}` in it is
    /// replaced by `dir`). A port taken between choosing and binding it makes mosquitto exit:
    /// then another port is tried. Panics if Mosquitto is not installed or does not start.
    pub fn start(dir: &Path, extra: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is not installed: run scripts/install-test-deps.sh (Debian package mosquitto)"
        );
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut m = Mosquitto {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir: dir.to_path_buf(),
                extra: extra.replace("{dir}", &dir.display().to_string()),
            };
            if m.run() {
                return m;
            }
        }
        panic!("mosquitto did not start; its log:\n{}", log_of(dir));
    }

    /// Starts the process on `self.addr`; true once it accepts connections.
    fn run(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        // `user root`: run as root (as on CI), mosquitto would otherwise switch to the
        // `mosquitto` user, which cannot use the scratch directory; ignored when not root.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{extra}\nallow_anonymous true\nuser root\n\
                 log_dest file {dir}/mosquitto.log\nlog_type all\n",
                port = self.addr.port(),
                extra = self.extra,
                dir = self.dir.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Still running once the port answers: the answer is its, not another process's.
            let exited = child.try_wait().unwrap().is_some();
            if !exited
                && TcpStream::connect(self.addr).is_ok()
                && child.try_wait().unwrap().is_none()
            {
                self.child = Some(child);
                return true;
            }
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        log_of(&self.dir)
    }

    /// Starts it again on the same port (with the sessions it saved).
    pub fn restart(&mut self) {
        assert!(
            self.run(),
            "mosquitto did not start again on {}; its log:\n{}",
            self.addr,
            log_of(&self.dir)
        );
    }

    /// SIGTERM (Mosquitto saves its sessions and queues on a clean exit), and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
}
