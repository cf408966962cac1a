//! The router's home directory: its persistent peer name, the lock that
//! keeps a second router off the same state, its pid file, its log and the
//! targets the user asked for.
//!
//! ```text
//! HOME/peer-name     the peer name, one line; survives restarts
//! HOME/weft.lock     flock()ed for the daemon's lifetime
//! HOME/weft.pid      the daemon's pid; removed on clean exit
//! HOME/weft.log      stdout and stderr of a daemonised router
//! HOME/targets.json  user targets, rewritten whenever they change
//! HOME/attachments.json  namespaces attached to the bridge (`weft attach`)
//! HOME/exposed.json  the host's addresses on the bridge (`weft expose`)
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::identity::{IdentityError, PeerName};

/// How long opening a home waits for a previous router's lock to go.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
use crate::core::wire::addr::PeerAddr;
use crate::shell::describe_io_error;

/// Where the router keeps its state unless told otherwise.
pub const DEFAULT_HOME: &str = "/var/lib/weft";

const PEER_NAME_FILE: &str = "peer-name";
const LOCK_FILE: &str = "weft.lock";
const PID_FILE: &str = "weft.pid";
const LOG_FILE: &str = "weft.log";
const TARGETS_FILE: &str = "targets.json";
pub const ATTACHMENTS_FILE: &str = "attachments.json";
const EXPOSED_FILE: &str = "exposed.json";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot create home directory {}: {}; pick another --home or fix its permissions", .dir.display(), describe_io_error(.error))]
    Create { dir: PathBuf, error: io::Error },
    #[error(
        "another weft router is already running with home {}{}; stop it with `weft stop` or use another --home",
        .dir.display(),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot {action} {}: {}", .path.display(), describe_io_error(.error))]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{} does not hold a valid peer name ({error}); delete the file to get a new name, or pass --name", .path.display())]
    BadName { path: PathBuf, error: IdentityError },
    #[error("{} does not hold a list of targets ({why}); fix or delete it, or launch without --resume", .path.display())]
    BadTargets { path: PathBuf, why: String },
}

/// An opened, locked home directory. The lock is released when this is
/// dropped, and the pid file (if [`Home::write_pid`] wrote it) removed.
#[derive(Debug)]
pub struct Home {
    dir: PathBuf,
    /// Holds the exclusive lock for as long as it is open.
    _lock: File,
    wrote_pid: bool,
}

impl Home {
    /// Creates `dir` (mode 0700) if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, HomeError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| HomeError::Create {
                dir: dir.to_owned(),
                error,
            })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|error| HomeError::Io {
                action: "open lock file",
                path: lock_path.clone(),
                error,
            })?;
        take_lock(dir, &lock, &lock_path)?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
            wrote_pid: false,
        })
    }

    /// Fails like [`Home::open`] if a router holds `dir`, but creates
    /// nothing: a launch checks this before anything else, so a failed one
    /// leaves no directory behind.
    pub fn check_free(dir: &Path) -> Result<(), HomeError> {
        let lock_path = dir.join(LOCK_FILE);
        match File::open(&lock_path) {
            Ok(lock) => take_lock(dir, &lock, &lock_path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(HomeError::Io {
                action: "open lock file",
                path: lock_path,
                error,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir)
    }

    pub fn targets_path(&self) -> PathBuf {
        self.dir.join(TARGETS_FILE)
    }

    pub fn attachments_path(&self) -> PathBuf {
        self.dir.join(ATTACHMENTS_FILE)
    }

    pub fn exposed_path(&self) -> PathBuf {
        self.dir.join(EXPOSED_FILE)
    }

    /// The peer name: `requested` if given (and persisted for next time),
    /// else the persisted one, else a fresh random one (persisted).
    pub fn peer_name(&self, requested: Option<PeerName>) -> Result<PeerName, HomeError> {
        let path = self.dir.join(PEER_NAME_FILE);
        let stored = match fs::read_to_string(&path) {
            Ok(text) => Some(
                text.trim()
                    .parse::<PeerName>()
                    .map_err(|error| HomeError::BadName {
                        path: path.clone(),
                        error,
                    }),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(HomeError::Io {
                    action: "read",
                    path,
                    error,
                });
            }
        };
        let name = match (requested, stored) {
            (Some(name), Some(Ok(old))) if name == old => return Ok(name),
            (Some(name), _) => name,
            (None, Some(stored)) => return stored,
            (None, None) => PeerName::random(&mut rand::rng()),
        };
        write_atomically(&path, format!("{name}\n").as_bytes())?;
        Ok(name)
    }

    /// Records this process as the running router.
    pub fn write_pid(&mut self) -> Result<(), HomeError> {
        write_atomically(
            &self.dir.join(PID_FILE),
            format!("{}\n", std::process::id()).as_bytes(),
        )?;
        self.wrote_pid = true;
        Ok(())
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if self.wrote_pid {
            // Best effort: a stale pid file is harmless because the lock,
            // not the pid file, decides whether a router is running.
            let _ = fs::remove_file(self.dir.join(PID_FILE));
        }
    }
}

/// Locks `lock` (the open `lock_path` of home `dir`), waiting briefly for a
/// router that is going away.
fn take_lock(dir: &Path, lock: &File, lock_path: &Path) -> Result<(), HomeError> {
    // A router that was just stopped or killed releases the lock when
    // its last thread exits, a few milliseconds later; `kill -9` then
    // `weft launch` must not fail on that.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut attempt = lock.try_lock();
    while matches!(attempt, Err(TryLockError::WouldBlock)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        attempt = lock.try_lock();
    }
    match attempt {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(dir.join(PID_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(HomeError::Locked {
                dir: dir.to_owned(),
                pid,
            });
        }
        Err(TryLockError::Error(error)) => {
            return Err(HomeError::Io {
                action: "lock",
                path: lock_path.to_owned(),
                error,
            });
        }
    }
    Ok(())
}

/// Where a router with home `dir` writes its log when daemonised.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// Where a router with home `dir` persists its user targets.
pub fn targets_path(dir: &Path) -> PathBuf {
    dir.join(TARGETS_FILE)
}

/// Reads a JSON list [`save_list`] wrote; no file means an empty list.
/// `bad` makes the error for a file that holds no such list.
pub(crate) fn read_list<T: DeserializeOwned, E: From<HomeError>>(
    path: &Path,
    bad: impl FnOnce(serde_json::Error) -> E,
) -> Result<Vec<T>, E> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(bad),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(HomeError::Io {
            action: "read",
            path: path.to_owned(),
            error,
        }
        .into()),
    }
}

/// Saves `list` as pretty-printed JSON, atomically; `what` names the list
/// in an error ("targets").
pub(crate) fn save_list<T: Serialize>(
    path: &Path,
    what: &'static str,
    list: &[T],
) -> Result<(), HomeError> {
    let mut json = serde_json::to_vec_pretty(list).map_err(|e| HomeError::Io {
        action: what,
        path: path.to_owned(),
        error: e.into(),
    })?;
    json.push(b'\n');
    write_atomically(path, &json)
}

/// Reads the targets [`save_targets`] wrote; no file means none.
pub fn load_targets(path: &Path) -> Result<Vec<PeerAddr>, HomeError> {
    let bad = |why: String| HomeError::BadTargets {
        path: path.to_owned(),
        why,
    };
    let list: Vec<String> = read_list(path, |e| bad(e.to_string()))?;
    list.iter()
        .map(|t| {
            t.parse()
                .map_err(|e: crate::core::wire::addr::AddrError| bad(e.to_string()))
        })
        .collect()
}

/// Removes everything a router keeps in `dir` (`weft reset`), and `dir`
/// itself if nothing else is in it. Refuses while a router holds it.
/// Returns the files removed.
pub fn reset(dir: &Path) -> Result<Vec<PathBuf>, HomeError> {
    Home::check_free(dir)?;
    let mut removed = Vec::new();
    for name in [
        PEER_NAME_FILE,
        TARGETS_FILE,
        ATTACHMENTS_FILE,
        EXPOSED_FILE,
        PID_FILE,
        LOG_FILE,
        LOCK_FILE,
        // A crashed router's socket (a clean stop removes it).
        crate::shell::api_socket::SOCKET_FILE,
    ] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(HomeError::Io {
                    action: "remove",
                    path,
                    error,
                });
            }
        }
    }
    // Only an empty directory goes: it may be one the user shares.
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

