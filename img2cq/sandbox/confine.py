"""Fencing a sandbox child in: resource limits, descriptors, environment, the kernel sandbox.

In the kernel (strict isolation): Landlock lets a child read only the Python installation and its
packages, this project's ``img2cq/`` and ``metrics/`` packages, the shared libraries,
``/dev/null`` and ``/dev/urandom``, and write only its private directory, and neither bind nor
connect TCP, signal or trace processes outside itself nor reach their abstract unix sockets; a
seccomp filter refuses the system calls listed below; the child holds no capabilities and can
gain none. Everything goes through ctypes, with Linux x86_64 system-call numbers and constants
from the kernel's uapi. A Python audit hook in the program child adds an early, readable error
(``forbidden``), not a boundary.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import resource
import signal
import struct
import sys
import tempfile

from img2cq.sandbox.wire import RESULT_FD


class SandboxUnavailable(RuntimeError):
    """The kernel cannot confine untrusted programs here (and the caller did not opt out)."""



# --------------------------------------------------------------------------------------------
# The kernel sandbox (strict isolation): Landlock for files, TCP and signals, seccomp for the
# rest, no capabilities. Linux x86_64 system-call numbers and constants from the kernel's uapi.

LANDLOCK_ABI_NEEDED = 6  # Linux 6.12: scoping of signals and abstract unix sockets
_SYS_CAPSET, _SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 126, 444, 445, 446
PR_SET_PDEATHSIG, _PR_GET_SECCOMP, _PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 21, 22, 36, 38

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_DIR, _FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_ALL = (1 << 16) - 1  # every right Landlock ABI >= 5 knows: each is denied unless a rule grants it
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_FS_READ = _FS_READ_FILE | _FS_READ_DIR
_FS_PRIVATE = (_FS_READ | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG
               | _FS_REFER | _FS_TRUNCATE)  # the child's own directory: no devices, fifos, sockets, symlinks, exec
_NET_ALL = 0b11  # TCP bind and connect
_SCOPE_ALL = 0b11  # abstract unix sockets and signals outside the sandbox

# Refused with EPERM by the seccomp filter (x86_64 numbers).
_DENIED_SYSCALLS = {
    "socket": 41, "socketpair": 53,  # every family: pathname unix sockets (a database's, say) and UDP
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240,  # IPC named outside any path
    "add_key": 248, "request_key": 249, "keyctl": 250,  # the kernel keyrings
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,  # its operations bypass seccomp
    # namespaces (a new user namespace would hand the child every capability inside it) and mounts
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
    # other processes' memory and descriptors (Landlock's ptrace scoping refuses them too)
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "process_madvise": 440, "migrate_pages": 256, "move_pages": 279,
    # running any other program: Landlock grants no execute right, and memfd files are beyond its reach
    "execve": 59, "execveat": 322,
    # the kernel's less guarded corners, and what only an administrator does
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "lookup_dcookie": 212, "syslog": 103,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "vhangup": 153, "quotactl": 179, "quotactl_fd": 443,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "modify_ldt": 154, "uselib": 134,
    "ioprio_set": 251,
}
# Allowed only on the calling process itself: these arguments (by index) must be 0. Processes of
# the same user may otherwise change each other's limits, priority, CPUs and scheduling.
_SELF_ONLY_SYSCALLS = {
    "prlimit64": (302, (0,)), "setpriority": (141, (0, 1)),  # PRIO_PROCESS, who = 0
    "sched_setaffinity": (203, (0,)), "sched_setscheduler": (144, (0,)), "sched_setparam": (142, (0,)),
    "sched_setattr": (314, (0,)),
}
_SYS_CLONE, _SYS_CLONE3 = 56, 435  # clone: refused with a namespace flag; clone3 (its flags sit in memory
_CLONE_NEW_NAMESPACES = 0x7E020000  # a filter cannot read): ENOSYS, so that libc falls back to clone
SYS_UNSHARE, SYS_SETNS, CLONE_NEWPID = 272, 308, 0x20000000
_AUDIT_ARCH_X86_64, _X32_SYSCALL_BIT = 0xC000003E, 0x40000000


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def syscall(number: int, *args) -> int:
    """A raw system call; raises OSError where it fails."""
    args = tuple(ctypes.c_long(a) if isinstance(a, int) else a for a in args)
    result = _libc().syscall(ctypes.c_long(number), *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def prctl(option: int, value: int = 0) -> None:
    if _libc().prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def strict_isolation_problem() -> str | None:
    """Why the kernel here cannot confine untrusted programs (None if it can)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the kernel sandbox is implemented for Linux on x86_64, not {sys.platform} on {platform.machine()}"
    abi = landlock_abi()
    if abi < LANDLOCK_ABI_NEEDED:
        return (f"the kernel offers Landlock ABI {abi} (0: missing or disabled), and ABI {LANDLOCK_ABI_NEEDED} "
                "(Linux 6.12 or later with landlock among its LSMs) is needed")
    if _libc().prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) == -1:
        return "the kernel has no seccomp"
    return None


