//! The manifests-directory source: every `*.yaml`, `*.yml` and `*.json` file directly in the
//! directory (hidden files and subdirectories are skipped; symlinks are followed, so ConfigMap
//! volumes work). The directory is watched with inotify (polling if that is unavailable) and also
//! rescanned every few seconds, which catches what inotify cannot see (a replaced directory, a
//! symlink target edited elsewhere). After a change, files whose size or times changed are parsed
//! again and the difference is sent on.
//!
//! A file is parsed only once it has not been modified for a moment, so a file being written
//! (truncated, then filled) is never read half-way. When an object is defined in several files,
//! the first file in name order with a valid definition wins. A file that cannot be parsed keeps
//! contributing what it held before; an object that parses but is invalid is dropped, as if it
//! were not there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tracing::{debug, info, warn};

use super::manifest::{self, Format, Outcome};
use super::{Event, SourceError};
use crate::metrics::Metrics;
use crate::model::net::printable;
use crate::model::{Object, ObjectId};
use crate::state::Change;

/// How long a file must stay unmodified before it is read.
const SETTLE: Duration = Duration::from_millis(150);
/// How long to wait for more events after the first before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(30);
/// Rescan interval without events, and the poll interval when inotify is unavailable.
const RESCAN: Duration = Duration::from_secs(2);

/// Identity and version of a file as seen by `stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }

    /// Modified less than [`SETTLE`] ago (a time in the future counts as settled).
    fn is_fresh(&self, now: SystemTime) -> bool {
        self.modified
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age < SETTLE)
    }
}

/// What one file contributes: object → its valid content (`None`: invalid or ignored).
#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    objects: BTreeMap<ObjectId, Option<Object>>,
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub changes: Vec<Change>,
    /// Some files are still being written: scan again shortly.
    pub unsettled: bool,
}

