#ifndef CEVM_SYSTEM_SHIMS_H
#define CEVM_SYSTEM_SHIMS_H

#include <spawn.h>
#include <sys/types.h>

/// sched_setaffinity(2) for one thread id, with the CPU list given as an
/// array (CPU_SET is a macro Swift cannot import). Returns 0 or -1 with errno.
int cevm_set_affinity(pid_t tid, const int *cpus, int count);

/// sched_getaffinity(2): writes up to `max` CPU numbers into `out`, returns
/// how many, or -1 with errno.
int cevm_get_affinity(pid_t tid, int *out, int max);

/// The POSIX_SPAWN_SETSID flag of glibc (a macro behind _GNU_SOURCE).
short cevm_posix_spawn_setsid_flag(void);

/// posix_spawn_file_actions_addclosefrom_np(3): close every descriptor >= from.
int cevm_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

/// gettid(2): the calling thread's id (for pinning it from another thread).
pid_t cevm_gettid(void);

/// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): starts write-back of
/// every dirty page of the file without waiting for it.
int cevm_start_writeback(int fd);

/// splice(2) of up to `len` bytes from `in` to `out` (one of them a pipe),
/// without offsets, with SPLICE_F_MOVE.
long cevm_splice(int in, int out, unsigned long len);

/// tee(2): duplicates up to `len` bytes of pipe `in` into pipe `out`
/// without consuming them.
long cevm_tee(int in, int out, unsigned long len);

/// ioctl(FIONREAD): bytes waiting to be read on socket `fd`, or -1 with errno.
int cevm_readable_bytes(int fd);

/// pipe2(fds, O_CLOEXEC), then F_SETPIPE_SZ to `capacity` (best effort);
/// returns the capacity the pipe has, or -1 with errno.
int cevm_pipe(int fds[2], int capacity);

/// The most descriptors a child tied to its parent inherits beyond stdio.
#define CEVM_SPAWN_MAX_INHERIT 64

/// fork(2) + execve(2) of a child that dies with its parent: between fork
/// and exec the child sets PR_SET_PDEATHSIG(SIGKILL), then re-checks that
/// its parent is still `parent` (the parent may have died before prctl),
/// resets every signal disposition and the signal mask, puts `stdio[i]` on
/// descriptor i, puts `inherit[k]` on descriptor 3 + k (k < `inherit_count`,
/// at most CEVM_SPAWN_MAX_INHERIT; each >= 0) without FD_CLOEXEC, closes
/// every other descriptor and execs.
///
/// The death signal fires when the *thread* that forked ends, so call this
/// from a thread that lives as long as the process. Only async-signal-safe
/// calls run in the child. Returns the pid, or -1 with errno (a failed exec
/// is reported through a close-on-exec pipe and the child is reaped here).
pid_t cevm_spawn_dying_with_parent(const char *path, char *const argv[], char *const envp[],
                                   const int stdio[3], const int *inherit, int inherit_count, pid_t parent);

#endif