@functools.cache
def _sandbox_rules() -> tuple[tuple[str, int], ...]:
    """(path, Landlock rights) a sandboxed child may use besides its private directory."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    readable = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    readable |= {*site.getsitepackages(), sysconfig.get_config_var("LIBDIR") or ""}
    readable |= {os.path.join(repo_root(), "img2cq"), os.path.join(repo_root(), "metrics")}  # not the root: databases live there
    readable |= {"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"}  # shared libraries
    rules = [(path, _FS_READ) for path in sorted(readable) if path and os.path.isdir(path)]
    return (*rules, (os.devnull, _FS_READ_FILE | _FS_WRITE_FILE), ("/dev/urandom", _FS_READ_FILE))


@functools.cache
def _seccomp_filter() -> bytes:
    """BPF program: kill other architectures; refuse the x32 ABI, _DENIED_SYSCALLS, the
    _SELF_ONLY_SYSCALLS aimed at another process and clone with a namespace flag (EPERM); clone3
    with ENOSYS; allow the rest."""
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    deny, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS  # SECCOMP_RET_ERRNO

    def arg_low(index: int) -> int:  # seccomp_data.args[index], its low 32 bits (pids and flags fit)
        return 16 + 8 * index

    # (code, jump if true, jump if false, k); a jump is 0 (next) or the name of a label below
    program: list = [(load, 0, 0, 4), (jeq, 0, "kill", _AUDIT_ARCH_X86_64), (load, 0, 0, 0),  # arch, nr
                     (jge, "deny", 0, _X32_SYSCALL_BIT), (jeq, "enosys", 0, _SYS_CLONE3), (jeq, "clone", 0, _SYS_CLONE)]
    program += [(jeq, "deny", 0, number) for number in sorted(_DENIED_SYSCALLS.values())]
    program += [(jeq, f"self-{number}", 0, number) for number, _ in _SELF_ONLY_SYSCALLS.values()]
    program += [(ret, 0, 0, allow), "clone", (load, 0, 0, arg_low(0)), (jset, "deny", "allow", _CLONE_NEW_NAMESPACES)]
    for number, indices in _SELF_ONLY_SYSCALLS.values():
        program.append(f"self-{number}")
        for index in indices:
            program += [(load, 0, 0, arg_low(index)), (jeq, 0, "deny", 0)]
        program.append((ret, 0, 0, allow))
    program += ["allow", (ret, 0, 0, allow), "deny", (ret, 0, 0, deny), "enosys", (ret, 0, 0, enosys),
                "kill", (ret, 0, 0, kill)]
    labels, instructions = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(target, at: int) -> int:
        distance = target if isinstance(target, int) else labels[target] - at - 1
        if not 0 <= distance <= 255:
            raise ValueError("seccomp jump out of range")
        return distance

    return b"".join(struct.pack("<HBBI", code, offset(jt, i), offset(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(instructions))


def lock_down(workdir: str) -> None:
    """Enter the kernel sandbox; irreversible, and inherited by anything this process starts."""
    prctl(_PR_SET_NO_NEW_PRIVS, 1)
    syscall(_SYS_CAPSET, ctypes.byref(_CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)())  # no capabilities
    bpf = _seccomp_filter()
    program = _SockFprog(len(bpf) // 8, bpf)
    if _libc().prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(program), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)) == -1:  # SECCOMP_MODE_FILTER
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp: {os.strerror(code)}")
    attr = _RulesetAttr(_FS_ALL, _NET_ALL, _SCOPE_ALL)
    ruleset = syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    try:
        for path, rights in (*_sandbox_rules(), (workdir, _FS_PRIVATE)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= _FS_FILE_RIGHTS
                rule = _PathBeneathAttr(rights, fd)
                syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)



def precompute() -> None:
    """Compute the Landlock rules and the seccomp filter once, so that forked children inherit them."""
    _sandbox_rules()
    _seccomp_filter()


# --------------------------------------------------------------------------------------------
# The audit hook of a program child: an early, readable error, not a boundary.

class SandboxViolation(Exception):
    """Raised by the audit hook when a program does something it may not."""


_FORBIDDEN_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.killpg", "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "signal.pthread_kill",
    "os.setuid", "os.setgid", "resource.setrlimit", "resource.prlimit",
)
_PATH_EVENTS = (
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
    "os.link", "os.truncate", "os.utime", "os.chflags", "shutil.rmtree", "shutil.copyfile",
    "shutil.move",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install_audit_hook(workdir: str, violations: list[str]) -> None:
    """Refuse process creation, sockets, ctypes and writes outside `workdir`; remember each try.

    An early, friendly error only (the kernel is the boundary): the hook keeps its own copies of
    the tables and functions it uses, so rebinding the module's names does not change it."""
    root = os.path.realpath(workdir) + os.sep
    forbidden, path_events, write_flags = tuple(_FORBIDDEN_EVENTS), tuple(_PATH_EVENTS), int(_WRITE_FLAGS)
    realpath, fsdecode, sep, violation, remember = os.path.realpath, os.fsdecode, os.sep, SandboxViolation, violations.append
    path_types = (str, bytes, os.PathLike)

    def inside(path) -> bool:
        if isinstance(path, int):  # an fd the program already holds
            return True
        try:
            path = fsdecode(path)
        except TypeError:
            return False
        return (realpath(path) + sep).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(forbidden):
            remember(event)
            raise violation(f"{event} is not allowed in a CadQuery program")
        if event == "open" and args:
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writing and not inside(path):
                remember(f"write to {path}")
                raise violation(f"writing {path} is not allowed (outside the sandbox)")
        elif event.startswith(path_events) and args and not all(
            inside(a) for a in args[:2] if isinstance(a, path_types)
        ):
            remember(f"{event} {args[0]}")
            raise violation(f"{event} outside the sandbox is not allowed")

    sys.addaudithook(hook)


def enter_sandbox(workdir: str, cpu: int, memory_mb: int, result_fd: int, isolation: str) -> None:
    """Fence this process in before it runs its job: limits, stdio, descriptors, environment, and
    (strict isolation) the kernel sandbox. Afterwards the result pipe is descriptor RESULT_FD."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # every soft limit is its hard limit: none can be raised
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with an error instead
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if result_fd != RESULT_FD:
        os.dup2(result_fd, RESULT_FD)
    for name in os.listdir("/proc/self/fd"):  # the worker's pipes, the other spare's, any library's
        if int(name) > RESULT_FD:
            try:
                os.close(int(name))
            except OSError:  # the descriptor listdir itself used
                pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
    os.chdir(workdir)
    tempfile.tempdir = workdir
    sys.dont_write_bytecode = True  # imports never try to write next to the read-only sources
    if isolation == "strict":
        lock_down(workdir)


def repo_root() -> str:
    """The directory that holds this project's ``img2cq`` and ``metrics`` packages."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