/// Tracks the directory's files and the objects last sent.
pub struct FileSource {
    dir: PathBuf,
    metrics: Metrics,
    files: BTreeMap<PathBuf, FileEntry>,
    sent: BTreeMap<ObjectId, Object>,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>, metrics: Metrics) -> FileSource {
        FileSource {
            dir: dir.into(),
            metrics,
            files: BTreeMap::new(),
            sent: BTreeMap::new(),
        }
    }

    /// Reads the directory again and returns what changed since the last scan.
    pub fn rescan(&mut self) -> Result<Scan, SourceError> {
        let listing = self.list()?;
        let now = SystemTime::now();
        let mut scan = Scan::default();
        let mut affected = BTreeSet::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listing.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(entry) = self.files.remove(&path) {
                info!(file = %path.display(), "manifest removed");
                affected.extend(entry.objects.into_keys());
            }
        }
        for (path, stamp) in listing {
            if self.files.get(&path).is_some_and(|e| e.stamp == stamp) {
                continue;
            }
            if stamp.is_fresh(now) {
                scan.unsettled = true;
                continue;
            }
            let objects = match self.read(&path) {
                Some(objects) => objects,
                // Unparseable: keep what the file held before (if anything).
                None => match self.files.get_mut(&path) {
                    Some(entry) => {
                        entry.stamp = stamp;
                        continue;
                    }
                    None => BTreeMap::new(),
                },
            };
            if let Some(old) = self.files.get(&path) {
                affected.extend(old.objects.keys().cloned());
            }
            affected.extend(objects.keys().cloned());
            self.files.insert(path, FileEntry { stamp, objects });
        }
        scan.changes = self.changes(affected);
        Ok(scan)
    }

    /// Scans until no file is being written.
    pub fn settled_scan(&mut self) -> Result<Vec<Change>, SourceError> {
        let mut changes = Vec::new();
        loop {
            let scan = self.rescan()?;
            changes.extend(scan.changes);
            if !scan.unsettled {
                return Ok(changes);
            }
            std::thread::sleep(SETTLE);
        }
    }

    /// Manifest files directly in the directory, with their stamps.
    fn list(&self) -> Result<BTreeMap<PathBuf, Stamp>, SourceError> {
        let dir_err = |source| SourceError::Directory {
            path: self.dir.display().to_string(),
            source,
        };
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(dir_err)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if format_of(&path).is_none() {
                continue;
            }
            // Follows symlinks; a dangling link or a directory is skipped.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    files.insert(path, Stamp::of(&meta));
                }
                _ => {}
            }
        }
        Ok(files)
    }

    /// Parses a file; `None` when it cannot be parsed at all (logged and counted).
    fn read(&self, path: &Path) -> Option<BTreeMap<ObjectId, Option<Object>>> {
        let format = format_of(path)?;
        let file = path.display();
        let parsed = match std::fs::metadata(path) {
            Ok(meta) if meta.len() > manifest::MAX_FILE_BYTES => {
                Err(manifest::ManifestError::TooLarge.to_string())
            }
            _ => std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| manifest::parse(&bytes, format).map_err(|e| e.to_string())),
        };
        let found = match parsed {
            Ok(found) => found,
            Err(why) => {
                // The parser quotes the file: keep it on one log line.
                warn!(%file, "skipping unparseable manifest: {}", printable(&why));
                self.metrics.invalid("file", "unparseable");
                return None;
            }
        };
        let mut objects = BTreeMap::new();
        for (index, f) in found.into_iter().enumerate() {
            let object = match f.outcome {
                Outcome::Valid(o) => Some(o),
                Outcome::Ignored(why) => {
                    debug!(%file, object = %f.id, "not proxied: {why}");
                    None
                }
                Outcome::Invalid(e) => {
                    warn!(%file, object = %f.id, field = %e.field, reason = e.reason.as_label(),
                          "skipping invalid object (object {} in file): {}", index + 1, e.detail);
                    self.metrics.invalid(f.id.kind(), e.reason.as_label());
                    None
                }
            };
            if objects.insert(f.id.clone(), object).is_some() {
                warn!(%file, object = %f.id, "object defined twice in one file; the last definition counts");
            }
        }
        Some(objects)
    }

    /// Recomputes the affected objects and returns the difference to what was sent.
    fn changes(&mut self, affected: BTreeSet<ObjectId>) -> Vec<Change> {
        let mut changes = Vec::new();
        for id in affected {
            let mut valid = self
                .files
                .iter()
                .filter_map(|(path, e)| e.objects.get(&id).cloned().flatten().map(|o| (path, o)));
            let winner = valid.next();
            if let (Some((used, _)), Some((ignored, _))) = (&winner, valid.next()) {
                warn!(object = %id, used = %used.display(), ignored = %ignored.display(), "object defined in several files");
            }
            match winner.map(|(_, o)| o) {
                Some(object) => {
                    if self.sent.get(&id) != Some(&object) {
                        self.sent.insert(id, object.clone());
                        changes.push(Change::Upsert(object));
                    }
                }
                None => {
                    if self.sent.remove(&id).is_some() {
                        changes.push(Change::Delete(id));
                    }
                }
            }
        }
        changes
    }

    /// Follows the directory, sending changes, until the receiver goes away. Runs on its own
    /// thread; the initial view ends with [`Event::Synced`].
    pub fn run(mut self, events: mpsc::Sender<Event>) -> Result<(), SourceError> {
        // Watch before the first scan, so no change falls in between.
        let (notify_tx, notify_rx) = mpsc::channel();
        let mut watched = dir_identity(&self.dir);
        let mut watcher = self.watch(notify_tx.clone())?;
        let initial = self.settled_scan()?;
        info!(dir = %self.dir.display(), objects = self.sent.len(), "read manifests");
        if events.send(Event::Changes(initial)).is_err() || events.send(Event::Synced).is_err() {
            return Ok(());
        }
        let mut wait = RESCAN;
        loop {
            match notify_rx.recv_timeout(wait) {
                // Coalesce a burst of events (an editor's write-rename-chmod) into one scan.
                Ok(()) => while notify_rx.recv_timeout(DEBOUNCE).is_ok() {},
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // A replaced directory (a new inode) needs a new watch.
            let now = dir_identity(&self.dir);
            if now != watched && now.is_some() {
                watched = now;
                match self.watch(notify_tx.clone()) {
                    Ok(w) => watcher = w,
                    Err(e) => warn!("{e}; relying on rescans"),
                }
            }
            match self.rescan() {
                Ok(scan) => {
                    wait = if scan.unsettled { SETTLE } else { RESCAN };
                    if !scan.changes.is_empty()
                        && events.send(Event::Changes(scan.changes)).is_err()
                    {
                        drop(watcher);
                        return Ok(());
                    }
                }
                // The directory may be briefly gone (being replaced): keep what we have.
                Err(e) => warn!("{e}; keeping the objects read before"),
            }
        }
    }

    /// inotify on the directory, or polling where inotify is unavailable.
    fn watch(&self, tx: mpsc::Sender<()>) -> Result<Box<dyn Watcher + Send>, SourceError> {
        let handler = move |_event: notify::Result<notify::Event>| {
            let _ = tx.send(());
        };
        let watch_err = |source| SourceError::Watch {
            path: self.dir.display().to_string(),
            source,
        };
        match notify::recommended_watcher(handler.clone()) {
            Ok(mut w) => match w.watch(&self.dir, RecursiveMode::NonRecursive) {
                Ok(()) => return Ok(Box::new(w)),
                Err(e) => warn!(error = %e, "inotify unavailable; polling the manifest directory"),
            },
            Err(e) => warn!(error = %e, "inotify unavailable; polling the manifest directory"),
        }
        let config = notify::Config::default().with_poll_interval(RESCAN);
        let mut w = notify::PollWatcher::new(handler, config).map_err(watch_err)?;
        w.watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        Ok(Box::new(w))
    }
}

