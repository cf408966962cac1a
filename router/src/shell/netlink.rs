//! The one rtnetlink connection type the shell uses to read and change
//! network interfaces (bridge and TAP setup in [`crate::shell::host`],
//! veth pairs in [`crate::shell::attach`], host addresses in
//! [`crate::shell::expose`]), the readers for what the kernel answers, and
//! netlink errors as sentences.

use std::io;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use tracing::debug;

use crate::core::prefix::IpNet;
use crate::core::wire::ethernet::Mac;
use crate::shell::describe_io_error;

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {}", describe_io_error(.0))]
    Socket(io::Error),
    #[error("cannot {action}: {}", describe_netlink(.error))]
    Request {
        action: String,
        error: rtnetlink::Error,
    },
}

/// Reads the MAC address of interface `name` (such as the TAP device);
/// `None` if there is no such interface.
pub async fn mac_address(name: &str) -> Result<Option<Mac>, NetlinkError> {
    let nl = Netlink::open()?;
    Ok(nl.link_by_name(name).await?.as_ref().and_then(link_mac))
}

/// An interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    /// `bridge`, `tun`, `veth`...; `None` for physical and loopback ones.
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Its addresses, link-local IPv6 ones included.
    pub addresses: Vec<IpNet>,
}

/// Reads interface `name` in this thread's network namespace, for status
/// and checks; `None` if there is no such interface.
pub async fn link_state(name: &str) -> Result<Option<LinkState>, NetlinkError> {
    read_link_state(&Netlink::open()?, name).await
}

pub(crate) async fn read_link_state(
    nl: &Netlink,
    name: &str,
) -> Result<Option<LinkState>, NetlinkError> {
    let Some(link) = nl.link_by_name(name).await? else {
        return Ok(None);
    };
    let index = link.header.index;
    let addresses: Vec<AddressMessage> = nl
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|error| NetlinkError::Request {
            action: format!("list the addresses of {name}"),
            error,
        })?;
    Ok(Some(LinkState {
        index,
        kind: link_kind(&link).map(ToString::to_string),
        mtu: link_mtu(&link),
        mac: link_mac(&link),
        up: link_is_up(&link),
        controller: link_controller(&link),
        addresses: addresses.iter().filter_map(address_of).collect(),
    }))
}

/// An rtnetlink connection in the calling thread's network namespace
/// (fixed when the socket is created). Its I/O runs as a task on the
/// current tokio runtime and ends when this is dropped.
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The interface called `name`, if there is one.
    pub(crate) async fn link_by_name(
        &self,
        name: &str,
    ) -> Result<Option<LinkMessage>, NetlinkError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await;
        match found {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(NetlinkError::Request {
                action: format!("look up interface {name}"),
                error,
            }),
        }
    }

    pub(crate) async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        match self.link_by_name(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(NetlinkError::Request {
                action: format!("find interface {name}"),
                error: rtnetlink::Error::RequestFailed,
            }),
        }
    }

    pub(crate) async fn set_link(
        &self,
        message: LinkMessageBuilder<LinkUnspec>,
        action: String,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(message.build())
            .execute()
            .await
            .map_err(|error| NetlinkError::Request { action, error })
    }

    /// Deletes interface `name`; one that does not exist is not an error.
    /// Deleting either end of a veth pair removes both.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let deleted = self
            .handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .await;
        match deleted {
            Ok(()) => {
                debug!(interface = name, "interface deleted");
                Ok(())
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(error) => Err(NetlinkError::Request {
                action: format!("delete interface {name}"),
                error,
            }),
        }
    }
}

/// The errno of a netlink error answer, if it is one.
pub(crate) fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// The link's kind (`bridge`, `tun`, `veth`...), if it has one.
pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn link_mac(link: &LinkMessage) -> Option<Mac> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
        _ => None,
    })
}

pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The index of the bridge the link is enslaved to, if any.
pub(crate) fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Whether the link is administratively up.
pub(crate) fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The address of an address message, with its prefix length.
pub(crate) fn address_of(message: &AddressMessage) -> Option<IpNet> {
    // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is
    // the peer's on point-to-point links); IPv6 has only IFA_ADDRESS.
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(addr) => Some(*addr),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(addr) => Some(*addr),
        _ => None,
    });
    IpNet::new(local.or(address)?, message.header.prefix_len).ok()
}

/// An rtnetlink error as a sentence: errno answers read like `EPERM`'s
/// "Operation not permitted", with a hint where the fix is obvious.
pub(crate) fn describe_netlink(error: &rtnetlink::Error) -> String {
    match error {
        rtnetlink::Error::NetlinkError(message) => {
            let io = message.to_io();
            format!("{}{}", describe_io_error(&io), permission_hint(&io))
        }
        rtnetlink::Error::RequestFailed => "the kernel gave no answer".into(),
        other => other.to_string(),
    }
}

/// What to do about a permission error on network interfaces.
pub(crate) fn permission_hint(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::PermissionDenied {
        " (weft needs root, or CAP_NET_ADMIN, to manage network interfaces)"
    } else {
        ""
    }
}
