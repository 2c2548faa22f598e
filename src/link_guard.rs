//! Where fetches made on a client's behalf (provider media links) may connect. The rule is
//! checked on the addresses a host name resolves to, right before connecting, so a DNS name
//! pointing at `169.254.169.254` is refused as surely as the literal; provider fetches follow
//! no redirects, so no other address is ever reached.
//!
//! Cloud metadata services (AWS, GCP, Azure, ...) live on link-local addresses: a link there
//! would hand the proxy's cloud credentials to whoever wrote the send. Internal hosts stay
//! allowed by default, as On-Premise's own media fetches were: businesses kept media on
//! internal servers.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// `--link-fetch-block`: which addresses a fetch on a client's behalf may not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LinkPolicy {
    /// Link-local addresses (`169.254.0.0/16`, `fe80::/10`) and the cloud metadata services
    /// outside them (`fd00:ec2::254`, `100.100.100.200`).
    #[default]
    LinkLocal,
    /// Link-local plus loopback, private (RFC 1918, `fc00::/7`), shared (`100.64.0.0/10`) and
    /// unspecified addresses: only public hosts.
    Private,
    /// Nothing is refused (a proxy on a machine with no metadata service and trusted clients).
    None,
}

/// Whether `policy` refuses connecting to `ip`. IPv4 written as IPv6 (`::ffff:a.b.c.d`) is
/// judged as the IPv4 address it is.
pub fn refuses(policy: LinkPolicy, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    // Link-local ranges, plus the metadata services that live elsewhere: AWS's IPv6 endpoint
    // (`fd00:ec2::254`, unique-local) and Alibaba Cloud's (`100.100.100.200`, shared space).
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)
        }
    };
    match policy {
        LinkPolicy::None => false,
        LinkPolicy::LinkLocal => link_local,
        LinkPolicy::Private => {
            link_local
                || ip.is_loopback()
                || ip.is_unspecified()
                || match ip {
                    IpAddr::V4(v4) => {
                        v4.is_private()
                            || v4.is_broadcast()
                            || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                    }
                    IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
                }
        }
    }
}

/// The error a refused address gives; it reaches the client as On-Premise's 400 "Media
/// download error".
pub fn refused_error(ip: IpAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{ip} is not an address links may be fetched from (see --link-fetch-block)"),
    )
}

/// The system resolver, with the addresses `policy` refuses taken out: a name that resolves
/// only to refused addresses fails before any connection is attempted.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: LinkPolicy,
    inner: GaiResolver,
}

impl GuardedResolver {
    pub fn new(policy: LinkPolicy) -> Self {
        GuardedResolver {
            policy,
            inner: GaiResolver::new(),
        }
    }
}

/// Keeps the addresses `policy` allows; none left is the refusal of the first one.
pub fn allowed(
    policy: LinkPolicy,
    addrs: impl Iterator<Item = SocketAddr>,
) -> io::Result<std::vec::IntoIter<SocketAddr>> {
    let mut refused = None;
    let kept: Vec<SocketAddr> = addrs
        .filter(|addr| {
            let refuse = refuses(policy, addr.ip());
            if refuse && refused.is_none() {
                refused = Some(addr.ip());
            }
            !refuse
        })
        .collect();
    match (kept.is_empty(), refused) {
        (true, Some(ip)) => Err(refused_error(ip)),
        _ => Ok(kept.into_iter()),
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        let resolving = self.inner.call(name);
        Box::pin(async move {
            let addrs = resolving.await?;
            allowed(policy, addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_default_refuses_link_local_only() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(refuses(LinkPolicy::LinkLocal, ip(refused)), "{refused}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.2",
            "8.8.8.8",
            "::1",
            "fd00::1",
        ] {
            assert!(!refuses(LinkPolicy::LinkLocal, ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn private_also_refuses_internal_hosts_and_none_refuses_nothing() {
        for refused in [
            "169.254.169.254",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refuses(LinkPolicy::Private, ip(refused)), "{refused}");
        }
        assert!(!refuses(LinkPolicy::Private, ip("93.184.216.34")));
        assert!(!refuses(LinkPolicy::Private, ip("2606:2800:220:1::1")));
        assert!(!refuses(LinkPolicy::None, ip("169.254.169.254")));
    }

    #[test]
    fn a_name_resolving_only_to_refused_addresses_fails_and_mixed_ones_keep_the_rest() {
        let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:80".parse().unwrap();
        let refused = allowed(LinkPolicy::LinkLocal, [metadata].into_iter()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        let kept: Vec<_> = allowed(LinkPolicy::LinkLocal, [metadata, public].into_iter())
            .unwrap()
            .collect();
        assert_eq!(kept, [public]);
    }
}
