//! The unix socket the control API listens on (`--api-socket`).
//!
//! The control API can stop the router, attach namespaces and change the
//! mesh password, and the router runs as root, so who may connect is the
//! whole of its access control: the socket file is mode 0660, owned by the
//! router's user, group `--api-group` (default `weft` if the group exists).
//! A TCP port on loopback cannot say that much: every local process, and
//! any web page a local browser opens, can reach it.
//!
//! Binding is careful about two things. The socket is created with its
//! final mode and group inside a private (0700) directory and only then
//! linked to its public path, so no other user can connect in the moment
//! between `bind` and `chmod`. And an existing file at the path is only
//! replaced when it is a socket nothing answers on (a crashed router's);
//! a live one is another router, reported as such.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use crate::shell::describe_io_error;
use crate::shell::home::DEFAULT_HOME;

/// Where the control API listens for the default home.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";

/// The socket's name inside a non-default home, so that two routers on one
/// host never share a socket unless told to.
pub const SOCKET_FILE: &str = "weft.sock";

/// The group given access to the socket when `--api-group` is not set, if
/// the host has it (like Docker's `docker` group).
pub const DEFAULT_GROUP: &str = "weft";

/// Owner and group may connect; nobody else.
const SOCKET_MODE: u32 = 0o660;

/// A created parent directory (such as `/run/weft`) must stay traversable
/// by the group; the socket's own mode guards it.
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    #[error(
        "another weft router is already answering at {}; stop it (`weft stop --api-socket {}`) or give this router another --api-socket or --home",
        .path.display(),
        .path.display()
    )]
    Live { path: PathBuf },
    #[error(
        "{} exists and is not a socket; remove it or pick another --api-socket",
        .path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("cannot use --api-socket {}: {}; pick another --api-socket", .path.display(), describe_io_error(.error))]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "--api-group {group}: no such group; create it (`groupadd {group}`) or name an existing one"
    )]
    NoSuchGroup { group: String },
    #[error("--api-group {group}: cannot look the group up: {error}")]
    GroupLookup { group: String, error: nix::Error },
    #[error(
        "cannot give {} to group {group}: {}; run the router as root or pick a group you are in",
        .path.display(),
        describe_io_error(.error)
    )]
    Chown {
        path: PathBuf,
        group: String,
        error: io::Error,
    },
}

/// The socket path a router with `home` uses, unless `--api-socket` names
/// one: [`DEFAULT_API_SOCKET`] for the default home, `HOME/weft.sock` for
/// any other. The CLI finds the router the same way.
pub fn socket_path(home: &Path, explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(path) => path.to_owned(),
        None if home == Path::new(DEFAULT_HOME) => PathBuf::from(DEFAULT_API_SOCKET),
        None => home.join(SOCKET_FILE),
    }
}

/// The group the socket is given to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    gid: u32,
    /// Named with `--api-group`: failing to apply it is an error, where
    /// the default is applied only if it can be.
    explicit: bool,
}

impl SocketGroup {
    /// Resolves `--api-group` (or, without one, [`DEFAULT_GROUP`] if the
    /// host has it). `None`: the socket keeps the router's own group.
    pub fn resolve(name: Option<&str>) -> Result<Option<Self>, ApiSocketError> {
        let (wanted, explicit) = match name {
            Some(n) => (n, true),
            None => (DEFAULT_GROUP, false),
        };
        let lookup =
            nix::unistd::Group::from_name(wanted).map_err(|error| ApiSocketError::GroupLookup {
                group: wanted.to_owned(),
                error,
            })?;
        match lookup {
            Some(group) => Ok(Some(Self {
                name: wanted.to_owned(),
                gid: group.gid.as_raw(),
                explicit,
            })),
            None if explicit => Err(ApiSocketError::NoSuchGroup {
                group: wanted.to_owned(),
            }),
            None => Ok(None),
        }
    }

    /// Whether `--api-group` named it (rather than the default).
    pub fn explicit(&self) -> bool {
        self.explicit
    }
}

/// The name of group `gid`, for error messages.
pub fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// A bound control socket (std, non-blocking); the file is removed when
/// this (or the [`ApiListener`] made from it) is dropped.
#[derive(Debug)]
pub struct ApiSocket {
    listener: StdUnixListener,
    file: SocketFile,
}

