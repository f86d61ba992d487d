//! A moto server of a test's own, for tests that restart SQS (never the shared one).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `moto_server` on 127.0.0.1:`port`, stopped when dropped.
pub struct Moto {
    port: u16,
    child: Option<Child>,
}

impl Moto {
    /// Starts moto on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> Moto {
        let mut moto = Moto { port, child: None };
        moto.spawn();
        moto
    }

    /// The broker URL for this server, with extra URL `options`.
    pub fn url(&self, options: &str) -> String {
        let url = format!("sqs://127.0.0.1:{}?region=us-east-1", self.port);
        if options.is_empty() {
            url
        } else {
            format!("{url}&{options}")
        }
    }

    /// Stops the server and starts a fresh one: every queue is gone.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again after [`stop`](Self::stop): every queue is gone.
    pub fn resume(&mut self) {
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (see ENVIRONMENT.md)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "moto did not stop on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
