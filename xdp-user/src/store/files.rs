//! The state directory's files: the snapshot written atomically (temporary
//! file, fsync, backup hard link, rename, fsync of the directory), the
//! journal appended with one `fdatasync`; their content is `codec.rs`.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    codec::{self, ParseError, State, VERSION},
    record::{AllowRecord, PolicyRecord},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path} is corrupt ({reason}). ampguard will not start from it and will not overwrite it; the data plane keeps enforcing what it had. Inspect it, then either fix it, restore the previous version ({backup}), or move it away to start empty")]
    Corrupt { path: PathBuf, backup: PathBuf, reason: String },
    #[error("state file {path} has version {found}; this ampguard reads versions 1 and {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The files of one state directory. Only the store's persister writes them.
#[derive(Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("state.json") }
    }

    /// The snapshot.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn backup_path(&self) -> PathBuf {
        self.path.with_extension("json.bak")
    }

    pub(crate) fn journal_path(&self) -> PathBuf {
        self.path.with_extension("journal")
    }

    /// Bytes in the journal now (0 when there is none).
    pub(crate) fn journal_len(&self) -> u64 {
        fs::metadata(self.journal_path()).map(|m| m.len()).unwrap_or(0)
    }

    fn corrupt(&self, path: PathBuf, reason: String) -> StateError {
        StateError::Corrupt { path, backup: self.backup_path(), reason }
    }

    /// The snapshot with the journal replayed on it; an empty state when
    /// there is neither.
    pub fn load(&self) -> Result<State, StateError> {
        self.load_and_check().map(|(s, _)| s)
    }

    /// Also says whether the files want a new snapshot: none yet, an old
    /// version, or a journal with changes in it.
    pub(crate) fn load_and_check(&self) -> Result<(State, bool), StateError> {
        let mut stale = false;
        let mut state = match fs::read(&self.path) {
            Ok(bytes) => {
                let (state, version) = codec::parse_versioned(&bytes).map_err(|e| match e {
                    ParseError::Version(found) => StateError::Version { path: self.path.clone(), found },
                    ParseError::Bad(reason) => self.corrupt(self.path.clone(), reason),
                })?;
                stale |= version != VERSION;
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                stale = true;
                State::empty()
            }
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let jpath = self.journal_path();
        let before = state.seq;
        match fs::read(&jpath) {
            Ok(bytes) => codec::replay(&mut state, &bytes).map_err(|reason| self.corrupt(jpath, reason))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => stale = true,
            Err(source) => return Err(StateError::Read { path: jpath, source }),
        }
        let changed = state.seq != before;
        Ok((state, stale || changed))
    }

    /// Write a snapshot atomically (the one replaced becomes the backup), then
    /// empty the journal: it continues from this snapshot. Returns the
    /// snapshot's size in bytes.
    pub fn save<'a>(
        &self,
        seq: u64,
        next_id: u64,
        policies: impl Iterator<Item = &'a Arc<PolicyRecord>> + Clone,
        allowlist: &[AllowRecord],
    ) -> Result<u64, StateError> {
        let err = |source| StateError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let size = {
            let f = create_private(&tmp).map_err(err)?;
            let mut w = BufWriter::with_capacity(1 << 16, f);
            // Streamed, compact: no copy of the whole state in memory.
            codec::write_snapshot(&mut w, seq, next_id, policies, allowlist).map_err(err)?;
            w.write_all(b"\n").map_err(err)?;
            let f = w.into_inner().map_err(|e| err(e.into_error()))?;
            f.sync_all().map_err(err)?;
            f.metadata().map_err(err)?.len()
        };
        if self.path.exists() {
            // Keep the last good snapshot: a hard link, so the swap below is still atomic.
            let _ = fs::remove_file(self.backup_path());
            fs::hard_link(&self.path, self.backup_path()).map_err(err)?;
        }
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        self.reset_journal(seq)?;
        Ok(size)
    }

    /// Replace the journal by an empty one that continues snapshot `base`
    /// (written beside it and renamed over it, so a crash leaves one or the other).
    fn reset_journal(&self, base: u64) -> Result<(), StateError> {
        let path = self.journal_path();
        let err = |source| StateError::Write { path: path.clone(), source };
        let tmp = path.with_extension("journal.tmp");
        {
            let mut f = create_private(&tmp).map_err(err)?;
            f.write_all(&codec::journal_header(base)).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, &path).map_err(err)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Append journal lines and make them durable (one `fdatasync`).
    pub(crate) fn append(&self, lines: &[u8]) -> Result<(), StateError> {
        let path = self.journal_path();
        let err = |source| StateError::Write { path: path.clone(), source };
        let mut f = OpenOptions::new().append(true).open(&path).map_err(err)?;
        f.write_all(lines).map_err(err)?;
        f.sync_data().map_err(err)
    }
}