impl ApiSocket {
    /// Binds `path` with mode 0660 and `group`, creating the parent
    /// directory if missing and replacing a stale socket file.
    pub fn bind(path: &Path, group: Option<&SocketGroup>) -> Result<Self, ApiSocketError> {
        let io_error = |error| ApiSocketError::Io {
            path: path.to_owned(),
            error,
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(io_error)?;
        remove_if_stale(path)?;

        // Made ready where only this process can reach it, then linked
        // into place: link() fails if the path was taken meanwhile.
        let private = parent.join(format!(".weft-{}", std::process::id()));
        let _ = fs::remove_dir_all(&private);
        DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io_error)?;
        let staged = private.join("s");
        let result = (|| {
            let listener = StdUnixListener::bind(&staged).map_err(io_error)?;
            fs::set_permissions(&staged, fs::Permissions::from_mode(SOCKET_MODE))
                .map_err(io_error)?;
            if let Some(group) = group {
                match std::os::unix::fs::chown(&staged, None, Some(group.gid)) {
                    Ok(()) => {}
                    Err(_) if !group.explicit => {}
                    Err(error) => {
                        return Err(ApiSocketError::Chown {
                            path: path.to_owned(),
                            group: group.name.clone(),
                            error,
                        });
                    }
                }
            }
            fs::hard_link(&staged, path).map_err(|error| {
                if error.kind() == io::ErrorKind::AlreadyExists {
                    ApiSocketError::Live {
                        path: path.to_owned(),
                    }
                } else {
                    io_error(error)
                }
            })?;
            listener.set_nonblocking(true).map_err(io_error)?;
            Ok(listener)
        })();
        let _ = fs::remove_dir_all(&private);
        let listener = result?;
        let file = SocketFile::of(path).map_err(io_error)?;
        Ok(Self { listener, file })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The tokio listener; call inside a runtime.
    pub fn into_tokio(self) -> io::Result<ApiListener> {
        Ok(ApiListener {
            listener: tokio::net::UnixListener::from_std(self.listener)?,
            file: self.file,
        })
    }
}

/// The control socket, listening; removes its file when dropped.
#[derive(Debug)]
pub struct ApiListener {
    // Declared first so the socket closes before its file goes.
    listener: tokio::net::UnixListener,
    file: SocketFile,
}

impl ApiListener {
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub async fn accept(&self) -> io::Result<tokio::net::UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

/// Removes an existing socket file nothing answers on; refuses a live one
/// and anything that is not a socket.
fn remove_if_stale(path: &Path) -> Result<(), ApiSocketError> {
    let io_error = |error| ApiSocketError::Io {
        path: path.to_owned(),
        error,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error(error)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ApiSocketError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(ApiSocketError::Live {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(error)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}

/// The socket file this router made. Removed on drop only if the path
/// still names it: a router that replaced a stale file keeps its own.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_follows_the_home_unless_given() {
        assert_eq!(
            socket_path(Path::new(DEFAULT_HOME), None),
            Path::new(DEFAULT_API_SOCKET)
        );
        assert_eq!(
            socket_path(Path::new("/tmp/h1"), None),
            Path::new("/tmp/h1/weft.sock")
        );
        assert_eq!(
            socket_path(Path::new("/tmp/h1"), Some(Path::new("/run/x.sock"))),
            Path::new("/run/x.sock")
        );
    }

    #[test]
    fn the_socket_is_0660_replaces_a_stale_file_and_refuses_a_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/weft.sock");
        let first = ApiSocket::bind(&path, None).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        assert_eq!(
            fs::metadata(tmp.path().join("run"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            DIR_MODE
        );
        let names: Vec<_> = fs::read_dir(tmp.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["weft.sock"], "the staging directory is gone");

        let e = ApiSocket::bind(&path, None).unwrap_err();
        assert!(matches!(e, ApiSocketError::Live { .. }), "{e}");
        assert!(e.to_string().contains("--api-socket"), "{e}");

        // A crashed router: the file stays, nothing listens.
        std::mem::forget(first.file);
        drop(first.listener);
        assert!(path.exists());
        let second = ApiSocket::bind(&path, None).unwrap();
        StdUnixStream::connect(&path).expect("the new socket answers");
        drop(second);
        assert!(!path.exists(), "removed on drop");

        fs::write(&path, "not a socket").unwrap();
        let e = ApiSocket::bind(&path, None).unwrap_err();
        assert!(matches!(e, ApiSocketError::NotASocket { .. }), "{e}");
    }

    #[test]
    fn an_unknown_group_is_refused_only_when_named() {
        let e = SocketGroup::resolve(Some("no-such-group-for-weft")).unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
        let root = SocketGroup::resolve(Some("root")).unwrap().unwrap();
        assert_eq!(root.gid, 0);
    }
}
