//! Where access log lines go: standard output, standard error or a file, each written by one
//! thread of its own.
//!
//! A request never waits on the disk, and never wakes another thread. Its line is appended to
//! the sink's buffer (a lock held for one copy); the sink's thread writes the buffer out once a
//! second (Envoy flushes its files on a timer too, every 10 s by default), or as soon as it
//! holds 64 KiB. All access logs that name the same file share one sink (and one open file),
//! across reloads, as Envoy's access log manager shares them. Files are opened for appending when the configuration is
//! compiled, so a path that cannot be opened refuses that configuration. [`flush_all`] writes
//! what is buffered before the process exits. [`reopen_all`] opens every file again at its path
//! (Envoy's `POST /reopen_logs` and SIGUSR1), so that after a log rotator renamed a file, new
//! lines go to a new file where the configuration says.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Buffered bytes that get written at once, without waiting for the interval.
const BATCH_BYTES: usize = 64 * 1024;
/// The longest a line waits in the buffer.
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
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_to(&mut out, spare);
    }

    /// Write what is buffered now to `out`, the sink's output, locked by the caller. The output
    /// is locked before the buffer is taken, so that lines taken from the buffer are written
    /// to the output they were taken for, even when [`reopen_all`] replaces it.
    fn flush_to(&self, out: &mut Box<dyn Write + Send>, spare: &mut Vec<u8>) {
        {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *buffer, spare);
        }
        if spare.is_empty() {
            return;
        }
        if let Err(e) = out.write_all(spare).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, destination = ?self.destination, "access log write failed");
        }
        spare.clear();
    }

    /// Open this sink's file again at its path, after writing out what is buffered (see
    /// [`reopen_all`]); false for standard output and standard error.
    fn reopen(&self, spare: &mut Vec<u8>) -> Result<bool, String> {
        let Destination::File(path) = &self.destination else {
            return Ok(false);
        };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_to(&mut out, spare);
        *out = Box::new(open_file(path)?);
        Ok(true)
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
        Destination::File(path) => Box::new(open_file(path)?),
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

/// `path` opened for appending, created when missing.
fn open_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open access log file {}: {e}", path.display()))
}

/// Every sink opened so far.
fn all_sinks() -> Vec<Arc<Sink>> {
    sinks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// Write out every sink's buffer (at exit).
pub fn flush_all() {
    let mut spare = Vec::new();
    for sink in all_sinks() {
        sink.flush(&mut spare);
    }
}

/// Open every access log file again at its path: what was buffered goes to the file that was
/// open, later lines to the file now at the path (created if a log rotator moved the old one
/// away). A file that cannot be opened again keeps the one it had; the errors are returned
/// together. Returns how many files were reopened. Blocks on the file system: call it off the
/// serving threads.
pub fn reopen_all() -> Result<usize, String> {
    let mut spare = Vec::new();
    let mut reopened = 0;
    let mut errors = Vec::new();
    for sink in all_sinks() {
        match sink.reopen(&mut spare) {
            Ok(true) => reopened += 1,
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(reopened)
    } else {
        Err(errors.join("; "))
    }
}

/// [`reopen_all`] on a blocking thread, for the admin endpoint and the SIGUSR1 handler.
pub async fn reopen_all_off_thread() -> Result<usize, String> {
    tokio::task::spawn_blocking(reopen_all)
        .await
        .unwrap_or_else(|e| Err(format!("reopening access logs did not finish: {e}")))
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
    fn reopening_moves_later_lines_to_a_new_file_at_the_path() {
        // Sinks are shared process-wide, so this test works on its sink alone: other tests'
        // files may be gone by the time a reopen_all would look at them.
        let dir = std::env::temp_dir().join(format!("sluice-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let sink = open(Destination::File(path.clone())).unwrap();
        let mut spare = Vec::new();
        sink.write(b"before\n");
        // A log rotator renames the file; lines still buffered belong to it.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.write(b"buffered\n");
        assert_eq!(sink.reopen(&mut spare), Ok(true));
        sink.write(b"after\n");
        sink.flush(&mut spare);
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\nbuffered\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        // A path that cannot be opened any more is an error that names it.
        std::fs::remove_dir_all(&dir).unwrap();
        let err = sink.reopen(&mut spare).unwrap_err();
        assert!(err.contains("access.log"), "{err}");
        let stdout = open(Destination::Stdout).unwrap();
        assert_eq!(stdout.reopen(&mut spare), Ok(false));
    }

    #[test]
    fn an_unopenable_file_is_an_error() {
        let err = open(Destination::File("/nonexistent-dir/x/access.log".into())).unwrap_err();
        assert!(err.contains("/nonexistent-dir/x/access.log"), "{err}");
    }
}
