//! The seccomp filter `sluice run` puts on every agent it starts: socket(2) and
//! socketpair(2) fail with `EAFNOSUPPORT` for every address family sluice does not
//! mediate.
//!
//! This is defence in depth for the `packet_socket` row of the containment matrix
//! (docs/threat-model.md). That row is closed by the BPF LSM socket_create program,
//! which cannot load where the kernel lacks BTF or BPF trampolines; there, without this
//! filter, an agent could open AF_VSOCK sockets to the VM host, or bluetooth, CAN and
//! the like, which no cgroup hook sees. The families left open are exactly the ones the
//! LSM program allows (ebpf/sluice-ebpf/src/containment.rs): unix, inet, inet6, netlink
//! and AF_ALG (local crypto). Inet sockets are mediated by the cgroup hooks; raw inet
//! sockets are refused by cgroup/sock_create.
//!
//! Decisions:
//!
//! - **`EAFNOSUPPORT`, not `EPERM`/`EACCES`.** It is the kernel's own answer for a family
//!   it was built without, so programs that probe for a family (vsock, bluetooth) take
//!   their "not available here" path instead of treating it as a permission problem to
//!   retry or escalate, and it tells a seccomp refusal apart from the LSM's `EPERM`.
//!   seccomp runs at system call entry, before the LSM: where both are active the agent
//!   gets `EAFNOSUPPORT` and the attempt is **not** recorded as a `kernel:` refusal
//!   (seccomp cannot report to the daemon). `sluice run --no-seccomp` leaves it to the
//!   LSM alone, which records it.
//! - **Default action Allow**; only socket and socketpair carry rules, on arg0 compared
//!   as a 32-bit value (the kernel reads the family as an `int`, so high bits an agent
//!   sets in the 64-bit register are ignored by both).
//! - **x86_64**: the x32 ABI numbers of socket and socketpair (`__X32_SYSCALL_BIT |
//!   nr`) get the same rules, since x32 system calls carry `AUDIT_ARCH_X86_64` too. Any
//!   other architecture in a system call (i386 `int 0x80`, arm32 compat) kills the
//!   process: seccompiler's architecture check. So 32-bit binaries cannot run under a
//!   filtered agent; `--no-seccomp` is the way out for those.
//! - **`PR_SET_NO_NEW_PRIVS`** is set (seccompiler does it before installing the
//!   filter): set-uid binaries (sudo, set-uid ping) gain nothing in the agent.
//!
//! `seccompiler` 0.5 (rust-vmm, Firecracker's) compiles the rules to classic BPF; it
//! depends on libc only, is Apache-2.0 OR BSD-3-Clause, and supports x86_64, aarch64
//! and riscv64. On any other architecture [`AgentFilter::new`] fails and `sluice run`
//! refuses to start the agent unless given `--no-seccomp`.
//!
//! Limits, also in docs/threat-model.md: io_uring's IORING_OP_SOCKET (5.19+) creates
//! sockets without the socket system call, so the filter does not see it; and only
//! agents started by `sluice run` get the filter, not processes placed in the managed
//! cgroup another way (a systemd slice, a write to `cgroup.procs`).

use std::{collections::BTreeMap, io};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The address families an agent may still create sockets in: those the LSM program
/// allows.
pub const ALLOWED_FAMILIES: &[libc::c_int] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
    libc::AF_ALG,
];

/// What a refused socket(2) or socketpair(2) returns.
pub const REFUSAL_ERRNO: libc::c_int = libc::EAFNOSUPPORT;

/// The x32 ABI's marker bit in the system call number (x86_64 only).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// Why the filter cannot be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp filter for architecture {0} (supported: x86_64, aarch64, riscv64)")]
    Arch(&'static str),
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(String),
}

/// The compiled filter, built before exec so that installing it allocates nothing.
pub struct AgentFilter {
    program: BpfProgram,
}

impl AgentFilter {
    /// Compiles the filter for the architecture sluice was built for.
    pub fn new() -> Result<Self, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
        Ok(Self {
            program: compile(arch)?,
        })
    }

    /// Sets `PR_SET_NO_NEW_PRIVS` and installs the filter on the calling thread; exec
    /// keeps it. Allocates nothing, so it may run between fork and exec.
    pub fn install(&self) -> io::Result<()> {
        seccompiler::apply_filter(&self.program).map_err(|error| match error {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => io::Error::from_raw_os_error(libc::EINVAL),
        })
    }

    /// The number of classic BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (never, for a built filter).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

