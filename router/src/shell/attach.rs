//! `weft attach`: plugging a network namespace (a container) into the
//! bridge with a veth pair.
//!
//! ```text
//!   netns NAME (or of pid PID)        host
//!   ethwe  10.32.0.1/12  <── veth ──>  vwXXXXXXXX ──> bridge `weft`
//! ```
//!
//! The host end's name is derived from the namespace's identity (the
//! device and inode of its nsfs file) and the interface name inside, so
//! the same container reached by name or by pid maps to the same veth, and
//! `detach` needs no lookup table. Attachments are also persisted in
//! `HOME/attachments.json`: `ps` lists them, and a restarted router
//! re-enslaves their host ends to the bridge (deleting the bridge on stop
//! leaves the veths in place, so a restart does not cut containers off).
//!
//! Work inside a namespace runs on a short-lived OS thread that enters it
//! with `setns(2)` and opens its own rtnetlink socket there (a netlink
//! socket belongs to the namespace it was created in); the thread, and with
//! it the namespace change, ends when the work is done.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, oneshot};
use tracing::{info, warn};

use crate::core::prefix::{self, IpNet, PrefixError};
use crate::shell::describe_io_error;
use crate::shell::home::{self, HomeError};
use crate::shell::host::{HostError, IfnameError, check_ifname};
use crate::shell::netlink::{
    self, LinkState, Netlink, NetlinkError, address_of, link_is_up, link_kind, link_mac,
};

/// Interface name inside the namespace unless `--ifname` says otherwise.
pub const DEFAULT_IFNAME: &str = "ethwe";

/// Where `ip netns add NAME` mounts a namespace.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Prefix of every host-end veth weft creates.
const HOST_PREFIX: &str = "vw";

/// A network namespace, as the user or a container runtime names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Netns {
    /// Made with `ip netns add NAME`: `/var/run/netns/NAME`.
    #[serde(rename = "netns")]
    Name(String),
    /// The namespace process PID runs in: `/proc/PID/ns/net`.
    #[serde(rename = "pid")]
    Pid(u32),
    /// A namespace file wherever it is: what container runtimes hand over
    /// (`/proc/PID/ns/net`, `/run/netns/NAME`, CNI's
    /// `/var/run/netns/cni-…`).
    #[serde(rename = "netns_path")]
    Path(PathBuf),
}

/// Longest container id (CNI's are 64 hex digits; Docker's too).
pub const MAX_ID_LEN: usize = 128;

impl Netns {
    /// From the `--netns` / `--pid` / `--netns-path` trio: exactly one
    /// must be given.
    pub fn from_parts(
        name: Option<String>,
        pid: Option<u32>,
        path: Option<PathBuf>,
    ) -> Result<Self, AttachError> {
        let netns = match (name, pid, path) {
            (Some(name), None, None) => Netns::Name(name),
            (None, Some(pid), None) => Netns::Pid(pid),
            (None, None, Some(path)) => Netns::Path(path),
            _ => return Err(AttachError::NetnsChoice),
        };
        netns.check()?;
        Ok(netns)
    }

    /// Rejects names that would not stay inside [`NETNS_DIR`], pid 0 and
    /// relative paths.
    pub fn check(&self) -> Result<(), AttachError> {
        let why = match self {
            Netns::Name(name) if name.is_empty() => "it is empty",
            Netns::Name(name) if name == "." || name == ".." || name.contains('/') => {
                "it must be a plain name, without '/'"
            }
            Netns::Pid(0) => "pid 0 is not a process",
            Netns::Path(path) if !path.is_absolute() => {
                "it must be an absolute path, like /proc/PID/ns/net or /var/run/netns/NAME"
            }
            _ => return Ok(()),
        };
        Err(AttachError::BadNetns {
            netns: self.to_string(),
            why,
        })
    }

    /// The short form, for logs and tables: the name, `pid PID` or the
    /// path.
    pub fn label(&self) -> String {
        match self {
            Netns::Name(name) => name.clone(),
            Netns::Pid(pid) => format!("pid {pid}"),
            Netns::Path(path) => path.display().to_string(),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            Netns::Name(name) => Path::new(NETNS_DIR).join(name),
            Netns::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            Netns::Path(path) => path.clone(),
        }
    }

