//! Group commit of the state file. Each change bumps the store's generation;
//! a writer task saves the whole state (atomically, fsynced; see `state.rs`)
//! whenever it is behind, and everyone waiting for a generation the save
//! covers is answered together. One fsync thus serves every change made while
//! the previous save was running, instead of one each under the store lock.
//!
//! A failed save is reported to the waiting requests (500: the change is in
//! force but not saved) and retried every second; the data plane and the
//! in-memory state stay as they are.

use std::{sync::Arc, time::Duration};

use tokio::sync::{watch, Mutex, Notify};

use super::Store;

#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// Every generation up to this one is on disk.
    pub generation: u64,
    /// The last save failed with this, for generations above `generation`.
    pub error: Option<String>,
}

pub struct Persister {
    kick: Notify,
    durable: watch::Sender<Durable>,
}

impl Persister {
    pub fn new(saved: u64) -> Self {
        Self { kick: Notify::new(), durable: watch::Sender::new(Durable { generation: saved, error: None }) }
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
                if let Some(e) = &d.error {
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
        loop {
            self.kick.notified().await;
            let (gen, file, state) = store.lock().await.snapshot();
            if gen <= self.durable.borrow().generation {
                continue;
            }
            let saved = tokio::task::spawn_blocking(move || file.save(&state)).await;
            match saved {
                Ok(Ok(())) => {
                    self.durable.send_replace(Durable { generation: gen, error: None });
                }
                failed => {
                    let e = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("the writer panicked: {e}"),
                        Ok(Ok(())) => unreachable!(),
                    };
                    tracing::error!("saving the state file failed, retrying in 1 s: {e}");
                    self.durable.send_modify(|d| d.error = Some(e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.kick.notify_one();
                }
            }
        }
    }
}
