#define _GNU_SOURCE
#include "CSystemShims.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <string.h>
#include <unistd.h>

int cevm_set_affinity(pid_t tid, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) {
            errno = EINVAL;
            return -1;
        }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(tid, sizeof(set), &set);
}

int cevm_get_affinity(pid_t tid, int *out, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(tid, sizeof(set), &set) != 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++) {
        if (CPU_ISSET(cpu, &set)) out[n++] = cpu;
    }
    return n;
}

short cevm_posix_spawn_setsid_flag(void) { return POSIX_SPAWN_SETSID; }

int cevm_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

pid_t cevm_gettid(void) {
    return (pid_t)syscall(SYS_gettid);
}

int cevm_start_writeback(int fd) {
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

long cevm_splice(int in, int out, unsigned long len) {
    return (long)splice(in, NULL, out, NULL, len, SPLICE_F_MOVE);
}

long cevm_tee(int in, int out, unsigned long len) {
    return (long)tee(in, out, len, 0);
}

int cevm_pipe(int fds[2], int capacity) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    fcntl(fds[1], F_SETPIPE_SZ, capacity);
    return fcntl(fds[1], F_GETPIPE_SZ);
}

static void cevm_child_fail(int report) {
    int code = errno;
    ssize_t ignored = write(report, &code, sizeof code);
    (void)ignored;
    _exit(127);
}

pid_t cevm_spawn_dying_with_parent(const char *path, char *const argv[], char *const envp[],
                                   const int stdio[3], const int *inherit, int inherit_count, pid_t parent) {
    if (inherit_count < 0 || inherit_count > CEVM_SPAWN_MAX_INHERIT) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < inherit_count; i++) {
        if (inherit[i] < 0) {
            errno = EBADF;
            return -1;
        }
    }
    // Descriptors 0 .. targets-1 are set up in the child; everything it
    // moves out of the way goes above them.
    int targets = 3 + inherit_count;
    int above = targets > 10 ? targets : 10;
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int code = errno;
        close(report[0]);
        close(report[1]);
        errno = code;
        return -1;
    }
    if (pid == 0) {
        // Above the descriptors set up below, so that no dup2 clobbers it.
        int failure = fcntl(report[1], F_DUPFD_CLOEXEC, above);
        if (failure < 0) _exit(127);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) cevm_child_fail(failure);
        // The parent may have died between fork and prctl: then no signal comes.
        if (getppid() != parent) _exit(127);
        // The raw system call: glibc's sigaction refuses the signals it
        // reserves (32, 33), and an ignored one would stay ignored over exec.
        // A zeroed kernel sigaction is SIG_DFL with no flags and no mask.
        unsigned long dfl[4] = {0, 0, 0, 0};
        for (int sig = 1; sig <= 64; sig++) syscall(SYS_rt_sigaction, sig, dfl, NULL, sizeof(unsigned long));
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        // Move every source above the targets first, so that no dup2 below
        // overwrites a source another one still needs.
        int moved[3 + CEVM_SPAWN_MAX_INHERIT];
        for (int i = 0; i < targets; i++) {
            int source = i < 3 ? stdio[i] : inherit[i - 3];
            moved[i] = -1;
            if (source < 0) continue;
            moved[i] = fcntl(source, F_DUPFD_CLOEXEC, above);
            if (moved[i] < 0) cevm_child_fail(failure);
        }
        // dup2 clears FD_CLOEXEC on the target: these survive the exec.
        for (int i = 0; i < targets; i++) {
            if (moved[i] >= 0 && dup2(moved[i], i) < 0) cevm_child_fail(failure);
        }
        // Everything else goes, but the failure pipe (close-on-exec) until exec.
        int first = targets;
        if (syscall(SYS_close_range, (unsigned)failure + 1, ~0U, 0U) != 0) {
            // Kernels before 5.9: one by one, up to a generous bound.
            for (int fd = failure + 1; fd < 65536; fd++) close(fd);
        }
        for (int fd = first; fd < failure; fd++) close(fd);
        execve(path, argv, envp);
        cevm_child_fail(failure);
    }
    close(report[1]);
    int code = 0;
    ssize_t n;
    do {
        n = read(report[0], &code, sizeof code);
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof code) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        errno = code;
        return -1;
    }
    return pid;
}

int cevm_readable_bytes(int fd) {
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) != 0) return -1;
    return n;
}
