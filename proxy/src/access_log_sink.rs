//! Where access log lines go: standard output, standard error or a file, each written by one
//! thread of its own.
//!
//! A request never waits on the disk, and never wakes another thread. Its line is appended to
//! the sink's buffer (a lock held for one copy); the sink's thread writes the buffer out once a
//! second, as Envoy flushes its access log files, or as soon as it holds 64 KiB. All access
//! logs that name the same file share one sink (and one open file), across reloads, as Envoy's
//! access log manager shares them. Files are opened for appending when the configuration is
//! compiled, so a path that cannot be opened refuses that configuration. [`flush_all`] writes
//! what is buffered before the process exits.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Buffered bytes that get written at once, without waiting for the interval.
const BATCH_BYTES: usize = 64 * 1024;
/// The longest a line waits in the buffer (Envoy's default file flush interval).
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where lines are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// One destination's buffer and its writer.
pub struct Sink {
    buffer: Mutex<Vec<u8>>,
    /// Wakes the writer when the buffer is full, or for a flush.
    wake: Condvar,
    /// The writer's output, behind a lock so that [`flush_all`] can write from another thread.
    out: Mutex<Box<dyn Write + Send>>,
    destination: Destination,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Append one line (with its newline, when the format has one).
    pub fn write(&self, line: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(line);
        if buffer.len() >= BATCH_BYTES {
            self.wake.notify_one();
        }
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Write out what is buffered now.
    fn flush(&self, spare: &mut Vec<u8>) {
        {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *buffer, spare);
        }
        if spare.is_empty() {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(spare).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, destination = ?self.destination, "access log write failed");
        }
        spare.clear();
    }

    /// The writer thread: wait for a full buffer or the interval, then write it out.
    fn write_loop(&self) {
        let mut spare = Vec::with_capacity(BATCH_BYTES);
        loop {
            {
                let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .wake
                    .wait_timeout_while(buffer, FLUSH_INTERVAL, |b| b.len() < BATCH_BYTES);
            }
            self.flush(&mut spare);
        }
    }
}

fn sinks() -> &'static Mutex<HashMap<Destination, Arc<Sink>>> {
    static SINKS: OnceLock<Mutex<HashMap<Destination, Arc<Sink>>>> = OnceLock::new();
    SINKS.get_or_init(Default::default)
}

/// The sink of `destination`, shared with every access log that names it.
pub fn open(destination: Destination) -> Result<Arc<Sink>, String> {
    // Held only while a configuration is compiled or at exit, never by a request.
    let mut sinks = sinks().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sink) = sinks.get(&destination) {
        return Ok(sink.clone());
    }
    let out: Box<dyn Write + Send> = match &destination {
        Destination::Stdout => Box::new(std::io::stdout()),
        Destination::Stderr => Box::new(std::io::stderr()),
        Destination::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open access log file {}: {e}", path.display()))?,
        ),
    };
    let sink = Arc::new(Sink {
        buffer: Mutex::new(Vec::with_capacity(BATCH_BYTES)),
        wake: Condvar::new(),
        out: Mutex::new(out),
        destination: destination.clone(),
    });
    let writer = sink.clone();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.write_loop())
        .map_err(|e| format!("cannot start the access log writer: {e}"))?;
    sinks.insert(destination, sink.clone());
    Ok(sink)
}

/// Write out every sink's buffer (at exit).
pub fn flush_all() {
    let sinks: Vec<Arc<Sink>> = sinks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut spare = Vec::new();
    for sink in sinks {
        sink.flush(&mut spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_shared_and_written_in_order() {
        let dir = std::env::temp_dir().join(format!("sluice-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let a = open(Destination::File(path.clone())).unwrap();
        let b = open(Destination::File(path.clone())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..100 {
            a.write(format!("line {i}\n").as_bytes());
        }
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        flush_all();
        let mut got = String::new();
        for _ in 0..200 {
            got = std::fs::read_to_string(&path).unwrap();
            if got.len() >= want.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unopenable_file_is_an_error() {
        let err = open(Destination::File("/nonexistent-dir/x/access.log".into())).unwrap_err();
        assert!(err.contains("/nonexistent-dir/x/access.log"), "{err}");
    }
}