    /// The container id an attachment gets when none is given: the
    /// namespace's name, `pid-PID`, or the last part of the path
    /// (`cni-1234` for `/var/run/netns/cni-1234`, `pid-PID` for
    /// `/proc/PID/ns/net`).
    pub fn default_id(&self) -> String {
        match self {
            Netns::Name(name) => name.clone(),
            Netns::Pid(pid) => format!("pid-{pid}"),
            Netns::Path(path) => {
                let parts: Vec<&str> = path.iter().filter_map(|p| p.to_str()).collect();
                match parts.as_slice() {
                    [.., "proc", pid, "ns", "net"] => format!("pid-{pid}"),
                    [.., last] => (*last).to_owned(),
                    [] => "netns".to_owned(),
                }
            }
        }
    }
}

/// Checks a container id: 1 to [`MAX_ID_LEN`] letters, digits, `_`, `.`
/// and `-` (what Docker, CNI and Kubernetes use), so it is safe in file
/// names, logs and DNS labels.
pub fn check_id(id: &str) -> Result<(), AttachError> {
    let why = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 128 characters"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "use only letters, digits, '_', '.' and '-'"
    } else {
        return Ok(());
    };
    Err(AttachError::BadId {
        id: id.to_owned(),
        why,
    })
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Name(name) => write!(f, "network namespace {name}"),
            Netns::Pid(pid) => write!(f, "the network namespace of pid {pid}"),
            Netns::Path(path) => write!(f, "the network namespace at {}", path.display()),
        }
    }
}

/// Parses every host address, or reports the first bad one.
pub fn parse_cidrs<S: AsRef<str>>(texts: &[S]) -> Result<Vec<IpNet>, AttachError> {
    Ok(prefix::parse_hosts(texts)?)
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("name the namespace with exactly one of --netns NAME, --pid PID or --netns-path PATH")]
    NetnsChoice,
    #[error("invalid container id {id:?}: {why}")]
    BadId { id: String, why: &'static str },
    #[error("no network namespace at {} (has the container stopped?)", .path.display())]
    NetnsPathNotFound { path: PathBuf },
    #[error(
        "container id {id} is already used by the attachment of {netns}; give this one another --id"
    )]
    IdTaken { id: String, netns: String },
    #[error("{netns} is attached already as container {id}; attach it with --id {id}")]
    NetnsHasId { netns: String, id: String },
    #[error("invalid {netns}: {why}")]
    BadNetns { netns: String, why: &'static str },
    #[error(transparent)]
    BadCidr(#[from] PrefixError),
    #[error(transparent)]
    Ifname(#[from] IfnameError),
    #[error("network namespace {name} not found: create it with `ip netns add {name}`")]
    NetnsNotFound { name: String },
    #[error("no process with pid {pid}: is the container running?")]
    NoProcess { pid: u32 },
    #[error("cannot open {}: {}", .path.display(), describe_io_error(.error))]
    OpenNetns { path: PathBuf, error: io::Error },
    #[error("cannot enter {netns} ({}): {error}; is {} a network namespace?", .path.display(), .path.display())]
    Enter {
        netns: String,
        path: PathBuf,
        error: nix::Error,
    },
    #[error("cannot start a thread to work in {netns}: {}", describe_io_error(.error))]
    Thread { netns: String, error: io::Error },
    #[error("the thread working in {netns} died; see the router's log")]
    ThreadDied { netns: String },
    #[error(
        "bridge {bridge} does not exist; restart the router (`weft stop`, then `weft launch`) to recreate it"
    )]
    NoBridge { bridge: String },
    #[error(
        "{netns} is already attached as {ifname} (host interface {host_ifname}); detach it first with `weft detach`"
    )]
    AlreadyAttached {
        netns: String,
        ifname: String,
        host_ifname: String,
    },
    #[error("{netns} already has an interface named {ifname}; pick another --ifname")]
    IfnameTaken { netns: String, ifname: String },
    #[error(
        "{netns} has no weft interface {ifname} (no host interface {host_ifname}); `weft ps` lists attachments"
    )]
    NotAttached {
        netns: String,
        ifname: String,
        host_ifname: String,
    },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{} does not hold valid attachments ({error}); fix the file or delete it (attached containers then need `weft attach` again)", .path.display())]
    BadFile {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl AttachError {
    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        use AttachError as E;
        match self {
            E::NetnsChoice
            | E::BadNetns { .. }
            | E::BadId { .. }
            | E::BadCidr(_)
            | E::Ifname(_) => 400,
            E::NetnsNotFound { .. }
            | E::NetnsPathNotFound { .. }
            | E::NoProcess { .. }
            | E::NotAttached { .. } => 404,
            E::AlreadyAttached { .. }
            | E::IfnameTaken { .. }
            | E::IdTaken { .. }
            | E::NetnsHasId { .. }
            | E::NoBridge { .. } => 409,
            _ => 500,
        }
    }
}

