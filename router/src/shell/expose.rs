//! `weft expose` / `weft hide`: the host itself on the overlay.
//!
//! Exposing gives the bridge an address, so processes on the host reach
//! containers (and containers on other hosts) through the bridge, as weave's
//! `weave expose` does. The addresses are persisted in
//! `HOME/exposed.json`; a relaunched router puts them back once it has
//! set up the bridge (an address the bridge kept while the router was
//! stopped is fine). `weft reset` deletes the bridge, and with it the
//! addresses, and the file.

use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use tracing::{info, warn};

use crate::core::prefix::IpNet;
use crate::shell::home::{self, HomeError};
use crate::shell::netlink::{Netlink, NetlinkError, address_of, errno};

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error(
        "no address given and none exposed before; give one for the host on the overlay, like 10.32.0.254/12"
    )]
    NothingToExpose,
    #[error(
        "bridge {bridge} does not exist; restart the router (`weft stop`, then `weft launch`) to recreate it"
    )]
    NoBridge { bridge: String },
    #[error("{cidr} is not exposed; `weft status` lists the exposed addresses")]
    NotExposed { cidr: IpNet },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{} does not hold a list of addresses ({error}); fix the file or delete it", .path.display())]
    BadFile {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl ExposeError {
    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            ExposeError::NothingToExpose => 400,
            ExposeError::NotExposed { .. } => 404,
            ExposeError::NoBridge { .. } => 409,
            _ => 500,
        }
    }
}

/// The host's addresses on the bridge, kept in step with a file.
#[derive(Debug)]
pub struct Exposed {
    bridge: String,
    file: Option<PathBuf>,
    cidrs: Mutex<Vec<IpNet>>,
    /// Serialises changes, so the file follows the order they happen in.
    changes: tokio::sync::Mutex<()>,
}

impl Exposed {
    /// Reads the persisted addresses, if a file is given and exists.
    pub fn load(bridge: &str, file: Option<PathBuf>) -> Result<Self, ExposeError> {
        let cidrs = match &file {
            Some(path) => home::read_list(path, |error| ExposeError::BadFile {
                path: path.clone(),
                error,
            })?,
            None => Vec::new(),
        };
        Ok(Self {
            bridge: bridge.into(),
            file,
            cidrs: Mutex::new(cidrs),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// The exposed addresses.
    pub fn list(&self) -> Vec<IpNet> {
        self.cidrs.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Puts the persisted addresses back on a freshly made bridge.
    pub async fn restore(&self) -> Result<usize, ExposeError> {
        let cidrs = self.list();
        if cidrs.is_empty() {
            return Ok(0);
        }
        let nl = Netlink::open()?;
        let index = self.bridge_index(&nl).await?;
        for cidr in &cidrs {
            add_address(&nl, index, &self.bridge, cidr).await?;
        }
        Ok(cidrs.len())
    }

    /// Adds `cidrs` to the bridge (all of them, or, if empty, the ones
    /// exposed before) and returns every exposed address.
    pub async fn expose(&self, cidrs: &[IpNet]) -> Result<Vec<IpNet>, ExposeError> {
        let _serial = self.changes.lock().await;
        let mut current = self.list();
        let wanted = if cidrs.is_empty() {
            if current.is_empty() {
                return Err(ExposeError::NothingToExpose);
            }
            current.clone()
        } else {
            cidrs.to_vec()
        };
        let nl = Netlink::open()?;
        let index = self.bridge_index(&nl).await?;
        for cidr in &wanted {
            add_address(&nl, index, &self.bridge, cidr).await?;
            if !current.contains(cidr) {
                current.push(*cidr);
            }
            info!(address = %cidr, bridge = %self.bridge, "host exposed on the overlay");
        }
        self.store(current.clone())?;
        Ok(current)
    }

    /// Removes `cidrs` (or, if empty, every exposed address) from the
    /// bridge and returns the ones removed.
    pub async fn hide(&self, cidrs: &[IpNet]) -> Result<Vec<IpNet>, ExposeError> {
        let _serial = self.changes.lock().await;
        let current = self.list();
        let gone = if cidrs.is_empty() {
            current.clone()
        } else {
            if let Some(cidr) = cidrs.iter().find(|c| !current.contains(c)) {
                return Err(ExposeError::NotExposed { cidr: *cidr });
            }
            cidrs.to_vec()
        };
        let nl = Netlink::open()?;
        // The bridge may be gone (deleted by hand); hiding then only
        // forgets the addresses.
        if let Some(link) = nl.link_by_name(&self.bridge).await? {
            let addresses: Vec<AddressMessage> = nl
                .handle
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute()
                .try_collect()
                .await
                .map_err(|error| NetlinkError::Request {
                    action: format!("list the addresses of {}", self.bridge),
                    error,
                })?;
            for message in addresses {
                if address_of(&message).is_some_and(|a| gone.contains(&a)) {
                    nl.handle
                        .address()
                        .del(message)
                        .execute()
                        .await
                        .map_err(|error| NetlinkError::Request {
                            action: format!("remove an address from {}", self.bridge),
                            error,
                        })?;
                }
            }
        }
        for cidr in &gone {
            info!(address = %cidr, bridge = %self.bridge, "host hidden from the overlay");
        }
        self.store(current.into_iter().filter(|c| !gone.contains(c)).collect())?;
        Ok(gone)
    }

    async fn bridge_index(&self, nl: &Netlink) -> Result<u32, ExposeError> {
        match nl.link_by_name(&self.bridge).await? {
            Some(link) => Ok(link.header.index),
            None => Err(ExposeError::NoBridge {
                bridge: self.bridge.clone(),
            }),
        }
    }

    fn store(&self, cidrs: Vec<IpNet>) -> Result<(), ExposeError> {
        if let Some(path) = &self.file {
            home::save_list(path, "encode exposed addresses for", &cidrs)?;
        }
        match self.cidrs.lock() {
            Ok(mut current) => *current = cidrs,
            Err(_) => warn!("the exposed-address list was poisoned; it is out of date"),
        }
        Ok(())
    }
}

/// Adds `cidr` to interface `index`; an address already there is fine
/// (exposing twice, or a restore over a bridge that kept it).
async fn add_address(
    nl: &Netlink,
    index: u32,
    bridge: &str,
    cidr: &IpNet,
) -> Result<(), NetlinkError> {
    match nl
        .handle
        .address()
        .add(index, cidr.addr(), cidr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(error) => Err(NetlinkError::Request {
            action: format!("add address {cidr} to bridge {bridge}"),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_addresses_load_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("exposed.json");
        std::fs::write(&path, r#"["10.32.0.254/12"]"#).unwrap();
        let exposed = Exposed::load("weft", Some(path.clone())).unwrap();
        assert_eq!(exposed.list(), ["10.32.0.254/12".parse().unwrap()]);
        std::fs::write(&path, "nope").unwrap();
        let e = Exposed::load("weft", Some(path)).unwrap_err().to_string();
        assert!(e.contains("does not hold a list of addresses"), "{e}");
        let none = Exposed::load("weft", Some(tmp.path().join("absent.json"))).unwrap();
        assert!(none.list().is_empty());
    }
}
