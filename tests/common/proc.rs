//! The one process guard of the tests: spawn with captured output, signals through nix,
//! a bounded wait, and a kill on drop so a failed assertion never leaves a process behind.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A running child whose stdout and stderr are drained as they come (a full pipe would
/// block it) into buffers the test can read at any time; SIGKILLed and reaped when dropped.
pub struct Proc {
    child: Child,
    /// Held open until drop (a child that ends with its stdin lives as long as we do).
    _stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn drain(
    pipe: Option<impl Read + Send + 'static>,
) -> (Arc<Mutex<Vec<u8>>>, Option<JoinHandle<()>>) {
    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = text.clone();
    let reader = pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        })
    });
    (text, reader)
}

impl Proc {
    /// Spawns `c` with stdout and stderr captured; stdin stays as `c` sets it (when piped,
    /// the guard holds it open until drop).
    pub fn spawn(c: &mut Command) -> Self {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {:?}: {e}", c.get_program()));
        let stdin = child.stdin.take();
        let (stdout, out_reader) = drain(child.stdout.take());
        let (stderr, err_reader) = drain(child.stderr.take());
        Self {
            child,
            _stdin: stdin,
            stdout,
            stderr,
            readers: out_reader.into_iter().chain(err_reader).collect(),
            status: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("failed to send {signal} to {}: {e}", self.pid()));
    }

    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// What the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    pub fn alive(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Waits for the exit (failing with its stderr after `limit`, a bound for a hang and no
    /// timing claim), then for the output still in the pipes.
    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "{:?} still running after {limit:?}; stderr:\n{}",
                self.child.id(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // A grandchild may hold the pipes open: the output is complete when the readers
        // end, or as complete as it gets after a short grace.
        let grace = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && grace.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        status
    }

    /// SIGTERM, then [`Proc::wait_timeout`].
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.terminate();
        self.wait_timeout(limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
