#define _GNU_SOURCE
#include "CSystemShims.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
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