/// One attachment as persisted: enough to find its veth again and to
/// check, after a restart, that a pid still names the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The container this is, as the caller named it (or
    /// [`Netns::default_id`]); later features key addresses and names by
    /// it. Files from before ids were recorded have none; loading fills in
    /// the default.
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub netns: Netns,
    pub ifname: String,
    pub host_ifname: String,
    pub cidrs: Vec<IpNet>,
    /// Identity of the namespace when it was attached.
    pub ns_dev: u64,
    pub ns_ino: u64,
}

/// An attachment as `weft ps` shows it: read live from the namespace
/// where possible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// The container id.
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub netns: Netns,
    pub ifname: String,
    /// The veth end on the bridge.
    pub host_ifname: String,
    /// The interface's MAC address inside the namespace.
    pub mac: Option<String>,
    /// Live addresses (link-local IPv6 left out); the attached ones if the
    /// namespace could not be read.
    pub addresses: Vec<String>,
    /// `up`, `down`, or why the namespace could not be read.
    pub state: String,
}

/// What the namespace's interface looks like right now.
struct Live {
    mac: Option<String>,
    addresses: Vec<IpNet>,
    up: bool,
}

/// The namespace's identity: its nsfs device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NsId {
    dev: u64,
    ino: u64,
}

/// The attachments of one router: serialises changes, and keeps
/// `HOME/attachments.json` in step.
#[derive(Debug)]
pub struct Attachments {
    bridge: String,
    mtu: u32,
    file: Option<PathBuf>,
    records: Mutex<Vec<AttachmentRecord>>,
}

impl Attachments {
    /// Attachments on `bridge` with interfaces of MTU `mtu`, loaded from
    /// `file` if it exists (and saved there on every change).
    pub fn load(bridge: &str, mtu: u32, file: Option<PathBuf>) -> Result<Self, AttachError> {
        let mut records: Vec<AttachmentRecord> = match &file {
            Some(path) => home::read_list(path, |error| AttachError::BadFile {
                path: path.clone(),
                error,
            })?,
            None => Vec::new(),
        };
        for r in records.iter_mut().filter(|r| r.id.is_empty()) {
            r.id = r.netns.default_id();
        }
        Ok(Self {
            bridge: bridge.into(),
            mtu,
            file,
            records: Mutex::new(records),
        })
    }

