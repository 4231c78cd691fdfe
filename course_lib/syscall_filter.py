"""The grading sandbox's seccomp filter: system calls a notebook never needs are refused (EPERM).

Namespaces already keep a submission away from the instructor's files, processes and network,
but the kernel behind them is shared, and some of its interfaces are large and often the way in
of a privilege escalation. Without this filter a submission could, for instance, make itself
root of a user namespace of its own (``unshare -U -r``) and mount file systems there. The filter
refuses, whatever the arguments unless noted:

- new namespaces and mounts: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag,
  ``mount`` and the new mount API, ``pivot_root``, ``chroot``;
- the kernel's keyrings, which no namespace separates: ``add_key``, ``request_key``, ``keyctl``;
- other processes' memory: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``;
- programs and queues run by the kernel: ``bpf``, ``perf_event_open``, ``userfaultfd``, io_uring;
- System V shared memory (``shmget``: detached, its pages are in no process's memory, so the
  sandbox's memory check could not see them) and ``modify_ldt``;
- the machine's administration: modules, ``kexec``, ``reboot``, swap, clocks, accounting, quotas,
  the kernel log, I/O ports, file handles, host names;
- sockets of the families in ``SOCKET_FAMILIES_DENIED``: a virtual machine's sockets to its host
  (``AF_VSOCK``), which no network namespace separates on many kernels, so on a grader that is a
  virtual machine they could reach the host's services.

Not ``sched_setaffinity``, though refusing it would keep a sandbox on the cores the grader gives
it (``course_lib/sandbox.py::slot_cpus``): with it refused, PyTorch's OpenMP and MKL start one
thread instead of their share (the answer key's notebook ran 644 s instead of 394 in grading,
``bench/grade_key_full_sandbox_one_thread.md``). A notebook that widens its cores on purpose
stays on its slot's cores where the grader can make cgroups (a cpuset,
``course_lib/cgroup_limits.py``), and is not stopped where it cannot.

``clone3`` answers ENOSYS instead: its flags lie in memory a filter cannot read, and on ENOSYS the
C library falls back to ``clone``, whose flags the filter checks. System calls of another ABI
(32-bit ones on a 64-bit kernel) kill the calling thread: libseccomp's default for a foreign
architecture.

The filter is compiled by libseccomp, the library behind the filters of systemd, Docker and
Flatpak, called through ctypes (its official Python binding is not on PyPI), into a classic BPF
program that bubblewrap loads (``--seccomp FD``) after setting up the namespaces and just before
the sandboxed command runs: ``course_lib/sandbox.py`` passes it to every sandbox.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform

INSTALL_HINT = "install libseccomp (Debian/Ubuntu: sudo apt-get install libseccomp2)"

DENIED = (
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel keyrings
    "add_key", "request_key", "keyctl",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # programs and queues the kernel runs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
    # memory no process's accounts show (System V shared memory, once detached)
    "shmget",
    # old x86 interfaces that only exploits still use
    "modify_ldt",
    # the machine's administration
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "syslog", "iopl", "ioperm", "open_by_handle_at", "name_to_handle_at",
    "lookup_dcookie", "sethostname", "setdomainname", "vhangup",
)
"""System calls refused with EPERM; a name this machine's architecture lacks is skipped."""

CLONE_NEW = {"CLONE_NEWNS": 0x20000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000}
"""clone(2)'s namespace flags (linux/sched.h); clone refuses any of them. (CLONE_NEWTIME, 0x80,
is only taken by unshare and clone3: in clone's flags that byte is the exit signal.)"""

SOCKET_FAMILIES_DENIED = {"AF_VSOCK": 40}
"""socket(2)/socketpair(2) domains refused (linux/socket.h numbers)."""

CLONE_FLAGS_ARG = {"s390x": 1, "s390": 1}
"""Which argument of clone(2) holds its flags: the first, except on s390."""

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7        # (arg & datum_a) == datum_b


def SCMP_ACT_ERRNO(code: int) -> int:
    """The action "fail with this errno" (seccomp.h's macro)."""
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``: a test of one system-call argument."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class Unavailable(RuntimeError):
    """libseccomp cannot be found or refused the filter (the grader's problem)."""


def _library():
    """libseccomp, found by the linker's cache or by its usual file name."""
    for name in (ctypes.util.find_library("seccomp"), "libseccomp.so.2"):
        try:
            lib = ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            lib = None
        if lib is not None:
            break
    else:
        raise Unavailable(f"libseccomp is not installed: {INSTALL_HINT}")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _add(lib, ctx, action: int, syscall: int, *tests: ArgCmp) -> None:
    """One rule: ``action`` for ``syscall`` when every argument test holds."""
    array = (ArgCmp * len(tests))(*tests) if tests else None
    code = lib.seccomp_rule_add_array(ctx, action, syscall, len(tests), array)
    if code < 0:
        raise Unavailable(f"libseccomp refused a rule for system call {syscall}: "
                          f"{os.strerror(-code)}")


@functools.lru_cache(maxsize=2)
def program(refusal: int = errno.EPERM) -> bytes:
    """The filter as a classic BPF program (8 bytes an instruction), ready for ``bwrap --seccomp``;
    refused calls fail with ``refusal`` (tests pick an errno no host setting gives, to tell the
    filter's answer from the kernel's)."""
    lib = _library()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise Unavailable("libseccomp could not start a filter (seccomp_init failed)")
    try:
        for name in DENIED:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number >= 0:   # __NR_SCMP_ERROR (-1): not a system call of this architecture
                _add(lib, ctx, SCMP_ACT_ERRNO(refusal), number)
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        where = CLONE_FLAGS_ARG.get(platform.machine(), 0)
        for flag in CLONE_NEW.values():   # one rule a flag: refuse when that bit is set
            _add(lib, ctx, SCMP_ACT_ERRNO(refusal), clone,
                 ArgCmp(where, SCMP_CMP_MASKED_EQ, flag, flag))
        for name in (b"socket", b"socketpair"):   # the domain is the first argument (an int)
            number = lib.seccomp_syscall_resolve_name(name)
            for family in SOCKET_FAMILIES_DENIED.values():
                if number >= 0:
                    _add(lib, ctx, SCMP_ACT_ERRNO(refusal), number,
                         ArgCmp(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, family))
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            _add(lib, ctx, SCMP_ACT_ERRNO(errno.ENOSYS), clone3)
        fd = os.memfd_create("course-seccomp-export")
        try:
            if lib.seccomp_export_bpf(ctx, fd) < 0:
                raise Unavailable("libseccomp could not write the filter (seccomp_export_bpf)")
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as exported:
                return exported.read()
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def program_fd() -> int:
    """A fresh file descriptor from which bubblewrap reads :func:`program` (the caller closes it
    after starting bwrap; bwrap reads it to its end, so every sandbox needs its own)."""
    data = program()   # first: without libseccomp no descriptor is opened, so none leaks
    fd = os.memfd_create("course-seccomp")   # close-on-exec; Popen's pass_fds hands it to bwrap
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