/// A new file only root can read (0600): the state names every victim and
/// comment. Also set on a file a crash left behind, whose mode may differ.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::{
        super::codec::{encode, fixtures::*, journal_line, parse, Change},
        *,
    };

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ampguard-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn save(f: &StateFile, s: &State) {
        f.save(s.seq, s.next_id, s.policies.iter(), &s.allowlist).unwrap();
    }

    #[test]
    fn snapshot_round_trip_shares_rule_sets_and_keeps_a_backup() {
        let d = tmpdir("rt");
        let f = StateFile::new(&d);
        assert_eq!(f.load().unwrap(), State::empty(), "no files: empty state");
        let mut s = sample();
        save(&f, &s);
        let back = f.load().unwrap();
        assert_eq!(back, s);
        let ps: Vec<_> = back.policies.iter().collect();
        assert!(Arc::ptr_eq(&ps[0].rules, &ps[1].rules), "one rule set in memory for both");
        let text = fs::read_to_string(f.path()).unwrap();
        assert_eq!(text.matches("memcached").count(), 1, "one rule set in the file: {text}");
        s.next_id = 9;
        save(&f, &s);
        assert_eq!(f.load().unwrap().next_id, 9);
        assert_eq!(parse(&fs::read(f.backup_path()).unwrap()).unwrap().next_id, 4, "backup is the previous snapshot");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn journal_replays_on_the_snapshot() {
        let d = tmpdir("journal");
        let f = StateFile::new(&d);
        let s = sample();
        save(&f, &s);
        let rules = drop_memcached();
        let mut lines = Vec::new();
        lines.extend(journal_line(5, Change::PutPolicy(policy("p-7", "198.51.100.0/24", &rules))).unwrap());
        lines.extend(journal_line(6, Change::DelPolicy("p-1".into())).unwrap());
        lines.extend(journal_line(7, Change::DelAllow("a-2".into())).unwrap());
        lines.extend(
            journal_line(
                8,
                Change::PutAllow(AllowRecord {
                    id: "a-8".into(),
                    prefix: "192.0.2.0/28".parse().unwrap(),
                    comment: None,
                    created_at: at("2026-11-25T17:00:00Z"),
                }),
            )
            .unwrap(),
        );
        f.append(&lines).unwrap();
        let back = f.load().unwrap();
        assert_eq!(back.seq, 8);
        assert_eq!(back.next_id, 9, "above every id seen");
        assert_eq!(back.policies.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p-3", "p-7"]);
        assert_eq!(back.allowlist.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a-8"]);

        // Compaction: the snapshot holds everything, the journal starts again.
        save(&f, &back);
        assert!(f.journal_len() < 40, "journal is only its header again");
        assert_eq!(f.load().unwrap(), back);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_corruption() {
        let d = tmpdir("torn");
        let f = StateFile::new(&d);
        save(&f, &sample());
        let good = journal_line(5, Change::DelPolicy("p-1".into())).unwrap();
        let torn = journal_line(6, Change::DelPolicy("p-3".into())).unwrap();
        f.append(&good).unwrap();
        f.append(&torn[..torn.len() - 3]).unwrap();
        let back = f.load().unwrap();
        assert_eq!((back.seq, back.policies.len()), (5, 1), "the cut line was never acknowledged");

        let mut j = fs::read(f.journal_path()).unwrap();
        j.extend_from_slice(b"\n");
        fs::write(f.journal_path(), &j).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.journal") && e.contains("line 3"), "{e}");
        assert_eq!(fs::read(f.journal_path()).unwrap(), j, "left untouched");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn lines_the_snapshot_holds_are_skipped_and_a_gap_is_refused() {
        let d = tmpdir("gap");
        let f = StateFile::new(&d);
        let s = sample(); // seq 4
        save(&f, &s);
        // A crash after the snapshot's rename, before the journal was emptied:
        // the old journal still holds seq 3 and 4, which the snapshot has.
        let mut old = b"{\"journal\":1,\"base\":2}\n".to_vec();
        old.extend(journal_line(3, Change::DelPolicy("p-9".into())).unwrap());
        old.extend(journal_line(4, Change::DelPolicy("p-9".into())).unwrap());
        fs::write(f.journal_path(), &old).unwrap();
        assert_eq!(f.load().unwrap(), s);
        // A journal that continues a later snapshot than state.json (an old backup restored by hand).
        fs::write(f.journal_path(), b"{\"journal\":1,\"base\":40}\n").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("continues snapshot 40"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_snapshot_is_reported_and_kept() {
        let d = tmpdir("corrupt");
        let f = StateFile::new(&d);
        save(&f, &sample());
        let good = fs::read(f.path()).unwrap();
        fs::write(f.path(), &good[..good.len() / 2]).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json.bak"), "{e}");
        assert_eq!(fs::read(f.path()).unwrap(), &good[..good.len() / 2], "left untouched");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn state_files_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("modes");
        let f = StateFile::new(&dir);
        // A leftover temporary file from a crash, world-readable.
        fs::create_dir_all(&dir).unwrap();
        fs::write(f.path().with_extension("json.tmp"), b"x").unwrap();
        fs::set_permissions(f.path().with_extension("json.tmp"), fs::Permissions::from_mode(0o644)).unwrap();
        save(&f, &sample());
        save(&f, &sample());
        for p in [f.path().to_path_buf(), f.journal_path(), f.backup_path()] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_next_id_not_above_the_ids_in_use_is_corrupt() {
        let text = String::from_utf8(encode(&sample())).unwrap();
        for n in [1, 3] {
            let reuse = text.replace("\"next_id\":4", &format!("\"next_id\":{n}"));
            let e = parse(reuse.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("p-3") && e.contains("reuse") && e.contains("to 4 or more"), "next_id {n}: {e}");
        }
        // The allowlist's ids come from the same counter.
        let allow = text.replace("\"next_id\":4", "\"next_id\":2").replace("\"id\":\"p-3\"", "\"id\":\"p-0\"");
        assert!(parse(allow.as_bytes()).unwrap_err().to_string().contains("a-2"), "{allow}");
        // A state file refusing to load is reported as corrupt and kept.
        let dir = tmpdir("next-id");
        let f = StateFile::new(&dir);
        fs::create_dir_all(&dir).unwrap();
        let reuse = text.replace("\"next_id\":4", "\"next_id\":1");
        fs::write(f.path(), &reuse).unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }) && e.to_string().contains("next_id"), "{e}");
        assert_eq!(fs::read_to_string(f.path()).unwrap(), reuse, "kept as it was");
    }
}