    /// Puts the host end of every persisted attachment whose veth still
    /// exists back on the bridge, and forgets the others (their namespace
    /// is gone, and the veth with it). Returns how many were restored.
    pub async fn restore(&self) -> Result<usize, AttachError> {
        let mut records = self.records.lock().await;
        let nl = Netlink::open()?;
        let bridge = self.bridge_index(&nl).await?;
        let mut gone = Vec::new();
        let mut restored = 0;
        for record in records.iter() {
            let host = &record.host_ifname;
            let link = match nl.link_by_name(host).await {
                Ok(Some(link)) if link_kind(&link) == Some(&InfoKind::Veth) => link,
                Ok(_) => {
                    info!(netns = %record.netns.label(), ifname = %record.ifname, "attachment gone while the router was down; forgetting it");
                    gone.push(host.clone());
                    continue;
                }
                Err(e) => {
                    warn!(host_ifname = %host, error = %e, "cannot restore attachment");
                    continue;
                }
            };
            let enslaved = nl
                .set_link(
                    LinkUnspec::new_with_index(link.header.index)
                        .controller(bridge)
                        .up(),
                    format!("put {host} back on bridge {}", self.bridge),
                )
                .await;
            match enslaved {
                Ok(()) => {
                    info!(netns = %record.netns.label(), ifname = %record.ifname, host_ifname = %host, "attachment restored");
                    restored += 1;
                }
                Err(e) => warn!(host_ifname = %host, error = %e, "cannot restore attachment"),
            }
        }
        if !gone.is_empty() {
            records.retain(|r| !gone.contains(&r.host_ifname));
            self.save(&records)?;
        }
        Ok(restored)
    }

    /// Creates a veth pair, puts one end on the bridge and the other in
    /// `netns` as `ifname` with `cidrs`, both up with the router's MTU.
    /// Everything is checked before anything is created, and whatever was
    /// created is removed again if a later step fails.
    ///
    /// The attachment records `id` (default [`Netns::default_id`]); one id
    /// names one namespace, which may have several interfaces.
    pub async fn attach(
        &self,
        netns: &Netns,
        id: Option<&str>,
        ifname: &str,
        cidrs: &[IpNet],
    ) -> Result<AttachmentInfo, AttachError> {
        netns.check()?;
        let id = id.map_or_else(|| netns.default_id(), str::to_owned);
        check_id(&id)?;
        check_ifname(ifname)?;
        let mut records = self.records.lock().await;
        let (ns_file, ns_id) = open_netns(netns)?;
        let same_ns = |r: &&AttachmentRecord| (r.ns_dev, r.ns_ino) == (ns_id.dev, ns_id.ino);
        if let Some(other) = records.iter().find(|r| r.id == id && !same_ns(r)) {
            return Err(AttachError::IdTaken {
                id,
                netns: other.netns.to_string(),
            });
        }
        if let Some(mine) = records.iter().find(|r| r.id != id && same_ns(r)) {
            return Err(AttachError::NetnsHasId {
                netns: netns.to_string(),
                id: mine.id.clone(),
            });
        }
        let host_ifname = host_ifname(ns_id, ifname);
        let nl = Netlink::open()?;
        let bridge = self.bridge_index(&nl).await?;
        if nl.link_by_name(&host_ifname).await?.is_some() {
            return Err(AttachError::AlreadyAttached {
                netns: netns.to_string(),
                ifname: ifname.into(),
                host_ifname,
            });
        }
        let taken = {
            let ifname = ifname.to_owned();
            in_netns(netns, &ns_file, move |nl| async move {
                Ok(nl.link_by_name(&ifname).await?.is_some())
            })
            .await?
        };
        if taken {
            return Err(AttachError::IfnameTaken {
                netns: netns.to_string(),
                ifname: ifname.into(),
            });
        }

        let peer = LinkUnspec::new_with_name(ifname)
            .mtu(self.mtu)
            .setns_by_fd(ns_file.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_ifname.clone())
            .mtu(self.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        nl.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|error| NetlinkError::Request {
                action: format!("create veth pair {host_ifname} / {ifname} for {netns}"),
                error,
            })?;

        let configured = self
            .configure(&nl, netns, &ns_file, bridge, &host_ifname, ifname, cidrs)
            .await;
        let live = match configured {
            Ok(live) => live,
            Err(e) => {
                if let Err(undo) = nl.delete_link(&host_ifname).await {
                    warn!(%host_ifname, error = %undo, "cannot remove the veth of a failed attach");
                }
                return Err(e);
            }
        };
        let record = AttachmentRecord {
            id,
            netns: netns.clone(),
            ifname: ifname.into(),
            host_ifname: host_ifname.clone(),
            cidrs: cidrs.to_vec(),
            ns_dev: ns_id.dev,
            ns_ino: ns_id.ino,
        };
        records.push(record.clone());
        if let Err(e) = self.save(&records) {
            records.pop();
            if let Err(undo) = nl.delete_link(&host_ifname).await {
                warn!(%host_ifname, error = %undo, "cannot remove the veth of a failed attach");
            }
            return Err(e);
        }
        let info = info_of(&record, Ok(live));
        info!(
            id = %record.id, netns = %netns.label(), ifname, host_ifname = %record.host_ifname,
            mac = info.mac.as_deref().unwrap_or("-"), addresses = %info.addresses.join(","),
            "attached"
        );
        Ok(info)
    }

