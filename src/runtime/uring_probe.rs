//! Owns the start-up check that the kernel lets this process create an io_uring, so a
//! container or sysctl that forbids it stops ringmq with a message naming the cause and the
//! fix, instead of glommio's bare "Operation not permitted" from deep inside an executor.

use std::io;

/// `struct io_uring_params` is 120 bytes on every architecture (15 aligned u64 words);
/// zeroed asks for defaults.
const IO_URING_PARAMS_WORDS: usize = 15;

/// Why io_uring cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum UringUnavailable {
    #[error(
        "io_uring is blocked ({0}): ringmq runs on io_uring and cannot start without it. In a container, the \
         default seccomp profile of Docker 25+ and containerd 2.0 denies io_uring: run with \
         --security-opt seccomp=tuning/container/seccomp-ringmq.json (Kubernetes: a Localhost seccompProfile), \
         see tuning/README.md, \"Containers\". On a host, check the sysctl kernel.io_uring_disabled (must be 0, \
         or 1 with this user in kernel.io_uring_group)"
    )]
    Denied(io::Error),
    #[error("io_uring is not available ({0}): ringmq needs Linux 5.8 or later with io_uring compiled in")]
    Missing(io::Error),
}

/// Creates and closes one small ring.
pub fn check() -> Result<(), UringUnavailable> {
    let mut params = [0u64; IO_URING_PARAMS_WORDS];
    // SAFETY: io_uring_setup reads and writes `params` (a correctly sized, zeroed struct
    // io_uring_params) and returns a new file descriptor, which we close at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENOSYS) => UringUnavailable::Missing(error),
            // EPERM: seccomp or kernel.io_uring_disabled; EACCES: not in io_uring_group.
            _ => UringUnavailable::Denied(error),
        });
    }
    // SAFETY: `fd` is the ring descriptor just returned to us and used nowhere else.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ring_can_be_created_where_the_tests_run() {
        // The whole test suite needs io_uring; this names the cause first if it is missing.
        super::check().expect("io_uring available");
    }
}
