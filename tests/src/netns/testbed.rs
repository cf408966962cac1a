//! The numbered testbeds the system-test suites share: hosts `h1…hN` on
//! one underlay segment, a container `c<i>` on some of them with overlay
//! address `10.40.0.<i>/24`, routers launched in order with short
//! heartbeats, and helpers to ping between containers.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::{Net, Output, c, check_tools, h, overlay};

/// Faster failure detection than the defaults keeps the tests short, with
/// margin for a loaded CI machine.
pub const HEARTBEAT: [&str; 4] = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s"];

/// Time for the mesh to connect and every data path to become usable.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// What a testbed looks like; see [`testbed`].
pub struct Plan<'a> {
    pub hosts: usize,
    /// Underlay paths cut with nftables before any router starts.
    pub cuts: &'a [(usize, usize)],
    /// The peers each host is launched with (host 1 first).
    pub peers: &'a dyn Fn(usize) -> Vec<usize>,
    /// Extra `weft launch` flags per host.
    pub flags: &'a dyn Fn(usize) -> Vec<String>,
    /// Hosts that get a container.
    pub containers: &'a [usize],
    /// Host pairs that must end up directly connected with usable data
    /// paths.
    pub links: &'a [(usize, usize)],
    /// Runs on the bare underlay, before any router starts.
    pub prepare: &'a dyn Fn(&Net) -> Result<()>,
}

/// A [`Plan::prepare`] for when nothing needs preparing.
pub fn nothing(_: &Net) -> Result<()> {
    Ok(())
}

/// A [`Plan::flags`] for no extra flags.
pub fn no_flags(_: usize) -> Vec<String> {
    Vec::new()
}

/// Builds the hosts, cuts, runs `prepare`, launches the routers in order,
/// attaches the containers, and waits until the planned links carry data,
/// every router in the plan (on a link or with a container) reaches every
/// other one, and every container answers every other one's ping. Hosts
/// outside the plan (a router the others refuse, say) are not waited for.
pub fn testbed(plan: &Plan) -> Result<Net> {
    check_tools(&[("ping", "-V", "iputils-ping")])?;
    let names: Vec<String> = (1..=plan.hosts).map(h).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut net = Net::new(&refs)?;
    for &(x, y) in plan.cuts {
        net.cut(&h(x), &h(y))?;
    }
    (plan.prepare)(&net)?;
    for i in 1..=plan.hosts {
        launch(&net, i, &(plan.peers)(i), &(plan.flags)(i))?;
    }
    for &i in plan.containers {
        net.attach(&h(i), &c(i), &[&format!("{}/24", overlay(i))])?;
    }
    let planned: Vec<usize> = (1..=plan.hosts)
        .filter(|i| {
            plan.containers.contains(i) || plan.links.iter().any(|&(x, y)| x == *i || y == *i)
        })
        .collect();
    let took = net.wait_until(
        "the planned links carry data and the planned routers reach each other",
        CONVERGE,
        || {
            for &(x, y) in plan.links {
                if !data_path_usable(&net, x, y)? || !data_path_usable(&net, y, x)? {
                    return Ok(false);
                }
            }
            for &i in &planned {
                let r = net.report(&h(i))?;
                if !planned.iter().all(|&j| j == i || r.reaches(&h(j))) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    eprintln!("testbed ready in {took:?}");
    for &i in plan.containers {
        for &j in plan.containers {
            if i != j {
                wait_ping(&net, i, j)?;
            }
        }
    }
    Ok(net)
}

/// Launches host `i`'s router with [`HEARTBEAT`], `flags` and `peers`.
pub fn launch(net: &Net, i: usize, peers: &[usize], flags: &[String]) -> Result<()> {
    let peers: Vec<String> = peers
        .iter()
        .map(|&p| net.host(&h(p)).addr.to_string())
        .collect();
    let mut args: Vec<&str> = HEARTBEAT.to_vec();
    args.extend(flags.iter().map(String::as_str));
    args.extend(peers.iter().map(String::as_str));
    net.launch(&h(i), &args)
}

/// Whether host `i` has an established connection to host `j` whose UDP
/// data path is usable.
pub fn data_path_usable(net: &Net, i: usize, j: usize) -> Result<bool> {
    Ok(net.report(&h(i))?.data_path_usable(&h(j)))
}

/// Waits until container `from` gets a reply to one ping to container
/// `to` (ARP and MAC learning happen on the way).
pub fn wait_ping(net: &Net, from: usize, to: usize) -> Result<Duration> {
    let took = net.wait_until(
        &format!("{} answers a ping from {}", c(to), c(from)),
        CONVERGE,
        || Ok(ping(net, from, &overlay(to), 1)?.status.success()),
    )?;
    eprintln!("{} reached {} in {took:?}", c(from), c(to));
    Ok(took)
}

/// `ping -c count -i 0.2 -W 2 to` from container `from`.
pub fn ping(net: &Net, from: usize, to: &str, count: u32) -> Result<Output> {
    net.exec(
        &c(from),
        "ping",
        &["-c", &count.to_string(), "-i", "0.2", "-W", "2", to],
        Duration::from_secs(10 + 2 * u64::from(count)),
    )
}

/// Pings `count` times from container `from` to container `to` and fails
/// unless every ping is answered.
pub fn ping_all(net: &Net, from: usize, to: usize, count: u32) -> Result<()> {
    let out = ping(net, from, &overlay(to), count)?;
    eprintln!(
        "ping {} -> {}: {}",
        c(from),
        c(to),
        out.stdout
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("(no summary)")
    );
    ensure!(
        out.status.success()
            && out
                .stdout
                .contains(&format!("{count} packets transmitted, {count} received")),
        "ping from {} to {} lost packets:\n{}{}",
        c(from),
        c(to),
        out.stdout,
        out.stderr
    );
    Ok(())
}
