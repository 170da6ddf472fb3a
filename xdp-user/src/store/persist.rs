//! Group commit of the state files. Each change bumps the store's generation
//! and leaves a journal line; a writer task appends every pending line with
//! one `fdatasync` whenever it is behind, and everyone waiting for a
//! generation that write covers is answered together. The cost of a change
//! is its own line, whatever the size of the table.
//!
//! When the journal has grown past the snapshot (and past `MIN_COMPACT_BYTES`)
//! the writer writes a new snapshot instead, which empties the journal: the
//! files stay within about twice the snapshot's size, and a change is written
//! at most about twice on average. The snapshot is taken under the store's lock
//! as a list of pointers (milliseconds at 100,000 policies) and written outside it.
//!
//! A failed write is reported to the waiting requests (500: the change is in
//! force but not saved) and retried every second, as a full snapshot (a
//! failed append may have left part of a line behind); the data plane and the
//! in-memory state stay as they are.
//!
//! A start that replayed a journal (or read an old version) owes a snapshot;
//! the writer writes it first, retrying like any failed write, so a full disk
//! delays the files, never the start. Until then no journal line is written.

use std::{sync::Arc, time::Duration};

use tokio::sync::{watch, Mutex, Notify};

use super::{files::StateFile, Snapshot, Store};

/// The journal is compacted once it is larger than the snapshot and than this.
pub const MIN_COMPACT_BYTES: u64 = 8 << 20;

#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// Every generation up to this one is on disk.
    pub generation: u64,
    /// The last save failed with this; it was to cover generations up to
    /// `failed_upto`. A change made after that attempt waits for the retry.
    pub error: Option<String>,
    pub failed_upto: u64,
}

/// What the writer counts, for /metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub appends: std::sync::atomic::AtomicU64,
    pub snapshots: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    pub journal_bytes: std::sync::atomic::AtomicU64,
    pub snapshot_bytes: std::sync::atomic::AtomicU64,
}

pub struct Persister {
    kick: Notify,
    durable: watch::Sender<Durable>,
    pub stats: WriterStats,
    /// A snapshot must be written before anything else (start, or after a failure).
    snapshot_due: std::sync::atomic::AtomicBool,
}

/// What /v1/status shows of the writer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WriterState {
    /// Every change up to this one is on disk.
    pub saved_generation: u64,
    /// A snapshot is owed (written first, retried every second).
    pub snapshot_due: bool,
    /// The last write failed with this (changes since are in force, not on disk).
    pub error: Option<String>,
}

enum Job {
    Append(Vec<u8>),
    Snapshot(Snapshot),
}

impl Persister {
    pub fn new(saved: u64, file: &StateFile, snapshot_due: bool) -> Self {
        let stats = WriterStats::default();
        stats.journal_bytes.store(file.journal_len(), std::sync::atomic::Ordering::Relaxed);
        let snap = std::fs::metadata(file.path()).map(|m| m.len()).unwrap_or(0);
        stats.snapshot_bytes.store(snap, std::sync::atomic::Ordering::Relaxed);
        let kick = Notify::new();
        if snapshot_due {
            kick.notify_one(); // the writer's first round writes it
        }
        Self {
            kick,
            durable: watch::Sender::new(Durable { generation: saved, error: None, failed_upto: 0 }),
            stats,
            snapshot_due: snapshot_due.into(),
        }
    }

    pub fn state(&self) -> WriterState {
        let d = self.durable.borrow();
        WriterState {
            saved_generation: d.generation,
            snapshot_due: self.snapshot_due.load(std::sync::atomic::Ordering::Relaxed),
            error: d.error.clone(),
        }
    }

    /// Wait until generation `gen` is on disk (or the save that should have
    /// covered it failed).
    pub async fn wait(&self, gen: u64) -> Result<(), String> {
        let mut rx = self.durable.subscribe();
        self.kick.notify_one();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.generation >= gen {
                    return Ok(());
                }
                if let Some(e) = d.error.as_ref().filter(|_| d.failed_upto >= gen) {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err("the state writer stopped".into());
            }
        }
    }

    /// Ask for a save without waiting (the expiry sweeper).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The writer task: runs for the daemon's life.
    pub async fn run(self: Arc<Self>, store: Arc<Mutex<Store>>) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            self.kick.notified().await;
            let must_snapshot = self.snapshot_due.load(Relaxed);
            let (gen, file, job) = {
                let mut s = store.lock().await;
                let gen = s.generation();
                if gen <= self.durable.borrow().generation && !must_snapshot {
                    continue;
                }
                let (journal, snap) = (self.stats.journal_bytes.load(Relaxed), self.stats.snapshot_bytes.load(Relaxed));
                let job = if must_snapshot || journal > snap.max(MIN_COMPACT_BYTES) {
                    Job::Snapshot(s.snapshot())
                } else {
                    Job::Append(s.take_pending().1)
                };
                (gen, s.state_file().clone(), job)
            };
            let writer = self.clone();
            let saved = tokio::task::spawn_blocking(move || match job {
                Job::Append(lines) => {
                    file.append(&lines)?;
                    writer.stats.appends.fetch_add(1, Relaxed);
                    writer.stats.journal_bytes.fetch_add(lines.len() as u64, Relaxed);
                    Ok(())
                }
                Job::Snapshot(s) => {
                    let size = file.save(s.seq, s.next_id, s.policies.iter(), &s.allowlist)?;
                    drop(s);
                    crate::memory::give_back();
                    writer.stats.snapshots.fetch_add(1, Relaxed);
                    writer.stats.snapshot_bytes.store(size, Relaxed);
                    writer.stats.journal_bytes.store(file.journal_len(), Relaxed);
                    Ok::<(), super::StateError>(())
                }
            })
            .await;
            match saved {
                Ok(Ok(())) => {
                    if must_snapshot && self.snapshot_due.swap(false, Relaxed) {
                        tracing::info!("the state snapshot is written");
                    }
                    self.durable.send_replace(Durable { generation: gen, error: None, failed_upto: 0 });
                }
                failed => {
                    let e = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("the writer panicked: {e}"),
                        Ok(Ok(())) => unreachable!(),
                    };
                    tracing::error!("saving the state failed, retrying in 1 s with a full snapshot: {e}");
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.snapshot_due.store(true, Relaxed);
                    self.durable.send_modify(|d| {
                        d.error = Some(e);
                        d.failed_upto = gen;
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.kick.notify_one();
                }
            }
        }
    }
}