/// The system call numbers the rules apply to: socket and socketpair, plus their x32
/// numbers on x86_64.
fn filtered_syscalls() -> Vec<i64> {
    // i64 system call numbers: every architecture seccompiler supports is 64-bit.
    let native = [libc::SYS_socket, libc::SYS_socketpair];
    #[cfg(target_arch = "x86_64")]
    {
        native
            .iter()
            .flat_map(|nr| [*nr, *nr | X32_SYSCALL_BIT])
            .collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        native.to_vec()
    }
}

fn compile(arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let compile_error = |e: &dyn std::fmt::Display| SeccompError::Compile(e.to_string());
    // One rule: the family is none of the allowed ones (conditions of a rule are ANDed).
    let not_allowed = ALLOWED_FAMILIES
        .iter()
        .map(|family| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *family as u64)
                .map_err(|e| compile_error(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rule = SeccompRule::new(not_allowed).map_err(|e| compile_error(&e))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = filtered_syscalls()
        .into_iter()
        .map(|nr| (nr, vec![rule.clone()]))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(REFUSAL_ERRNO as u32),
        arch,
    )
    .map_err(|e| compile_error(&e))?;
    BpfProgram::try_from(filter).map_err(|e| compile_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        // The system call numbers are the build target's, so only its own architecture
        // is meaningful; x86_64 adds the two x32 numbers.
        let filter = AgentFilter::new().unwrap();
        assert!(!filter.is_empty());
        assert!(filter.len() < 128, "{} instructions", filter.len());
    }

    /// Installs the filter in a forked child (it cannot be removed again) and checks
    /// what socket(2) and socketpair(2) return there for each family. The child exits
    /// with the number of the first case that went wrong.
    #[test]
    fn only_the_mediated_families_get_sockets_under_the_filter() {
        let filter = AgentFilter::new().unwrap();
        let allowed = [
            (libc::AF_UNIX, libc::SOCK_STREAM),
            (libc::AF_INET, libc::SOCK_STREAM),
            (libc::AF_INET6, libc::SOCK_DGRAM),
            (libc::AF_NETLINK, libc::SOCK_RAW),
        ];
        let refused = [
            (libc::AF_VSOCK, libc::SOCK_STREAM),
            (libc::AF_PACKET, libc::SOCK_RAW),
            (libc::AF_BLUETOOTH, libc::SOCK_STREAM),
            (libc::AF_CAN, libc::SOCK_RAW),
            (libc::AF_TIPC, libc::SOCK_STREAM),
        ];
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = (|| {
                if filter.install().is_err() {
                    return 1;
                }
                for (i, (family, kind)) in allowed.iter().enumerate() {
                    let (fd, _) = socket(*family, *kind);
                    if fd < 0 {
                        return 10 + i as i32;
                    }
                    // SAFETY: fd is ours.
                    unsafe { libc::close(fd) };
                }
                let mut pair = [0; 2];
                // SAFETY: pair has room for two descriptors.
                if unsafe {
                    libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
                } != 0
                {
                    return 20;
                }
                for (i, (family, kind)) in refused.iter().enumerate() {
                    if socket(*family, *kind) != (-1, REFUSAL_ERRNO) {
                        return 30 + i as i32;
                    }
                    // SAFETY: pair has room for two descriptors.
                    let rc = unsafe { libc::socketpair(*family, *kind, 0, pair.as_mut_ptr()) };
                    if (rc, errno()) != (-1, REFUSAL_ERRNO) {
                        return 40 + i as i32;
                    }
                }
                // High bits in the 64-bit register change the family for neither.
                // SAFETY: a plain system call on integers.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_socket,
                        (1u64 << 32) | libc::AF_VSOCK as u64,
                        libc::SOCK_STREAM as u64,
                        0u64,
                    )
                };
                if (fd, errno()) != (-1, REFUSAL_ERRNO) {
                    return 50;
                }
                0
            })();
            // SAFETY: leaves the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: pid is our child; status is a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the case that went wrong");
    }

    fn errno() -> libc::c_int {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn socket(family: libc::c_int, kind: libc::c_int) -> (libc::c_int, libc::c_int) {
        // SAFETY: a plain system call on integers.
        let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
        (fd, if fd < 0 { errno() } else { 0 })
    }
}
