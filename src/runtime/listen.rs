//! The listening sockets: the start-up probe that proves the address free, the per-address
//! lock, and each shard's SO_REUSEPORT listener (with our backlog and optional CPU steering).

use std::net::SocketAddr;

use glommio::net::TcpListener;

use super::StartError;
use crate::config::Steering;

/// A listening socket on `addr` in the SO_REUSEPORT group, with our backlog (glommio's
/// own `bind` fixes it at 1024, which a connection storm on one shard overflows).
pub(super) fn listen(addr: SocketAddr, backlog: i32, steering: Steering, shard_count: usize) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    // SO_REUSEADDR too: connections this listener accepts inherit it, so after a restart
    // their TIME_WAIT remnants do not keep the next broker's probe from binding.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    if steering == Steering::Cpu {
        steer_by_cpu(&socket, shard_count)?;
    }
    // SAFETY: we own the listening descriptor and hand it to glommio, which owns it from here.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Attaches to the SO_REUSEPORT group a classic BPF program choosing listener number
/// `cpu % shard_count` for each new connection, `cpu` being the CPU that handled its SYN.
/// (Listeners are numbered in the order they joined; the kernel falls back to its hash
/// while fewer have joined.)
fn steer_by_cpu(socket: &socket2::Socket, shard_count: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Not in the libc crate; the same on every Linux architecture (asm-generic/socket.h).
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let instruction = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let program = [
        instruction(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32),
        instruction(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, shard_count as u32),
        instruction(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: the option value is a sock_fprog pointing at `program`, both alive for the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Proves `addr` free and resolves port 0 to a concrete port that every shard then binds
/// with SO_REUSEPORT. The probe binds *without* SO_REUSEPORT, so any socket already
/// listening there (another broker's, another ringmq's shards, one on the wildcard
/// address) makes it fail: with the option, a second ringmq would join the first one's
/// group and the kernel would split clients between two unrelated brokers. The returned
/// lock closes the race of two ringmq starting at once on one address.
pub(super) fn reserve_address(addr: SocketAddr) -> Result<(PortLock, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(bind_error)?;
    // Only so that connections in TIME_WAIT from an earlier run do not block a restart.
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    let local = socket
        .local_addr()
        .map_err(bind_error)?
        .as_socket()
        .ok_or_else(|| bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address")))?;
    let lock = PortLock::take(local).map_err(|source| StartError::Bind { addr: local, source })?;
    Ok((lock, local))
}

/// Held for the broker's life: an abstract-namespace Unix socket named after the listening
/// address. The kernel frees it when the process ends however it ends (kill -9 too), and it
/// lives in the network namespace, like the port itself.
///
/// Named after the address, not the port alone: brokers on one port of different addresses
/// (127.0.0.1:1883 and 127.0.0.2:1883, one per interface) are separate SO_REUSEPORT groups,
/// and a lock per port refused the second of them. A wildcard and a specific address on one
/// port are separate groups too (the specific one takes its address's connections, none are
/// split), and whichever starts second is refused by the probe once the other listens.
pub struct PortLock(#[allow(dead_code)] std::os::unix::net::UnixListener);

impl PortLock {
    fn take(addr: SocketAddr) -> std::io::Result<PortLock> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ringmq-listen-{addr}");
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        match std::os::unix::net::UnixListener::bind_addr(&address) {
            Ok(listener) => Ok(PortLock(listener)),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("address already in use: another ringmq is starting or running on {addr}"),
            )),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_locked_once_and_other_addresses_on_its_port_are_free() {
        let first: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let lock = PortLock::take(first).expect("the first lock");
        let again = PortLock::take(first).err().expect("a second lock on one address is refused");
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        assert!(again.to_string().contains("127.0.0.1:1"), "{again}");
        let other_ip = PortLock::take("127.0.0.2:1".parse().expect("an address")).expect("another address, same port");
        let ipv6 = PortLock::take("[::1]:1".parse().expect("an address")).expect("IPv6, same port");
        drop(lock);
        PortLock::take(first).expect("free again once its holder is gone");
        drop((other_ip, ipv6));
    }
}