/// Persists the user's targets as a JSON array of `HOST:PORT` strings.
pub fn save_targets(path: &Path, targets: &[PeerAddr]) -> Result<(), HomeError> {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    save_list(path, "encode targets for", &list)
}

/// Writes via a temporary file and a rename, so a crash never leaves a
/// half-written file behind.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), HomeError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let io_err = |action, error| HomeError::Io {
        action,
        path: path.to_owned(),
        error,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("write", e))?;
    file.write_all(contents).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("write", e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("write", e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let home = Home::open(&dir).unwrap();
        assert_eq!(home.dir(), dir);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn peer_name_is_generated_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Home::open(tmp.path()).unwrap().peer_name(None).unwrap();
        let again = Home::open(tmp.path()).unwrap().peer_name(None).unwrap();
        assert_eq!(first, again);
        let text = fs::read_to_string(tmp.path().join(PEER_NAME_FILE)).unwrap();
        assert_eq!(text, format!("{first}\n"));
    }

    #[test]
    fn requested_name_overrides_and_is_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        Home::open(tmp.path()).unwrap().peer_name(None).unwrap();
        let wanted: PeerName = "7a:1f:00:9c:3e:01".parse().unwrap();
        let home = Home::open(tmp.path()).unwrap();
        assert_eq!(home.peer_name(Some(wanted)).unwrap(), wanted);
        drop(home);
        let home = Home::open(tmp.path()).unwrap();
        assert_eq!(home.peer_name(None).unwrap(), wanted);
    }

    #[test]
    fn a_corrupt_name_file_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(PEER_NAME_FILE), "garbage\n").unwrap();
        let err = Home::open(tmp.path()).unwrap().peer_name(None).unwrap_err();
        assert!(err.to_string().contains("delete the file"), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.path().join(PEER_NAME_FILE)).unwrap(),
            "garbage\n"
        );
    }

    #[test]
    fn the_lock_keeps_a_second_router_out_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let mut first = Home::open(tmp.path()).unwrap();
        first.write_pid().unwrap();
        let err = Home::open(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another weft router is already running with home {} (pid {}); stop it with `weft stop` or use another --home",
                tmp.path().display(),
                std::process::id()
            )
        );
        drop(first);
        assert!(!tmp.path().join(PID_FILE).exists(), "pid file removed");
        Home::open(tmp.path()).unwrap();
    }

    #[test]
    fn targets_are_saved_as_a_json_list() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(TARGETS_FILE);
        let targets: Vec<PeerAddr> =
            vec!["192.0.2.7".parse().unwrap(), "host-b:7000".parse().unwrap()];
        save_targets(&path, &targets).unwrap();
        let saved: Vec<String> = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved, ["192.0.2.7:6783", "host-b:7000"]);
    }
}
