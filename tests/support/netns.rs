//! Hosts with their own addresses, for network faults against real processes: each host is a
//! Linux network namespace joined to a bridge in the test's own namespace (which keeps the
//! bridge's first address, `gateway`), and a fault is an iptables rule inside a host's
//! namespace. Needs root and iproute2/iptables; everything is removed when dropped.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    Connected,
    Refused,
    TimedOut,
}

pub struct Net {
    tag: String,
    prefix: String,
    hosts: usize,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// `hosts` namespaces on one bridge, named after this process so that runs do not meet.
    pub fn new(hosts: usize) -> anyhow::Result<Net> {
        let pid = std::process::id();
        let net = Net {
            tag: format!("m{}", pid % 100_000),
            prefix: format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250),
            hosts,
        };
        let bridge = net.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // A host's traffic to another crosses the bridge, which a Docker host's FORWARD policy
        // (with bridge netfilter on) would drop.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ])?;
        for i in 1..=hosts {
            let (ns, veth) = (net.ns(i), format!("{}v{i}", net.tag));
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            let ip = format!("{}/24", net.ip(i));
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    pub fn ns(&self, host: usize) -> String {
        format!("{}h{host}", self.tag)
    }

    /// The test's own address on the bridge.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn ip(&self, host: usize) -> String {
        format!("{}.{}", self.prefix, 10 + host)
    }

    /// `program` to run inside `host`.
    pub fn command(&self, host: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    fn iptables(&self, host: usize, rule: &[&str]) -> anyhow::Result<()> {
        let ns = self.ns(host);
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables"];
        args.extend_from_slice(rule);
        run(&args)
    }

    /// Drops every packet between `host` and `ip`, both ways.
    pub fn cut(&self, host: usize, ip: &str) -> anyhow::Result<()> {
        self.iptables(host, &["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
        self.iptables(host, &["-A", "OUTPUT", "-d", ip, "-j", "DROP"])
    }

    /// Drops the packets of connections between `host` and `ip` to or from `port` on either
    /// side (the rest of their traffic still flows).
    pub fn cut_port(&self, host: usize, ip: &str, port: u16) -> anyhow::Result<()> {
        let port = port.to_string();
        for (chain, addr) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            for dir in ["--dport", "--sport"] {
                self.iptables(
                    host,
                    &["-A", chain, addr, ip, "-p", "tcp", dir, &port, "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }

    /// Makes `host`'s link slow and lossy: the packets it sends go through a token bucket of
    /// `rate` (`tc tbf`, such as `256kbit`: queued, and dropped once queued 200 ms), and a
    /// `loss` share of the packets it receives is dropped at random (iptables `statistic`).
    /// (`tc netem`'s delay is not in this machine's kernel.)
    pub fn degrade(&self, host: usize, rate: &str, loss: f64) -> anyhow::Result<()> {
        let ns = self.ns(host);
        run(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
            "rate", rate, "burst", "16kbit", "latency", "200ms",
        ])?;
        let p = loss.to_string();
        self.iptables(
            host,
            &[
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
    }

    /// Packets `host`'s degraded link dropped: (at random on the way in, by its token bucket
    /// on the way out), from the kernel's counters.
    pub fn degraded_drops(&self, host: usize) -> (u64, u64) {
        let ns = self.ns(host);
        let out = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let random: u64 = out(&["iptables", "-L", "INPUT", "-v", "-x", "-n"])
            .lines()
            .filter(|l| l.contains("statistic"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        let qdisc = out(&["tc", "-s", "qdisc", "show", "dev", "eth0"]);
        let bucket = qdisc
            .split("dropped ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        (random, bucket)
    }

    /// Removes every fault of `host`: cuts and degraded links.
    pub fn heal(&self, host: usize) -> anyhow::Result<()> {
        self.iptables(host, &["-F", "INPUT"])?;
        self.iptables(host, &["-F", "OUTPUT"])?;
        // No qdisc to delete is fine: the link was not degraded.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(host),
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ])
            .stderr(std::process::Stdio::null())
            .status();
        Ok(())
    }

    /// What a TCP connection from `host` (`None`: the test's own namespace) to `ip:port`
    /// meets within two seconds.
    pub fn reach(&self, host: Option<usize>, ip: &str, port: u16) -> Reach {
        match host {
            None => {
                let Ok(addr) = format!("{ip}:{port}").parse() else {
                    return Reach::Refused;
                };
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => Reach::Connected,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::TimedOut,
                    Err(_) => Reach::Refused,
                }
            }
            // `timeout` exits 124 when the connection attempt was still hanging.
            Some(h) => match Command::new("ip")
                .args(["netns", "exec", &self.ns(h), "timeout", "2", "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
                .status()
                .map(|s| s.code())
            {
                Ok(Some(0)) => Reach::Connected,
                Ok(Some(124)) => Reach::TimedOut,
                _ => Reach::Refused,
            },
        }
    }

    /// The proof that a cut is real: the connection hangs (its packets vanish), which a
    /// refused one (a reset came back) or an open one does not prove.
    pub fn is_cut(&self, host: Option<usize>, ip: &str, port: u16) -> bool {
        self.reach(host, ip, port) == Reach::TimedOut
    }

    /// Whether `ip:port` accepts a connection from `host` within `within` (asking again).
    pub fn connects_within(
        &self,
        host: Option<usize>,
        ip: &str,
        port: u16,
        within: Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.reach(host, ip, port) == Reach::Connected {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = run(&["ip", "netns", "del", &self.ns(i)]);
        }
        let bridge = self.bridge();
        let _ = run(&["ip", "link", "del", &bridge]);
        let _ = run(&[
            "iptables", "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
    }
}
