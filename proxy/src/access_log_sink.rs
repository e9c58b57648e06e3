//! Where access log lines go: standard output, standard error or a file, each written by one
//! thread of its own.
//!
//! A request never waits on the disk. Its line is handed to the sink's channel, and the sink's
//! thread writes whatever has queued in one system call, then flushes; under load many lines go
//! out together, and when idle each line is out as soon as it is made. All access logs that name
//! the same file share one sink (and one open file), across reloads, as Envoy's access log
//! manager shares them. Files are opened for appending when the configuration is compiled, so a
//! path that cannot be opened refuses that configuration.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

/// Most bytes written in one system call.
const BATCH_BYTES: usize = 64 * 1024;

/// Where lines are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// The sending end of one destination's writer.
#[derive(Debug)]
pub struct Sink {
    tx: Sender<Vec<u8>>,
    destination: Destination,
}

impl Sink {
    /// Queue one line (with its newline, when the format has one).
    pub fn write(&self, line: Vec<u8>) {
        // The writer thread lives as long as the process: a send cannot fail while it runs.
        let _ = self.tx.send(line);
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

/// The sink of `destination`, shared with every access log that names it.
pub fn open(destination: Destination) -> Result<Arc<Sink>, String> {
    static SINKS: OnceLock<Mutex<HashMap<Destination, Arc<Sink>>>> = OnceLock::new();
    let sinks = SINKS.get_or_init(Default::default);
    // Held only while a configuration is compiled, never by a request.
    let mut sinks = sinks.lock().unwrap_or_else(|e| e.into_inner());
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(out, rx))
        .map_err(|e| format!("cannot start the access log writer: {e}"))?;
    let sink = Arc::new(Sink {
        tx,
        destination: destination.clone(),
    });
    sinks.insert(destination, sink.clone());
    Ok(sink)
}

/// The writer thread: block for a line, take whatever else has queued, write it all at once.
fn write_lines(mut out: Box<dyn Write + Send>, rx: Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    while let Ok(line) = rx.recv() {
        batch.extend_from_slice(&line);
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "access log write failed");
        }
        batch.clear();
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
            a.write(format!("line {i}\n").into_bytes());
        }
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
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
