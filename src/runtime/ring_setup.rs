//! Owns the one io_uring setting glommio 0.9 does not expose: `IORING_SETUP_COOP_TASKRUN`
//! on the rings it creates.
//!
//! Why: without it, every completion that arrives while a shard is running (a socket became
//! readable, a peer shard wrote our eventfd) makes the kernel interrupt the shard's CPU
//! with an inter-processor interrupt so the completion is posted at once. Under load that is
//! one IPI per wake-up of a connection: 11,000-14,000 per second on the 2-core machine's
//! p2p QoS 1 run, and `perf` put 15-17% of the shard's CPU in the interrupt's entry and exit.
//! With the flag the kernel posts completions on the shard's next system call, and a busy
//! shard makes one every few microseconds; a sleeping shard is still woken at once (the
//! flag only skips the interrupt to a *running* task). Measured in README "Performance".
//!
//! How: glommio creates its rings with `libc::syscall(SYS_io_uring_setup, ..)`, so this
//! module defines the C library's `syscall` for the whole executable. It passes every
//! call straight to the kernel, exactly as glibc's does (same arguments, -1 and `errno` on
//! error), and only for `io_uring_setup` of a ring asked for with no flags (glommio's
//! "main" and "latency" rings; its polled-IO ring asks for `IOPOLL` and is left alone) adds
//! the flag. Both matter: glommio waits for sockets through the latency ring. On that ring
//! the flag also delays glommio's preemption signal (its timer's completion) to the
//! shard's next system call or return from an interrupt, the timer tick included: a
//! shard makes system calls every few microseconds, and ringmq runs one task queue, where
//! that signal only decides when to poll for IO between ready tasks.
//! A kernel older than 5.19 rejects the flag with EINVAL and gets the call again
//! as it was asked. The interposition is for x86-64 and aarch64 Linux, whose calling
//! conventions pass `syscall`'s variadic integer arguments exactly like fixed ones; on
//! other targets glibc's `syscall` stays and the rings keep the kernel's default.
//! Drop this module when glommio lets its caller pass ring flags.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `IORING_SETUP_COOP_TASKRUN` (Linux 5.19).
const SETUP_COOP_TASKRUN: u32 = 1 << 8;

/// Byte offset of `flags` in `struct io_uring_params` (after `sq_entries`, `cq_entries`).
const PARAMS_FLAGS_OFFSET: usize = 8;

static COOP_RINGS_CREATED: AtomicUsize = AtomicUsize::new(0);

/// Rings created with `COOP_TASKRUN` in this process so far (0 on a kernel without it).
pub fn coop_rings_created() -> usize {
    COOP_RINGS_CREATED.load(Ordering::Relaxed)
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod interpose {
    use std::sync::atomic::Ordering;

    use libc::c_long;

    use super::{COOP_RINGS_CREATED, PARAMS_FLAGS_OFFSET, SETUP_COOP_TASKRUN};

    /// The C library's `syscall(number, ...)`, for every caller in this executable (the
    /// standard library's futex and getrandom calls included). See the module comment.
    ///
    /// # Safety
    /// The same contract as glibc's `syscall`: the arguments must be what the kernel call
    /// `number` expects.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn syscall(number: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
        if number == libc::SYS_io_uring_setup && a2 != 0 {
            let flags = (a2 as usize + PARAMS_FLAGS_OFFSET) as *mut u32;
            // SAFETY: io_uring_setup's second argument points to a struct io_uring_params,
            // which the caller lends to the kernel to read and write; `flags` is inside it.
            // Unaligned accesses: a caller may build the struct in a byte buffer.
            if unsafe { flags.read_unaligned() } == 0 {
                unsafe { flags.write_unaligned(SETUP_COOP_TASKRUN) };
                // SAFETY: the caller's own arguments, with one flag more.
                let result = unsafe { raw(number, a1, a2, a3, a4, a5, a6) };
                if result >= 0 {
                    COOP_RINGS_CREATED.fetch_add(1, Ordering::Relaxed);
                    return result;
                }
                // Older kernel (EINVAL) or a ring it refuses anyway: as asked.
                unsafe { flags.write_unaligned(0) };
            }
        }
        // SAFETY: forwarded unchanged; the caller answers for the arguments.
        let result = unsafe { raw(number, a1, a2, a3, a4, a5, a6) };
        if (-4095..0).contains(&result) {
            // SAFETY: errno is this thread's; glibc's `syscall` reports errors the same way.
            unsafe { *libc::__errno_location() = -result as libc::c_int };
            return -1;
        }
        result
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn raw(number: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
        let result: c_long;
        // SAFETY: the Linux x86-64 system call convention; the kernel clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") number => result,
                in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        result
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn raw(number: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
        let result: c_long;
        // SAFETY: the Linux aarch64 system call convention (number in x8, result in x0).
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") number,
                inlateout("x0") a1 => result, in("x1") a2, in("x2") a3, in("x3") a4, in("x4") a5, in("x5") a6,
                options(nostack),
            );
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glommio_rings_get_coop_taskrun_and_other_calls_pass_through() {
        let before = coop_rings_created();
        let answer =
            glommio::LocalExecutorBuilder::default().spawn(|| async { 42 }).expect("executor starts").join().expect("executor ends");
        assert_eq!(answer, 42);
        if kernel_at_least(5, 19) {
            // Both of glommio's flagless rings take the flag.
            assert!(coop_rings_created() >= before + 2, "rings with COOP_TASKRUN: {}", coop_rings_created() - before);
        }

        // Errors come back as glibc reports them: -1 and errno.
        // SAFETY: close(2) on a descriptor that cannot be open.
        let result = unsafe { libc::syscall(libc::SYS_close, -1 as libc::c_long) };
        assert_eq!(result, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
        // SAFETY: getpid takes no arguments.
        assert_eq!(unsafe { libc::syscall(libc::SYS_getpid) }, std::process::id() as libc::c_long);
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|part| part.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
    }
}