    /// Host end on the bridge and up, then inside the namespace: the
    /// interface and `lo` up, the addresses added.
    #[allow(clippy::too_many_arguments)]
    async fn configure(
        &self,
        nl: &Netlink,
        netns: &Netns,
        ns_file: &File,
        bridge: u32,
        host_ifname: &str,
        ifname: &str,
        cidrs: &[IpNet],
    ) -> Result<Live, AttachError> {
        let index = nl.index_of(host_ifname).await?;
        nl.set_link(
            LinkUnspec::new_with_index(index).controller(bridge).up(),
            format!("put {host_ifname} on bridge {}", self.bridge),
        )
        .await?;
        let ifname = ifname.to_owned();
        let cidrs = cidrs.to_vec();
        let where_ = netns.to_string();
        in_netns(netns, ns_file, move |nl| async move {
            let index = nl.index_of(&ifname).await?;
            nl.set_link(
                LinkUnspec::new_with_index(index).up(),
                format!("bring {ifname} up in {where_}"),
            )
            .await?;
            let lo = nl.index_of("lo").await?;
            nl.set_link(
                LinkUnspec::new_with_index(lo).up(),
                format!("bring lo up in {where_}"),
            )
            .await?;
            for cidr in &cidrs {
                let mut add = nl
                    .handle
                    .address()
                    .add(index, cidr.addr(), cidr.prefix_len());
                if cidr.addr().is_ipv6() {
                    // The address comes from weft's allocation, so it is
                    // unique; duplicate detection would only delay it.
                    add.message_mut()
                        .attributes
                        .push(AddressAttribute::Flags(AddressFlags::Nodad));
                }
                add.execute().await.map_err(|error| NetlinkError::Request {
                    action: format!("add address {cidr} to {ifname} in {where_}"),
                    error,
                })?;
            }
            read_live(&nl, &ifname).await
        })
        .await
    }

    /// Deletes the veth of `ifname` in `netns` (deleting one end removes
    /// both) and forgets the attachment.
    pub async fn detach(
        &self,
        netns: &Netns,
        ifname: &str,
    ) -> Result<AttachmentRecord, AttachError> {
        netns.check()?;
        check_ifname(ifname)?;
        let mut records = self.records.lock().await;
        let (_, ns_id) = open_netns(netns)?;
        let host_ifname = host_ifname(ns_id, ifname);
        let nl = Netlink::open()?;
        let exists = nl.link_by_name(&host_ifname).await?.is_some();
        let position = records.iter().position(|r| r.host_ifname == host_ifname);
        if !exists {
            if position.is_some() {
                records.retain(|r| r.host_ifname != host_ifname);
                self.save(&records)?;
            }
            return Err(AttachError::NotAttached {
                netns: netns.to_string(),
                ifname: ifname.into(),
                host_ifname,
            });
        }
        nl.delete_link(&host_ifname).await?;
        let record = match position {
            Some(i) => records.remove(i),
            None => AttachmentRecord {
                id: netns.default_id(),
                netns: netns.clone(),
                ifname: ifname.into(),
                host_ifname: host_ifname.clone(),
                cidrs: Vec::new(),
                ns_dev: ns_id.dev,
                ns_ino: ns_id.ino,
            },
        };
        self.save(&records)?;
        info!(netns = %netns.label(), ifname, %host_ifname, "detached");
        Ok(record)
    }