/// The directory's device and inode, to notice it being replaced.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("knp-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(Object::Service(s)) => format!("+{} {}", s.key, s.cluster_ips[0]),
                Change::Upsert(o) => format!("+{o:?}"),
                Change::Delete(id) => format!("-{id}"),
            })
            .collect()
    }

    #[test]
    fn files_appear_change_and_disappear() {
        let dir = TempDir::new("basic");
        dir.write("a.yaml", &svc("a", "10.96.0.1"));
        dir.write("notes.txt", "ignored");
        dir.write(".hidden.yaml", &svc("h", "10.96.0.9"));
        let metrics = Metrics::new().unwrap();
        let mut src = FileSource::new(&dir.0, metrics);
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["+default/a 10.96.0.1"]
        );
        assert!(src.settled_scan().unwrap().is_empty(), "nothing changed");
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("a", "10.96.0.2"), svc("b", "10.96.0.3")),
        );
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["+default/a 10.96.0.2", "+default/b 10.96.0.3"]
        );
        std::fs::remove_file(dir.0.join("a.yaml")).unwrap();
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["-Service default/a", "-Service default/b"]
        );
    }

    #[test]
    fn an_unparseable_file_keeps_its_objects_and_an_invalid_object_is_dropped() {
        let dir = TempDir::new("bad");
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("a", "10.96.0.1"), svc("b", "10.96.0.2")),
        );
        let metrics = Metrics::new().unwrap();
        let mut src = FileSource::new(&dir.0, metrics.clone());
        assert_eq!(src.settled_scan().unwrap().len(), 2);
        dir.write("a.yaml", "apiVersion: v1\nkind: [unterminated\n");
        assert!(src.settled_scan().unwrap().is_empty());
        assert_eq!(
            metrics
                .invalid_input
                .with_label_values(&["file", "unparseable"])
                .get(),
            1
        );
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("a", "10.96.0.1"), svc("b", "10.96.0.299")),
        );
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["-Service default/b"]
        );
        assert_eq!(
            metrics
                .invalid_input
                .with_label_values(&["Service", "invalid_address"])
                .get(),
            1
        );
    }

    #[test]
    fn a_file_is_read_only_once_it_stops_changing() {
        let dir = TempDir::new("fresh");
        dir.write("a.yaml", &svc("a", "10.96.0.1"));
        let mut src = FileSource::new(&dir.0, Metrics::new().unwrap());
        let scan = src.rescan().unwrap();
        assert!(
            scan.unsettled && scan.changes.is_empty(),
            "just written: not read yet"
        );
        std::thread::sleep(SETTLE);
        assert_eq!(
            summary(&src.rescan().unwrap().changes),
            ["+default/a 10.96.0.1"]
        );
    }

    #[test]
    fn an_invalid_definition_does_not_hide_a_valid_one_in_a_later_file() {
        let dir = TempDir::new("hide");
        dir.write("a.yaml", &svc("x", "10.96.0.999"));
        dir.write("b.yaml", &svc("x", "10.96.0.2"));
        let mut src = FileSource::new(&dir.0, Metrics::new().unwrap());
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["+default/x 10.96.0.2"]
        );
    }

    #[test]
    fn the_first_file_wins_for_an_object_defined_twice() {
        let dir = TempDir::new("dup");
        dir.write("b.yaml", &svc("x", "10.96.0.2"));
        dir.write("a.yaml", &svc("x", "10.96.0.1"));
        let mut src = FileSource::new(&dir.0, Metrics::new().unwrap());
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["+default/x 10.96.0.1"]
        );
        std::fs::remove_file(dir.0.join("a.yaml")).unwrap();
        assert_eq!(
            summary(&src.settled_scan().unwrap()),
            ["+default/x 10.96.0.2"]
        );
    }
}
