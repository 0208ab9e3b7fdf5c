//! A log sink that batches: callers append whole records to a shared buffer, one thread writes them out.
//!
//! tracing-appender's non-blocking writer wakes its thread for nearly every record under load; with
//! one core that hand-off cost more than formatting the record. Here a caller only wakes the writer
//! when the buffer goes from empty to non-empty, and the writer then lets records gather for a few
//! milliseconds before one write. Nothing is dropped: past `MAX_PENDING` bytes, callers wait for the
//! next write.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets records gather once there is one.
const GATHER: Duration = Duration::from_millis(5);
/// Buffered bytes past which callers wait for the writer.
const MAX_PENDING: usize = 16 * 1024 * 1024;
/// The largest buffer kept for reuse after a write: a burst's buffer is let go.
const SPARE_MAX: usize = 1024 * 1024;

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the buffer gets its first record, and on close.
    has_records: Condvar,
    /// Signalled after each write, for callers waiting on a full buffer.
    drained: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// The `MakeWriter` for the tracing subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the writer thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    /// The writer thread; it hands the sink back when it ends.
    thread: Option<JoinHandle<Box<dyn Write + Send>>>,
}

impl BatchWriter {
    /// Starts the writer thread over `sink`.
    pub fn new(mut sink: impl Write + Send + 'static) -> std::io::Result<(BatchWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            has_records: Condvar::new(),
            drained: Condvar::new(),
        });
        let worker = shared.clone();
        let thread =
            std::thread::Builder::new().name("log-writer".into()).spawn(move || -> Box<dyn Write + Send> {
                // The buffer written last, emptied: callers append to it next instead of growing a new
                // one from nothing (its reallocations were a fifth of appending a record).
                let mut spare = Vec::new();
                loop {
                    let mut pending = lock(&worker.pending);
                    while pending.bytes.is_empty() && !pending.closed {
                        pending = worker.has_records.wait(pending).unwrap_or_else(|p| p.into_inner());
                    }
                    if !pending.closed {
                        drop(pending);
                        std::thread::sleep(GATHER);
                        pending = lock(&worker.pending);
                    }
                    let mut bytes = std::mem::replace(&mut pending.bytes, std::mem::take(&mut spare));
                    let closed = pending.closed;
                    drop(pending);
                    worker.drained.notify_all();
                    // A failing sink has nowhere to report to; the records are lost only then.
                    let _ = sink.write_all(&bytes).and_then(|()| sink.flush());
                    if closed {
                        return Box::new(sink);
                    }
                    if bytes.capacity() <= SPARE_MAX {
                        bytes.clear();
                        spare = bytes;
                    }
                }
            })?;
        Ok((BatchWriter { shared: shared.clone() }, FlushGuard { shared, thread: Some(thread) }))
    }
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One record's writer: appends under the lock, so records never interleave.
pub struct RecordWriter<'a> {
    shared: &'a Shared,
}

impl Write for RecordWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        while pending.bytes.len() > MAX_PENDING && !pending.closed {
            pending = self.shared.drained.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(buf);
        drop(pending);
        if was_empty {
            self.shared.has_records.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = RecordWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RecordWriter { shared: &self.shared }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.has_records.notify_one();
        if let Some(Ok(mut sink)) = self.thread.take().map(JoinHandle::join) {
            // Records that arrived after the writer's last batch.
            let rest = std::mem::take(&mut lock(&self.shared.pending).bytes);
            let _ = sink.write_all(&rest).and_then(|()| sink.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_record_arrives_whole_and_the_guard_flushes() {
        let sink = Shared::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = writer.clone();
                s.spawn(move || {
                    for i in 0..2000 {
                        writer.make_writer().write_all(format!("thread {t} record {i}\n").as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000);
        for t in 0..4 {
            let mine: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let expected: Vec<String> = (0..2000).map(|i| format!("thread {t} record {i}")).collect();
            assert_eq!(mine, expected, "records of one thread arrive whole and in order");
        }
    }

    /// Batch after batch (the writer reuses the buffer it wrote last), each record arrives once.
    #[test]
    fn records_of_later_batches_arrive_once() {
        let sink = Shared::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        let mut expected = String::new();
        for batch in 0..5 {
            let record = format!("batch {batch}\n");
            writer.make_writer().write_all(record.as_bytes()).unwrap();
            expected.push_str(&record);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while sink.0.lock().unwrap().len() < expected.len() {
                assert!(std::time::Instant::now() < deadline, "batch {batch} was not written");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(guard);
        assert_eq!(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap(), expected);
    }
}