    /// Every attachment whose veth still exists, read live from its
    /// namespace; attachments whose veth is gone are forgotten.
    pub async fn list(&self) -> Result<Vec<AttachmentInfo>, AttachError> {
        let mut records = self.records.lock().await;
        let nl = Netlink::open()?;
        let mut gone = Vec::new();
        let mut infos = Vec::new();
        for record in records.iter() {
            if nl.link_by_name(&record.host_ifname).await?.is_none() {
                info!(netns = %record.netns.label(), ifname = %record.ifname, "attachment gone; forgetting it");
                gone.push(record.host_ifname.clone());
                continue;
            }
            infos.push(info_of(record, read_record(record).await));
        }
        if !gone.is_empty() {
            records.retain(|r| !gone.contains(&r.host_ifname));
            self.save(&records)?;
        }
        Ok(infos)
    }

    async fn bridge_index(&self, nl: &Netlink) -> Result<u32, AttachError> {
        match nl.link_by_name(&self.bridge).await? {
            Some(link) => Ok(link.header.index),
            None => Err(AttachError::NoBridge {
                bridge: self.bridge.clone(),
            }),
        }
    }

    fn save(&self, records: &[AttachmentRecord]) -> Result<(), AttachError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        home::save_list(path, "encode attachments for", records)?;
        Ok(())
    }
}

