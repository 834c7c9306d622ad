//! A real `nats-server` (2.11+, JetStream) on free loopback ports, killed on
//! drop, and helpers to run the daemon against it in-process or as a child
//! process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::tmp::tempdir;

/// The nats-server binary: `$NATS_SERVER_BIN`, else the copy `./dev test`
/// installs into `.local/nats`, else `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = crate::repo().join(".local/nats/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// Each start's own ports file directory (a restart on the same store
/// must not read its predecessor's file).
static NEXT_START: AtomicUsize = AtomicUsize::new(0);

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running nats-server with JetStream.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub monitor: u16,
    /// Shared with a restarted server on the same store; removed when the
    /// last one is dropped.
    pub store: std::sync::Arc<crate::tmp::TempDir>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let store = std::sync::Arc::new(tempdir("nats"));
        NatsServer::start_at(0, 0, store)
    }

    /// A server that syncs every JetStream write to disk before it
    /// acknowledges it, so that a `kill -9` of it loses nothing it
    /// acknowledged (the default syncs every two minutes).
    pub fn start_durable() -> NatsServer {
        let store = std::sync::Arc::new(tempdir("nats"));
        NatsServer::start_with(0, 0, store, true)
    }

    /// Starts on given ports and store (a restart reuses both).
    pub fn start_at(
        port: u16,
        monitor: u16,
        store: std::sync::Arc<crate::tmp::TempDir>,
    ) -> NatsServer {
        NatsServer::start_with(port, monitor, store, false)
    }

    /// Starts on given ports and store; `durable`: see [`Self::start_durable`].
    /// Port 0: the server picks a free one (`-p -1`, `-m -1`) and writes
    /// what it picked to a ports file, read back here: no port is reserved
    /// first and bound later (a race with every other process). A restart
    /// on the same store passes the ports the first start got.
    pub fn start_with(
        port: u16,
        monitor: u16,
        store: std::sync::Arc<crate::tmp::TempDir>,
        durable: bool,
    ) -> NatsServer {
        let bin = nats_server_bin();
        let mut cmd = Command::new(&bin);
        let pick = |p: u16| {
            if p == 0 {
                "-1".to_string()
            } else {
                p.to_string()
            }
        };
        let ports_dir = store.join(format!(
            "ports-{}",
            NEXT_START.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&ports_dir).expect("ports file directory");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &pick(port),
            "-m",
            &pick(monitor),
            "-js",
        ])
        .arg("--ports_file_dir")
        .arg(&ports_dir);
        if durable {
            let conf = store.join("durable.conf");
            std::fs::write(
                &conf,
                format!(
                    "jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                    store.join("js").display()
                ),
            )
            .expect("server config");
            cmd.arg("-c").arg(conf);
        } else {
            cmd.arg("-sd").arg(store.as_os_str());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install nats-server 2.11+ (./dev test installs it into .local/nats)",
                    bin.display()
                )
            });
        let mut s = NatsServer {
            child: Some(child),
            port,
            monitor,
            store,
        };
        (s.port, s.monitor) = s.ports_from(&ports_dir);
        s.wait_ready();
        s
    }

    /// The client and monitoring ports the server wrote to its ports file
    /// (`nats-server_<pid>.ports`, JSON) once it listens.
    fn ports_from(&mut self, dir: &Path) -> (u16, u16) {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let file = dir.join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                let port_of = |key: &str| {
                    v[key][0]
                        .as_str()
                        .and_then(|u| u.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                };
                if let (Some(c), Some(m)) = (port_of("nats"), port_of("monitoring")) {
                    return (c, m);
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "no ports file {} after 10 s",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if http_get(self.monitor, "/healthz?js-enabled-only=true")
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server not ready after 10 s");
    }

    /// Stops the server as an operator restarting it does (SIGTERM: it
    /// flushes its store and exits). A SIGKILLed single server may lose
    /// writes it acknowledged but had not yet flushed (JetStream's
    /// `sync_interval`): that is the server's durability, not ours.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the server (`-STOP`: it hangs, holding its
    /// connections; `-CONT`: it goes on).
    pub fn signal(&self, sig: &str) {
        assert!(self.try_signal(sig), "kill {sig} nats-server failed");
    }

    fn try_signal(&self, sig: &str) -> bool {
        self.child.as_ref().is_some_and(|c| {
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Kills the server (the store stays for a restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) server would not die of SIGKILL before it
        // is continued on every system: continue it first.
        self.try_signal("-CONT");
        self.stop();
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