/// Opens the namespace's nsfs file, which both identifies it and lets
/// threads enter it.
fn open_netns(netns: &Netns) -> Result<(File, NsId), AttachError> {
    let path = netns.path();
    let file = File::open(&path).map_err(|error| match (netns, error.kind()) {
        (Netns::Name(name), io::ErrorKind::NotFound) => {
            AttachError::NetnsNotFound { name: name.clone() }
        }
        (Netns::Pid(pid), io::ErrorKind::NotFound) => AttachError::NoProcess { pid: *pid },
        (Netns::Path(path), io::ErrorKind::NotFound) => {
            AttachError::NetnsPathNotFound { path: path.clone() }
        }
        _ => AttachError::OpenNetns {
            path: path.clone(),
            error,
        },
    })?;
    let meta = file.metadata().map_err(|error| AttachError::OpenNetns {
        path: path.clone(),
        error,
    })?;
    Ok((
        file,
        NsId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// `vw` and 8 hex digits of an FNV-1a hash of the namespace's identity and
/// the interface name: deterministic, and 10 characters, within Linux's 15.
fn host_ifname(id: NsId, ifname: &str) -> String {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let bytes = id
        .dev
        .to_le_bytes()
        .into_iter()
        .chain(id.ino.to_le_bytes())
        .chain(ifname.bytes());
    let hash = bytes.fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    format!("{HOST_PREFIX}{hash:08x}")
}

/// Runs `work` with an rtnetlink connection inside the namespace of
/// `ns_file`, on a thread of its own (see the module docs).
async fn in_netns<T, F, Fut>(netns: &Netns, ns_file: &File, work: F) -> Result<T, AttachError>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AttachError>>,
{
    let where_ = netns.to_string();
    let path = netns.path();
    let ns_file = ns_file
        .try_clone()
        .map_err(|error| AttachError::OpenNetns {
            path: path.clone(),
            error,
        })?;
    let (tx, rx) = oneshot::channel();
    let thread_netns = where_.clone();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let run = || {
                setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(|error| AttachError::Enter {
                    netns: thread_netns.clone(),
                    path,
                    error,
                })?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|error| AttachError::Thread {
                        netns: thread_netns.clone(),
                        error,
                    })?;
                runtime.block_on(async {
                    let nl = Netlink::open()?;
                    work(nl).await
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|error| AttachError::Thread {
            netns: where_.clone(),
            error,
        })?;
    rx.await
        .map_err(|_| AttachError::ThreadDied { netns: where_ })?
}

/// The interface `ifname` as the namespace sees it.
async fn read_live(nl: &Netlink, ifname: &str) -> Result<Live, AttachError> {
    let link = nl
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| NetlinkError::Request {
            action: format!("find {ifname}"),
            error: rtnetlink::Error::RequestFailed,
        })?;
    let messages: Vec<AddressMessage> = nl
        .handle
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute()
        .try_collect()
        .await
        .map_err(|error| NetlinkError::Request {
            action: format!("list the addresses of {ifname}"),
            error,
        })?;
    let addresses = messages
        .iter()
        .filter_map(address_of)
        .filter(|c| !is_link_local_v6(c.addr()))
        .collect();
    Ok(Live {
        mac: link_mac(&link).map(|m| m.to_string()),
        addresses,
        up: link_is_up(&link),
    })
}

/// Reads a persisted attachment's interface, after checking that its
/// namespace reference still names the namespace it was attached in.
async fn read_record(record: &AttachmentRecord) -> Result<Live, String> {
    let (file, id) = open_netns(&record.netns).map_err(|e| e.to_string())?;
    if id.dev != record.ns_dev || id.ino != record.ns_ino {
        return Err(format!(
            "{} now names another namespace than the one attached",
            record.netns
        ));
    }
    let ifname = record.ifname.clone();
    in_netns(&record.netns, &file, move |nl| async move {
        read_live(&nl, &ifname).await
    })
    .await
    .map_err(|e| e.to_string())
}

fn info_of(record: &AttachmentRecord, live: Result<Live, String>) -> AttachmentInfo {
    let (mac, addresses, state) = match live {
        Ok(live) => (
            live.mac,
            live.addresses.iter().map(ToString::to_string).collect(),
            if live.up { "up" } else { "down" }.to_owned(),
        ),
        Err(why) => (
            None,
            record.cidrs.iter().map(ToString::to_string).collect(),
            format!("unreadable: {why}"),
        ),
    };
    AttachmentInfo {
        id: record.id.clone(),
        netns: record.netns.clone(),
        ifname: record.ifname.clone(),
        host_ifname: record.host_ifname.clone(),
        mac,
        addresses,
        state,
    }
}

fn is_link_local_v6(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Reads the state of the interface `ifname` inside `netns`, for checks
/// and tests: `None` if there is no such interface.
pub async fn link_state_in(netns: &Netns, ifname: &str) -> Result<Option<LinkState>, AttachError> {
    let (file, _) = open_netns(netns)?;
    let ifname = ifname.to_owned();
    in_netns(netns, &file, move |nl| async move {
        Ok(netlink::read_link_state(&nl, &ifname).await?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_namespace_reference_is_accepted() {
        assert_eq!(
            Netns::from_parts(Some("c1".into()), None, None).unwrap(),
            Netns::Name("c1".into())
        );
        assert_eq!(
            Netns::from_parts(None, Some(42), None).unwrap(),
            Netns::Pid(42)
        );
        let cni = PathBuf::from("/var/run/netns/cni-1234");
        assert_eq!(
            Netns::from_parts(None, None, Some(cni.clone())).unwrap(),
            Netns::Path(cni.clone())
        );
        for (name, pid, path) in [
            (None, None, None),
            (Some("c1".to_owned()), Some(42), None),
            (None, Some(42), Some(cni.clone())),
        ] {
            let e = Netns::from_parts(name, pid, path).unwrap_err();
            assert_eq!(
                e.to_string(),
                "name the namespace with exactly one of --netns NAME, --pid PID or --netns-path PATH"
            );
        }
        let e = Netns::from_parts(Some("../etc".into()), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid network namespace ../etc: it must be a plain name, without '/'"
        );
        Netns::from_parts(None, Some(0), None).unwrap_err();
        let e = Netns::from_parts(None, None, Some("netns/c1".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid the network namespace at netns/c1: it must be an absolute path, like /proc/PID/ns/net or /var/run/netns/NAME"
        );
        assert_eq!(
            Netns::Name("c1".into()).path(),
            Path::new("/var/run/netns/c1")
        );
        assert_eq!(Netns::Pid(42).path(), Path::new("/proc/42/ns/net"));
        assert_eq!(Netns::Path(cni.clone()).path(), cni);
    }

    #[test]
    fn container_ids_default_from_the_namespace_and_are_checked() {
        assert_eq!(Netns::Name("c1".into()).default_id(), "c1");
        assert_eq!(Netns::Pid(42).default_id(), "pid-42");
        let path = |p: &str| Netns::Path(PathBuf::from(p)).default_id();
        assert_eq!(path("/var/run/netns/cni-1234"), "cni-1234");
        assert_eq!(path("/proc/42/ns/net"), "pid-42");
        assert_eq!(path("/run/netns/web.1"), "web.1");
        for good in ["c1", "5f2a9c", "web_1.prod-2", &"a".repeat(MAX_ID_LEN)] {
            check_id(good).unwrap();
        }
        for (bad, why) in [
            ("", "it is empty"),
            ("a b", "use only letters"),
            ("../x", "use only letters"),
            (&"a".repeat(MAX_ID_LEN + 1), "longer than 128"),
        ] {
            let e = check_id(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid container id {bad:?}: ")),
                "{e}"
            );
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn host_end_names_are_deterministic_and_short() {
        let id = NsId {
            dev: 4,
            ino: 4_026_532_000,
        };
        let a = host_ifname(id, "ethwe");
        assert_eq!(a, host_ifname(id, "ethwe"));
        assert_eq!(a.len(), 10);
        assert!(a.starts_with("vw"));
        check_ifname(&a).unwrap();
        assert_ne!(a, host_ifname(id, "ethwe1"));
        assert_ne!(
            a,
            host_ifname(
                NsId {
                    dev: 4,
                    ino: 4_026_532_001
                },
                "ethwe"
            )
        );
    }

    #[test]
    fn records_read_back_as_written() {
        let record = AttachmentRecord {
            id: "pid-42".into(),
            netns: Netns::Pid(42),
            ifname: "ethwe".into(),
            host_ifname: "vw0123abcd".into(),
            cidrs: vec!["10.32.0.1/12".parse().unwrap()],
            ns_dev: 4,
            ns_ino: 4026532000,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "pid-42", "pid": 42, "ifname": "ethwe", "host_ifname": "vw0123abcd",
                "cidrs": ["10.32.0.1/12"], "ns_dev": 4, "ns_ino": 4026532000u64
            })
        );
        let back: AttachmentRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let by_path = AttachmentRecord {
            id: "cni-1234".into(),
            netns: Netns::Path("/var/run/netns/cni-1234".into()),
            ..record.clone()
        };
        let json = serde_json::to_value(&by_path).unwrap();
        assert_eq!(json["netns_path"], "/var/run/netns/cni-1234");
        assert_eq!(
            serde_json::from_value::<AttachmentRecord>(json).unwrap(),
            by_path
        );
        let named: AttachmentInfo = serde_json::from_value(serde_json::json!({
            "netns": "c1", "ifname": "ethwe", "host_ifname": "vw0123abcd",
            "mac": null, "addresses": [], "state": "up"
        }))
        .unwrap();
        assert_eq!(named.netns, Netns::Name("c1".into()));
    }

    #[test]
    fn a_corrupt_file_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("attachments.json");
        std::fs::write(&path, "garbage").unwrap();
        let e = Attachments::load("weft", 1408, Some(path.clone())).unwrap_err();
        assert!(e.to_string().contains("fix the file or delete it"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
        let none = Attachments::load("weft", 1408, Some(tmp.path().join("absent.json"))).unwrap();
        assert!(none.records.try_lock().unwrap().is_empty());
    }

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(AttachError::NetnsChoice.http_status(), 400);
        assert_eq!(AttachError::NoProcess { pid: 7 }.http_status(), 404);
        assert_eq!(
            AttachError::NetnsNotFound { name: "c1".into() }.to_string(),
            "network namespace c1 not found: create it with `ip netns add c1`"
        );
        assert_eq!(
            AttachError::NoBridge {
                bridge: "weft".into()
            }
            .http_status(),
            409
        );
    }
}
