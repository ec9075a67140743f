/*
 * cevm-workload: the bundled guest's workload (runs as PID 1).
 *
 * It keeps a memory working set and a ring of disk records whose contents are
 * deterministic functions of a tick counter, and verifies them every tick, so
 * that a VM that was migrated, checkpointed or restored can prove that its
 * memory and disk are consistent with each other and with its past.
 *
 * Parameters come from /proc/cmdline (the last occurrence of a key wins):
 *   cevm.mem=MiB cevm.pages=N cevm.disk=N cevm.tick=MS cevm.verify=N cevm.job=N
 *   cevm.net=ROLE[,ROLE...] (send:HOST:PORT, recv:PORT, echo:PORT, ping:HOST:PORT) cevm.netrate=N
 * (cevm.ip= and cevm.gw= are applied by /init before the workload starts.)
 * Console lines (exact formats, see Docs/guest.md):
 *   cevm-workload start mem=<MiB> pages=<n> disk=<n> tick=<ms> verify=<n> job=<units>
 *   cevm-tick counter=<c> sum=<16 hex> mem=<ok|BAD> disk=<ok|BAD|off>
 *   cevm-error ...
 *   cevm-job done=<units> total=<N> rate=<x.y>
 *   cevm-job complete units=<N> seconds=<s.mmm>
 *   cevm-net ... (network roles, one process each, beside the tick loop)
 *
 * Build: gcc -static -O2 -o cevm-workload workload.c
 * Outside the guest (pid != 1) the environment variables CEVM_CMDLINE (used
 * instead of /proc/cmdline) and CEVM_DISK (used instead of /dev/vda, may be a
 * regular file) help testing; the program then exits instead of powering off.
 *
 * In the guest, the records live in /disk/cevm/records when /init mounted the
 * disk's ext2 filesystem on /disk (the bundled disk has one), else on the
 * whole of /dev/vda; every console line is also appended to
 * /disk/cevm/workload.log, synced every tick.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/reboot.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define MAX_SLOTS 4096u          /* ring cap: 16 MiB of records */
#define MAX_ERR_LINES 8          /* per category and tick */

#define HDR_MAGIC UINT64_C(0x314b53444d564543) /* "CEVMDSK1" little endian */
#define REC_MAGIC UINT64_C(0x3143455244564543) /* "CEVDREC1" */
#define HDR_VERSION 1u

/* Record layout (4096 bytes, little-endian u64 words):
 *   w[0] magic  w[1] tick  w[2] j  w[3] slot  w[4..510] filler(tick,j,i)
 *   w[511] checksum = csum(w[0..510])
 * Header (slot -1, byte offset 0):
 *   w[0] magic  w[1] version  w[2] nslots  w[3..510] 0  w[511] checksum
 * Slot s lives at byte offset 4096 * (1 + s). */

static int pid1;
static int con = 1;
static int logfd = -1; /* the disk's /cevm/workload.log, when init mounted it */

/* In the guest, /init mounts the disk's ext2 filesystem here when it has one;
 * the records then live in a preallocated file, the log beside it. A disk
 * without a filesystem is used raw, as a whole. */
#define GUEST_RECORDS "/disk/cevm/records"
#define GUEST_LOG "/disk/cevm/workload.log"

/* ---------- output ---------- */

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (logfd >= 0 && write(logfd, buf, (size_t)n) != n) {
        close(logfd); /* a full or broken log never stops the workload */
        logfd = -1;
    }
    const char *p = buf;
    while (n > 0) { /* one write per line: lines are never split by us */
        ssize_t w = write(con, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

/* The log reaches the disk every tick, so that what `cevm inspect` shows of
 * a VM that was killed is at most one tick behind its console. */
static void sync_log(void)
{
    if (logfd >= 0 && fdatasync(logfd) != 0) {
        close(logfd);
        logfd = -1;
    }
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out("cevm-error fatal %s", buf);
    if (!pid1)
        exit(1);
    for (;;) /* PID 1 never exits */
        sleep(3600);
}

/* ---------- hashing ---------- */

static inline uint64_t mix64(uint64_t z)
{
    z += UINT64_C(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* seed of page p at version v; also its contribution to the digest */
static inline uint64_t page_seed(uint64_t p, uint64_t v)
{
    return mix64(p * UINT64_C(0xd1b54a32d192ed03) ^ mix64(v ^ UINT64_C(0x632be59bd9b4e019)));
}

static inline uint64_t page_word(uint64_t seed, uint64_t i)
{
    return seed ^ (i * UINT64_C(0x9e3779b97f4a7c15));
}

/* j-th page chosen at tick c */
static inline uint64_t pick_page(uint64_t c, uint64_t j, uint64_t npages)
{
    return mix64(c * UINT64_C(0xa0761d6478bd642f) ^ mix64(j + UINT64_C(0xe7037ed1a0b428db))) % npages;
}

static uint64_t csum(const uint64_t *w, unsigned n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (unsigned i = 0; i < n; i++)
        h = mix64(h ^ w[i]) + i;
    return h;
}

/* ---------- parameters ---------- */

#define NET_SPEC_MAX 256

struct params {
    uint64_t mem, pages, disk, tick, verify, job, netrate;
    char net[NET_SPEC_MAX]; /* cevm.net=ROLE[,ROLE...], "" = no network role */
};

static void parse_cmdline(const char *s, struct params *P)
{
    static const char *const keys[] = {"cevm.mem=", "cevm.pages=", "cevm.disk=",
                                       "cevm.tick=", "cevm.verify=", "cevm.job=", "cevm.netrate="};
    uint64_t *dst[] = {&P->mem, &P->pages, &P->disk, &P->tick, &P->verify, &P->job, &P->netrate};
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        const char *e = s;
        while (*e && *e != ' ' && *e != '\t' && *e != '\n')
            e++;
        static const char netkey[] = "cevm.net=";
        size_t nk = sizeof netkey - 1;
        if ((size_t)(e - s) >= nk && strncmp(s, netkey, nk) == 0) {
            size_t vl = (size_t)(e - s) - nk; /* empty value: no role (last wins) */
            if (vl >= sizeof P->net)
                vl = sizeof P->net - 1; /* the cut role is then reported as bad */
            memcpy(P->net, s + nk, vl);
            P->net[vl] = 0;
        }
        for (unsigned k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            size_t kl = strlen(keys[k]);
            if ((size_t)(e - s) > kl && strncmp(s, keys[k], kl) == 0) {
                char num[32];
                size_t nl = (size_t)(e - s) - kl;
                if (nl >= sizeof num)
                    break;
                memcpy(num, s + kl, nl);
                num[nl] = 0;
                char *end;
                errno = 0;
                unsigned long long v = strtoull(num, &end, 10);
                if (errno == 0 && *end == 0 && num[0] != '-')
                    *dst[k] = v; /* later occurrences overwrite: last wins */
            }
        }
        s = e;
    }
}

static void read_params(struct params *P)
{
    *P = (struct params){.mem = 16, .pages = 64, .disk = 4, .tick = 200, .verify = 0, .job = 0, .netrate = 1000};
    const char *env = pid1 ? NULL : getenv("CEVM_CMDLINE");
    if (env) {
        parse_cmdline(env, P);
    } else {
        char buf[4096];
        int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
        if (fd < 0 && pid1) {
            mkdir("/proc", 0555);
            mount("proc", "/proc", "proc", 0, NULL);
            fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
        }
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            buf[n > 0 ? n : 0] = 0;
            parse_cmdline(buf, P);
        } else {
            out("cevm-error cmdline unreadable: %s (using defaults)", strerror(errno));
        }
    }
    if (P->mem < 1)
        P->mem = 1;
    if (P->mem > 65536)
        P->mem = 65536;
    if (P->tick < 1)
        P->tick = 1;
    if (P->tick > 3600000)
        P->tick = 3600000;
    if (P->pages > 1000000)
        P->pages = 1000000;
    if (P->disk > 1024)
        P->disk = 1024;
    if (P->netrate > 1000000)
        P->netrate = 1000000;
}

/* ---------- time ---------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u), .tv_nsec = (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* ---------- state (all in guest memory: it migrates with the VM) ---------- */

static struct params prm;
static uint64_t npages;
static uint64_t *mem;       /* npages * WORDS words */
static uint32_t *ver;       /* per-page version */
static uint64_t digest;     /* XOR over p of page_seed(p, ver[p]) */
static uint64_t vcursor;    /* next page to verify in partial mode */

enum { DISK_OFF, DISK_ON, DISK_BROKEN };
static int disk_state = DISK_OFF;
static int dfd = -1;
static uint64_t nslots;
static int fresh_disk;      /* header was never initialised at this boot */
static uint64_t *dbuf;      /* 4096-aligned: record being written */
static uint64_t *rbuf;      /* 4096-aligned: read buffer */

static void fill_page(uint64_t p)
{
    uint64_t s = page_seed(p, ver[p]);
    uint64_t *w = mem + p * WORDS;
    for (uint64_t i = 0; i < WORDS; i++)
        w[i] = page_word(s, i);
}

static void mem_init(void)
{
    npages = prm.mem * 256u;
    size_t bytes = (size_t)npages * PAGE;
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED)
        fatal("cannot allocate %" PRIu64 " MiB working set: %s", prm.mem, strerror(errno));
    ver = calloc(npages, sizeof *ver);
    if (!ver)
        fatal("cannot allocate version array");
    digest = 0;
    for (uint64_t p = 0; p < npages; p++) {
        fill_page(p);
        digest ^= page_seed(p, 0);
    }
}

/* returns 1 if ok */
static int mem_tick(uint64_t c)
{
    for (uint64_t j = 0; j < prm.pages; j++) {
        uint64_t p = pick_page(c, j, npages);
        digest ^= page_seed(p, ver[p]);
        ver[p]++;
        digest ^= page_seed(p, ver[p]);
        fill_page(p);
    }
    int ok = 1, reported = 0;
    uint64_t bad = 0;
    uint64_t n = (prm.verify == 0 || prm.verify >= npages) ? npages : prm.verify;
    uint64_t p = (n == npages) ? 0 : vcursor;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t s = page_seed(p, ver[p]);
        const uint64_t *w = mem + p * WORDS;
        for (uint64_t i = 0; i < WORDS; i++) {
            if (w[i] != page_word(s, i)) {
                ok = 0;
                bad++;
                if (reported++ < MAX_ERR_LINES)
                    out("cevm-error counter=%" PRIu64 " mem page=%" PRIu64 " version=%" PRIu32
                        " word=%" PRIu64 " expected=%016" PRIx64 " found=%016" PRIx64,
                        c, p, ver[p], i, page_word(s, i), w[i]);
                break;
            }
        }
        if (++p == npages)
            p = 0;
    }
    if (n != npages)
        vcursor = p;
    if (bad > MAX_ERR_LINES)
        out("cevm-error counter=%" PRIu64 " mem bad-pages=%" PRIu64 " (only the first %d shown)",
            c, bad, MAX_ERR_LINES);
    if (n == npages) {
        /* full pass: the incremental digest must match the version array */
        uint64_t d = 0;
        for (uint64_t q = 0; q < npages; q++)
            d ^= page_seed(q, ver[q]);
        if (d != digest) {
            ok = 0;
            out("cevm-error counter=%" PRIu64 " mem digest expected=%016" PRIx64 " found=%016" PRIx64,
                c, d, digest);
        }
    }
    return ok;
}

/* ---------- disk ---------- */

static int pread_full(uint64_t *buf, off_t off)
{
    for (;;) {
        ssize_t n = pread(dfd, buf, PAGE, off);
        if (n == (ssize_t)PAGE)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EIO;
        return -1;
    }
}

static int pwrite_full(const uint64_t *buf, off_t off)
{
    for (;;) {
        ssize_t n = pwrite(dfd, buf, PAGE, off);
        if (n == (ssize_t)PAGE)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EIO;
        return -1;
    }
}

static off_t slot_off(uint64_t s) { return (off_t)((1 + s) * PAGE); }

static void make_record(uint64_t *w, uint64_t c, uint64_t j, uint64_t slot)
{
    w[0] = REC_MAGIC;
    w[1] = c;
    w[2] = j;
    w[3] = slot;
    uint64_t s = mix64(c * UINT64_C(0x8ebc6af09c88c6e3) ^ mix64(j ^ UINT64_C(0x589965cc75374cc3)));
    for (unsigned i = 4; i < WORDS - 1; i++)
        w[i] = page_word(s, i);
    w[WORDS - 1] = csum(w, WORDS - 1);
}

static int all_zero(const uint64_t *w)
{
    for (unsigned i = 0; i < WORDS; i++)
        if (w[i])
            return 0;
    return 1;
}

/* classify rbuf: 0 empty, 1 valid record (tick/j filled), -1 corrupt */
static int classify(const uint64_t *w, uint64_t slot, uint64_t *tick, uint64_t *j)
{
    if (all_zero(w))
        return 0;
    if (w[0] != REC_MAGIC || w[3] != slot || w[WORDS - 1] != csum(w, WORDS - 1))
        return -1;
    uint64_t tmp[WORDS];
    make_record(tmp, w[1], w[2], slot);
    if (memcmp(tmp, w, PAGE) != 0)
        return -1;
    *tick = w[1];
    *j = w[2];
    return 1;
}

static void disk_init(void)
{
    if (prm.disk == 0)
        return;
    const char *path = pid1 ? NULL : getenv("CEVM_DISK");
    if (!path)
        path = access(GUEST_RECORDS, F_OK) == 0 ? GUEST_RECORDS : "/dev/vda";
    if (access(path, F_OK) != 0)
        return; /* no disk: disk=off */
    disk_state = DISK_BROKEN;
    if (posix_memalign((void **)&dbuf, PAGE, PAGE) || posix_memalign((void **)&rbuf, PAGE, PAGE))
        fatal("cannot allocate disk buffers");
    dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (dfd < 0) {
        out("cevm-error disk-io open %s: %s", path, strerror(errno));
        return;
    }
    uint64_t size = 0;
    if (ioctl(dfd, BLKGETSIZE64, &size) != 0) {
        struct stat st;
        if (fstat(dfd, &st) == 0 && S_ISREG(st.st_mode))
            size = (uint64_t)st.st_size;
    }
    uint64_t cap = size / PAGE > 1 ? size / PAGE - 1 : 0;
    if (cap > MAX_SLOTS)
        cap = MAX_SLOTS;
    if (pread_full(rbuf, 0) != 0) {
        out("cevm-error disk-io read header: %s", strerror(errno));
        return;
    }
    if (all_zero(rbuf)) {
        if (cap < 2 * prm.disk) {
            out("cevm-error disk-header device too small: %" PRIu64 " bytes, %" PRIu64
                " slots, need %" PRIu64, size, cap, 2 * prm.disk);
            return;
        }
        nslots = cap;
        memset(dbuf, 0, PAGE);
        dbuf[0] = HDR_MAGIC;
        dbuf[1] = HDR_VERSION;
        dbuf[2] = nslots;
        dbuf[WORDS - 1] = csum(dbuf, WORDS - 1);
        if (pwrite_full(dbuf, 0) != 0 || fdatasync(dfd) != 0) {
            out("cevm-error disk-io write header: %s", strerror(errno));
            return;
        }
        fresh_disk = 1;
    } else {
        if (rbuf[0] != HDR_MAGIC || rbuf[1] != HDR_VERSION || rbuf[WORDS - 1] != csum(rbuf, WORDS - 1)) {
            out("cevm-error disk-header unrecognised header on %s (not a cevm disk?)", path);
            return;
        }
        nslots = rbuf[2];
        if (nslots > size / PAGE - 1 || nslots < 2 * prm.disk) {
            out("cevm-error disk-header slots=%" PRIu64 " does not fit device (%" PRIu64
                " bytes) with disk=%" PRIu64, nslots, size, prm.disk);
            return;
        }
    }
    disk_state = DISK_ON;
}

/* returns 1 if ok */
static int disk_tick(uint64_t c)
{
    int ok = 1, lines = 0;
    uint64_t t, jj;
    /* (1) the slots of this tick must be empty or hold older ticks */
    for (uint64_t j = 0; j < prm.disk; j++) {
        uint64_t s = (c * prm.disk + j) % nslots;
        if (pread_full(rbuf, slot_off(s)) != 0) {
            ok = 0;
            if (lines++ < MAX_ERR_LINES)
                out("cevm-error counter=%" PRIu64 " disk-io read slot=%" PRIu64 ": %s", c, s, strerror(errno));
            continue;
        }
        int k = classify(rbuf, s, &t, &jj);
        if (k < 0) {
            ok = 0;
            if (lines++ < MAX_ERR_LINES)
                out("cevm-error counter=%" PRIu64 " disk-corrupt slot=%" PRIu64 " before-write found-magic=%016" PRIx64
                    " found-tick=%" PRIu64, c, s, rbuf[0], rbuf[1]);
        } else if (k > 0 && t >= c) {
            ok = 0;
            if (lines++ < MAX_ERR_LINES)
                out("cevm-error counter=%" PRIu64 " disk-newer slot=%" PRIu64 " expected-tick<%" PRIu64
                    " found-tick=%" PRIu64 " found-j=%" PRIu64, c, s, c, t, jj);
        }
    }
    /* (2) write this tick's records */
    for (uint64_t j = 0; j < prm.disk; j++) {
        uint64_t s = (c * prm.disk + j) % nslots;
        make_record(dbuf, c, j, s);
        if (pwrite_full(dbuf, slot_off(s)) != 0) {
            ok = 0;
            if (lines++ < MAX_ERR_LINES)
                out("cevm-error counter=%" PRIu64 " disk-io write slot=%" PRIu64 ": %s", c, s, strerror(errno));
        }
    }
    if (fdatasync(dfd) != 0) {
        ok = 0;
        if (lines++ < MAX_ERR_LINES)
            out("cevm-error counter=%" PRIu64 " disk-io fdatasync: %s", c, strerror(errno));
    }
    /* (3) read them back; (4) the previous tick's records must be intact */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t want = pass == 0 ? c : c - 1;
        if (pass == 1 && c == 1 && fresh_disk)
            break; /* very first tick of a fresh boot on a new disk */
        for (uint64_t j = 0; j < prm.disk; j++) {
            uint64_t s = (want * prm.disk + j) % nslots;
            if (pread_full(rbuf, slot_off(s)) != 0) {
                ok = 0;
                if (lines++ < MAX_ERR_LINES)
                    out("cevm-error counter=%" PRIu64 " disk-io read slot=%" PRIu64 ": %s", c, s, strerror(errno));
                continue;
            }
            int k = classify(rbuf, s, &t, &jj);
            if (k == 1 && t == want && jj == j)
                continue;
            ok = 0;
            if (lines++ >= MAX_ERR_LINES)
                continue;
            const char *what = pass == 0 ? "disk-readback" : "disk-older";
            if (k == 0)
                out("cevm-error counter=%" PRIu64 " %s slot=%" PRIu64 " expected-tick=%" PRIu64
                    " expected-j=%" PRIu64 " found=empty", c, what, s, want, j);
            else if (k < 0)
                out("cevm-error counter=%" PRIu64 " disk-corrupt slot=%" PRIu64 " expected-tick=%" PRIu64
                    " expected-j=%" PRIu64 " found-magic=%016" PRIx64 " found-tick=%" PRIu64,
                    c, s, want, j, rbuf[0], rbuf[1]);
            else
                out("cevm-error counter=%" PRIu64 " %s slot=%" PRIu64 " expected-tick=%" PRIu64
                    " expected-j=%" PRIu64 " found-tick=%" PRIu64 " found-j=%" PRIu64,
                    c, t > want ? "disk-newer" : what, s, want, j, t, jj);
        }
    }
    if (lines > MAX_ERR_LINES)
        out("cevm-error counter=%" PRIu64 " disk errors=%d (only the first %d shown)", c, lines, MAX_ERR_LINES);
    return ok;
}

/* ---------- network roles (cevm.net=, each in its own forked process) ----------
 *
 * The roles run beside the tick loop, never in it: each is a child process
 * forked before the working set is allocated (so no copy-on-write of it),
 * niced so that on a 1-vCPU guest the ticks keep their pace. Console lines
 * start with "cevm-net " (the echo banner, sent to the client, with
 * "cevm-echo "). A broken connection is reported, never hidden.
 *
 * Record (NET_REC = 1024 bytes, little-endian u64 words):
 *   w[0] magic "CEVNREC1"  w[1] seq (1, 2, ...)  w[2] NET_REC
 *   w[3..126] filler(seq, i)  w[127] checksum = csum(w[0..126]) */

#define NET_REC 1024u
#define NET_WORDS (NET_REC / 8u)
#define NET_MAGIC UINT64_C(0x314345524e564543) /* "CEVNREC1" */
#define NET_BAD_LINES 8                         /* bad-record lines per second */

static volatile uint64_t *shared_counter; /* the tick counter, for the echo banner */

static void make_net_record(uint64_t *w, uint64_t seq)
{
    w[0] = NET_MAGIC;
    w[1] = seq;
    w[2] = NET_REC;
    for (unsigned i = 3; i < NET_WORDS - 1; i++)
        w[i] = mix64(seq * UINT64_C(0x9e3779b97f4a7c15) ^ i);
    w[NET_WORDS - 1] = csum(w, NET_WORDS - 1);
}

static int net_record_ok(const uint64_t *w)
{
    if (w[0] != NET_MAGIC || w[2] != NET_REC || w[NET_WORDS - 1] != csum(w, NET_WORDS - 1))
        return 0;
    for (unsigned i = 3; i < NET_WORDS - 1; i++)
        if (w[i] != mix64(w[1] * UINT64_C(0x9e3779b97f4a7c15) ^ i))
            return 0;
    return 1;
}

static void peer_name(const struct sockaddr_in *sa, char *buf, size_t len)
{
    char a[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, a, sizeof a);
    snprintf(buf, len, "%s:%u", a, (unsigned)ntohs(sa->sin_port));
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A listening TCP socket on 0.0.0.0:port; retried once a second (the
 * interface may not be up yet), the first failure reported. */
static int net_listen(const char *role, unsigned port)
{
    int reported = 0;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd >= 0) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                     .sin_addr.s_addr = htonl(INADDR_ANY)};
            if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 8) == 0) {
                out("cevm-net %s listening port=%u", role, port);
                return fd;
            }
            close(fd);
        }
        if (!reported++)
            out("cevm-net %s listen-failed port=%u error=%s", role, port, strerror(errno));
        nap_ms(1000);
    }
}

/* the sender's counters (each role is its own process) */
static struct {
    uint64_t sent, sent_at_report, resets, t_report;
    int connected;
} snd;

/* once a second: cevm-net send=<records written> rate=<records/s> resets=<n> connected=<0|1> */
static void send_report(uint64_t t)
{
    if (t - snd.t_report < 1000000000u)
        return;
    double secs = (double)(t - snd.t_report) / 1e9;
    out("cevm-net send=%" PRIu64 " rate=%.0f resets=%" PRIu64 " connected=%d",
        snd.sent, (double)(snd.sent - snd.sent_at_report) / secs, snd.resets, snd.connected);
    snd.sent_at_report = snd.sent;
    snd.t_report = t;
}

/* A TCP connection to `to` for role `role` (HOST:PORT as given), with
 * TCP_NODELAY: a non-blocking connect waited for at most 3 s, tried again
 * once a second until it succeeds; each kind of failure is printed once,
 * not every retry, and `report` (the role's progress line) goes on. */
static int net_connect(const struct sockaddr_in *to, const char *role, const char *host, unsigned port,
                       void (*report)(uint64_t))
{
    int last_err = -1;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            fatal("net %s: socket: %s", role, strerror(errno));
        int err = 0;
        if (connect(fd, (const struct sockaddr *)to, sizeof *to) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                int r;
                while ((r = poll(&p, 1, 3000)) < 0 && errno == EINTR)
                    ;
                socklen_t l = sizeof err;
                if (r == 0)
                    err = ETIMEDOUT;
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
                    err = errno;
            }
        }
        if (err == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        close(fd);
        if (err != last_err)
            out("cevm-net %s connect-failed to=%s:%u error=%s", role, host, port, strerror(err));
        last_err = err;
        nap_ms(1000);
        report(now_ns());
    }
}

/* cevm.net=send:HOST:PORT */
static void net_send(const char *host, unsigned port, uint64_t rate)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1)
        fatal("cevm.net=send:%s:%u: HOST must be an IPv4 address", host, port);
    out("cevm-net start role=send to=%s:%u rate=%" PRIu64, host, port, rate);
    static uint64_t rec[NET_WORDS];
    uint64_t seq = 1;
    double credit = 0;
    snd.t_report = now_ns();

    for (;;) {
        int fd = net_connect(&to, "send", host, port, send_report);
        snd.connected = 1;
        out("cevm-net send connected to=%s:%u next=%" PRIu64, host, port, seq);
        size_t off = 0;              /* bytes of the current record already written */
        make_net_record(rec, seq);
        uint64_t tlast = now_ns();
        credit = rate ? 1 : 0;
        for (;;) {
            uint64_t t = now_ns();
            send_report(t);
            if (rate) {
                credit += (double)(t - tlast) * (double)rate / 1e9;
                double cap = (double)rate / 10 + 1; /* at most 100 ms of backlog */
                if (credit > cap)
                    credit = cap;
            }
            tlast = t;
            if (rate && off == 0 && credit < 1) {
                uint64_t wait_us = (uint64_t)((1 - credit) * 1e6 / (double)rate) + 1;
                if (wait_us < 10000)
                    wait_us = 10000; /* batches: at most 100 wake-ups a second */
                nap_ms((unsigned)(wait_us / 1000));
                continue;
            }
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int r = poll(&p, 1, 1000);
            if (r == 0 || (r < 0 && errno == EINTR))
                continue;
            ssize_t w = send(fd, (char *)rec + off, NET_REC - off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    continue;
                int err = errno;
                snd.resets++;
                snd.connected = 0;
                out("cevm-net send broken to=%s:%u sent=%" PRIu64 " partial=%zu error=%s",
                    host, port, snd.sent, off, strerror(err));
                break;
            }
            off += (size_t)w;
            if (off == NET_REC) {
                snd.sent++;
                seq++;
                off = 0;
                if (rate)
                    credit -= 1;
                make_net_record(rec, seq);
            }
        }
        close(fd);
        nap_ms(1000);
    }
}

/* the receiver's state (each role is its own process) */
static struct {
    uint64_t buf[64 * NET_WORDS]; /* 64 KiB: whole records are checked in place */
    size_t have;
    int cfd;
    char peer[64];
    uint64_t next, total, gaps, missing, dups, bad, resets;
    uint64_t conn_records, dup_first, dup_last, dup_run;
    unsigned bad_lines;
} rcv = {.cfd = -1, .next = 1};

/* a run of duplicates is one line */
static void recv_flush_dups(void)
{
    if (rcv.dup_run)
        out("cevm-net dup first=%" PRIu64 " last=%" PRIu64 " count=%" PRIu64 " next=%" PRIu64,
            rcv.dup_first, rcv.dup_last, rcv.dup_run, rcv.next);
    rcv.dup_run = 0;
}

static void recv_broken(const char *reason)
{
    recv_flush_dups();
    rcv.resets++;
    out("cevm-net reset from=%s records=%" PRIu64 " partial=%zu next=%" PRIu64 " reason=%s",
        rcv.peer, rcv.conn_records, rcv.have, rcv.next, reason);
    close(rcv.cfd);
    rcv.cfd = -1;
    rcv.have = 0;
}

static void recv_record(const uint64_t *w)
{
    rcv.conn_records++;
    if (!net_record_ok(w)) {
        rcv.bad++;
        if (rcv.bad_lines++ < NET_BAD_LINES)
            out("cevm-net bad from=%s record=%" PRIu64 " magic=%016" PRIx64 " seq=%" PRIu64 " next=%" PRIu64,
                rcv.peer, rcv.conn_records, w[0], w[1], rcv.next);
        return;
    }
    uint64_t s = w[1];
    if (s < rcv.next) { /* already received */
        rcv.dups++;
        if (rcv.dup_run && s == rcv.dup_last + 1) {
            rcv.dup_last = s;
            rcv.dup_run++;
        } else {
            recv_flush_dups();
            rcv.dup_first = rcv.dup_last = s;
            rcv.dup_run = 1;
        }
        return;
    }
    recv_flush_dups();
    rcv.total++;
    if (s > rcv.next) {
        rcv.gaps++;
        rcv.missing += s - rcv.next;
        out("cevm-net gap expected=%" PRIu64 " found=%" PRIu64 " missing=%" PRIu64, rcv.next, s, s - rcv.next);
    }
    rcv.next = s + 1;
}

/* cevm.net=recv:PORT */
static void net_recv(unsigned port)
{
    out("cevm-net start role=recv port=%u", port);
    int lfd = net_listen("recv", port);
    uint64_t t_report = now_ns(), total_at_report = 0;

    for (;;) {
        uint64_t t = now_ns();
        if (t - t_report >= 1000000000u) {
            recv_flush_dups();
            double secs = (double)(t - t_report) / 1e9;
            out("cevm-net recv=%" PRIu64 " gaps=%" PRIu64 " dups=%" PRIu64 " bad=%" PRIu64 " resets=%" PRIu64
                " missing=%" PRIu64 " next=%" PRIu64 " rate=%.0f connected=%d",
                rcv.total, rcv.gaps, rcv.dups, rcv.bad, rcv.resets, rcv.missing, rcv.next, (double)(rcv.total - total_at_report) / secs, rcv.cfd >= 0);
            if (rcv.bad_lines > NET_BAD_LINES)
                out("cevm-net bad lines-suppressed=%u", rcv.bad_lines - NET_BAD_LINES);
            rcv.bad_lines = 0;
            total_at_report = rcv.total;
            t_report = t;
        }
        struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = rcv.cfd, .events = POLLIN}};
        uint64_t left_ms = (t_report + 1000000000u - t) / 1000000u + 1;
        int r = poll(p, rcv.cfd >= 0 ? 2 : 1, (int)left_ms);
        if (r <= 0)
            continue;
        if (p[0].revents & POLLIN) {
            struct sockaddr_in sa;
            socklen_t sl = sizeof sa;
            int nfd = accept4(lfd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (nfd >= 0) {
                if (rcv.cfd >= 0)
                    recv_broken("replaced"); /* the sender reconnected before we saw the old one end */
                rcv.cfd = nfd;
                rcv.conn_records = 0;
                peer_name(&sa, rcv.peer, sizeof rcv.peer);
                out("cevm-net recv connected from=%s next=%" PRIu64, rcv.peer, rcv.next);
            }
        }
        if (rcv.cfd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            for (;;) {
                ssize_t n = read(rcv.cfd, (char *)rcv.buf + rcv.have, sizeof rcv.buf - rcv.have);
                if (n == 0) {
                    recv_broken("eof");
                    break;
                }
                if (n < 0) {
                    if (errno == EINTR)
                        continue;
                    if (errno != EAGAIN)
                        recv_broken(strerror(errno));
                    break;
                }
                rcv.have += (size_t)n;
                size_t whole = rcv.have / NET_REC;
                for (size_t k = 0; k < whole; k++)
                    recv_record(rcv.buf + k * NET_WORDS);
                rcv.have -= whole * NET_REC;
                if (rcv.have)
                    memmove(rcv.buf, (char *)rcv.buf + whole * NET_REC, rcv.have);
                if ((size_t)n < sizeof rcv.buf / 2)
                    break; /* drained for now */
            }
        }
    }
}

/* cevm.net=echo:PORT: "cevm-echo counter=<c>\n" on connect, then every byte received is sent back. */
#define ECHO_CLIENTS 8
static void net_echo(unsigned port)
{
    out("cevm-net start role=echo port=%u", port);
    int lfd = net_listen("echo", port);
    struct pollfd p[1 + ECHO_CLIENTS];
    char names[ECHO_CLIENTS][64];
    uint64_t bytes[ECHO_CLIENTS];
    for (unsigned i = 0; i < ECHO_CLIENTS; i++)
        p[1 + i].fd = -1;
    p[0].fd = lfd;
    p[0].events = POLLIN;
    for (;;) {
        for (unsigned i = 0; i < ECHO_CLIENTS; i++)
            p[1 + i].events = POLLIN;
        if (poll(p, 1 + ECHO_CLIENTS, -1) <= 0)
            continue;
        if (p[0].revents & POLLIN) {
            struct sockaddr_in sa;
            socklen_t sl = sizeof sa;
            int fd = accept4(lfd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
            if (fd >= 0) {
                unsigned i = 0;
                while (i < ECHO_CLIENTS && p[1 + i].fd >= 0)
                    i++;
                char banner[96];
                int n = snprintf(banner, sizeof banner, "cevm-echo counter=%" PRIu64 "\n",
                                 shared_counter ? __atomic_load_n(shared_counter, __ATOMIC_RELAXED) : 0);
                if (send(fd, banner, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n || i == ECHO_CLIENTS) {
                    close(fd); /* full: the banner (if it went) is all this client gets */
                } else {
                    p[1 + i].fd = fd;
                    bytes[i] = 0;
                    peer_name(&sa, names[i], sizeof names[i]);
                    out("cevm-net echo accepted from=%s", names[i]);
                }
            }
        }
        for (unsigned i = 0; i < ECHO_CLIENTS; i++) {
            if (p[1 + i].fd < 0 || !(p[1 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char b[4096];
            ssize_t n = read(p[1 + i].fd, b, sizeof b);
            if (n < 0 && errno == EINTR)
                continue;
            /* a blocking send back: a client that does not read stalls only itself and then us, briefly */
            if (n <= 0 || send(p[1 + i].fd, b, (size_t)n, MSG_NOSIGNAL) != n) {
                out("cevm-net echo closed from=%s bytes=%" PRIu64 "%s%s", names[i], bytes[i],
                    n < 0 ? " error=" : "", n < 0 ? strerror(errno) : "");
                close(p[1 + i].fd);
                p[1 + i].fd = -1;
                continue;
            }
            bytes[i] += (uint64_t)n;
        }
    }
}

/* cevm.net=ping:HOST:PORT: round trips to an echo role. After the echo's
 * banner line, one PING_MSG-byte message at a time (its number in w[1]) is
 * sent and must come back whole before the next is sent, at most
 * cevm.netrate a second (0: at once). Once a second:
 *   cevm-net ping n=<round trips> got=<this second> p50=<us> p99=<us> max=<us> resets=<n> connected=<0|1>
 * (p50/p99/max over this second's round trips, "-" when there were none; a
 * round trip still waiting shows as wait=<us>). */
#define PING_MSG 32u
#define PING_MAGIC UINT64_C(0x31474e4950564543) /* "CEVPING1" */
#define PING_SAMPLES 65536u

static struct {
    uint64_t n, resets, t_report, sent_at;
    uint32_t rtt[PING_SAMPLES]; /* this second's round trips, us */
    unsigned got;
    int connected, waiting;
} png;

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void ping_report(uint64_t t)
{
    if (t - png.t_report < 1000000000u)
        return;
    char wait[48] = "";
    if (png.waiting)
        snprintf(wait, sizeof wait, " wait=%" PRIu64, (t - png.sent_at) / 1000u);
    if (png.got == 0) {
        out("cevm-net ping n=%" PRIu64 " got=0 p50=- p99=- max=- resets=%" PRIu64 " connected=%d%s",
            png.n, png.resets, png.connected, wait);
    } else {
        qsort(png.rtt, png.got, sizeof png.rtt[0], cmp_u32);
        unsigned i50 = (png.got - 1) / 2, i99 = (unsigned)(((uint64_t)png.got * 99 + 99) / 100) - 1;
        out("cevm-net ping n=%" PRIu64 " got=%u p50=%u p99=%u max=%u resets=%" PRIu64 " connected=%d%s",
            png.n, png.got, png.rtt[i50], png.rtt[i99], png.rtt[png.got - 1], png.resets, png.connected, wait);
    }
    png.got = 0;
    png.t_report = t;
}

/* Waits (reporting every second) until fd is readable; 0 when it is, -1 on poll failure. */
static int ping_wait_readable(int fd)
{
    for (;;) {
        uint64_t t = now_ns();
        ping_report(t);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t left_ms = (png.t_report + 1000000000u - t) / 1000000u + 1;
        int r = poll(&p, 1, (int)left_ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Reads up to len bytes, waiting (reporting every second) while there are none: the count read,
 * or 0 with *why set on end of stream or an error. */
static size_t ping_read(int fd, void *buf, size_t len, const char **why)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n > 0)
            return (size_t)n;
        if (n == 0) {
            *why = "eof";
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN || ping_wait_readable(fd) != 0) {
            *why = strerror(errno);
            return 0;
        }
    }
}

static void net_ping(const char *host, unsigned port, uint64_t rate)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1)
        fatal("cevm.net=ping:%s:%u: HOST must be an IPv4 address", host, port);
    out("cevm-net start role=ping to=%s:%u rate=%" PRIu64, host, port, rate);
    uint64_t seq = 0;
    png.t_report = now_ns();
    for (;;) {
        int fd = net_connect(&to, "ping", host, port, ping_report);
        png.connected = 1;
        const char *why = NULL;
        /* the banner: up to its newline, byte by byte (nothing else comes before our first message) */
        for (;;) {
            char c;
            if (ping_read(fd, &c, 1, &why) == 0 || c == '\n')
                break;
        }
        if (!why)
            out("cevm-net ping connected to=%s:%u n=%" PRIu64, host, port, png.n);
        uint64_t next_at = now_ns();
        while (!why) {
            uint64_t t = now_ns();
            ping_report(t);
            if (rate && t < next_at) {
                uint64_t ms = (next_at - t) / 1000000u;
                nap_ms(ms ? (unsigned)ms : 1u);
                continue;
            }
            uint64_t msg[PING_MSG / 8] = {PING_MAGIC, ++seq, PING_MSG, 0};
            png.sent_at = now_ns();
            if (rate)
                next_at = (next_at + 1000000000u / rate > png.sent_at) ? next_at + 1000000000u / rate : png.sent_at;
            /* 32 bytes into an empty socket: all or an error */
            ssize_t w;
            while ((w = send(fd, msg, PING_MSG, MSG_NOSIGNAL)) < 0 && errno == EINTR)
                ;
            if (w != (ssize_t)PING_MSG) {
                why = w < 0 ? strerror(errno) : "short send";
                break;
            }
            png.waiting = 1;
            uint64_t back[PING_MSG / 8];
            size_t have = 0;
            while (have < PING_MSG) {
                size_t n = ping_read(fd, (char *)back + have, PING_MSG - have, &why);
                if (n == 0)
                    break;
                have += n;
            }
            png.waiting = 0;
            if (why)
                break;
            if (back[0] != PING_MAGIC || back[1] != seq || back[2] != PING_MSG) {
                why = "mismatch";
                out("cevm-net ping bad seq=%" PRIu64 " got=%016" PRIx64 ":%" PRIu64, seq, back[0], back[1]);
                break;
            }
            uint64_t us = (now_ns() - png.sent_at) / 1000u;
            png.n++;
            if (png.got < PING_SAMPLES)
                png.rtt[png.got++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        }
        png.resets++;
        png.connected = 0;
        png.waiting = 0;
        out("cevm-net ping broken to=%s:%u n=%" PRIu64 " error=%s", host, port, png.n, why);
        close(fd);
        nap_ms(1000);
    }
}

/* Forks one process per role of cevm.net= (comma separated):
 * send:HOST:PORT, recv:PORT, echo:PORT, ping:HOST:PORT. */
static void net_start(void)
{
    if (!prm.net[0])
        return;
    shared_counter = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared_counter == MAP_FAILED)
        shared_counter = NULL;
    char spec[NET_SPEC_MAX];
    memcpy(spec, prm.net, sizeof spec);
    char *save = NULL;
    for (char *role = strtok_r(spec, ",", &save); role; role = strtok_r(NULL, ",", &save)) {
        char host[64] = "";
        unsigned port = 0;
        int kind = 0, used = 0;
        if (sscanf(role, "send:%63[0-9.]:%u%n", host, &port, &used) == 2 && role[used] == 0)
            kind = 1;
        else if (sscanf(role, "recv:%u%n", &port, &used) == 1 && role[used] == 0)
            kind = 2;
        else if (sscanf(role, "echo:%u%n", &port, &used) == 1 && role[used] == 0)
            kind = 3;
        else if (sscanf(role, "ping:%63[0-9.]:%u%n", host, &port, &used) == 2 && role[used] == 0)
            kind = 4;
        if (!kind || port == 0 || port > 65535) {
            out("cevm-error net bad role '%s' (send:HOST:PORT, recv:PORT, echo:PORT or ping:HOST:PORT)", role);
            continue;
        }
        pid_t pid = fork();
        if (pid < 0) {
            out("cevm-error net fork: %s", strerror(errno));
            continue;
        }
        if (pid > 0)
            continue;
        /* the role's process */
        if (!pid1)
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* testing on a host: die with the workload */
        pid1 = 0;                             /* fatal() then exits this process only */
        setpriority(PRIO_PROCESS, 0, 10);     /* the tick loop comes first */
        if (kind == 1)
            net_send(host, port, prm.netrate);
        else if (kind == 2)
            net_recv(port);
        else if (kind == 3)
            net_echo(port);
        else
            net_ping(host, port, prm.netrate);
        _exit(1);
    }
}

/* PID 1 reaps; a role that ends (it should not) is reported. */
static void net_reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
        out("cevm-error net role process %d ended (%s %d)", (int)pid,
            WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

/* ---------- main ---------- */

static const char *disk_word(int ok)
{
    if (disk_state == DISK_OFF)
        return "off";
    if (disk_state == DISK_BROKEN)
        return "BAD";
    return ok ? "ok" : "BAD";
}

/* one unit of work; returns mem_ok, sets *disk_ok */
static int do_tick(uint64_t c, int *disk_ok)
{
    int mok = mem_tick(c);
    *disk_ok = disk_state == DISK_ON ? disk_tick(c) : 1;
    return mok;
}

static void power_off(void)
{
    sync();
    if (!pid1)
        exit(0);
    reboot(RB_POWER_OFF);
    for (;;)
        sleep(3600);
}

int main(void)
{
    pid1 = getpid() == 1;
    if (pid1) {
        int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0)
            con = fd;
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        logfd = open(GUEST_LOG, O_WRONLY | O_APPEND | O_CLOEXEC);
    } else {
        signal(SIGPIPE, SIG_IGN);
    }
    read_params(&prm);
    out("cevm-workload start mem=%" PRIu64 " pages=%" PRIu64 " disk=%" PRIu64 " tick=%" PRIu64
        " verify=%" PRIu64 " job=%" PRIu64, prm.mem, prm.pages, prm.disk, prm.tick, prm.verify, prm.job);
    net_start(); /* before the working set exists: the roles do not share it */
    mem_init();
    disk_init();

    const uint64_t tick_ns = prm.tick * 1000000u;
    if (prm.job > 0) {
        uint64_t t0 = now_ns(), next = t0 + tick_ns;
        int mok_all = 1, dok_all = 1;
        for (uint64_t c = 1; c <= prm.job; c++) {
            int dok, mok = do_tick(c, &dok);
            mok_all &= mok;
            dok_all &= dok;
            uint64_t t = now_ns();
            if (t >= next || c == prm.job) {
                double secs = (double)(t - t0) / 1e9;
                out("cevm-tick counter=%" PRIu64 " sum=%016" PRIx64 " mem=%s disk=%s",
                    c, digest, mok_all ? "ok" : "BAD", disk_word(dok_all));
                if (shared_counter)
                    __atomic_store_n(shared_counter, c, __ATOMIC_RELAXED);
                out("cevm-job done=%" PRIu64 " total=%" PRIu64 " rate=%.1f",
                    c, prm.job, secs > 0 ? (double)c / secs : 0.0);
                sync_log();
                mok_all = dok_all = 1;
                while (next <= t)
                    next += tick_ns;
            }
        }
        out("cevm-job complete units=%" PRIu64 " seconds=%.3f", prm.job, (double)(now_ns() - t0) / 1e9);
        power_off();
    }

    uint64_t next = now_ns();
    for (uint64_t c = 1;; c++) {
        sleep_until(next);
        int dok, mok = do_tick(c, &dok);
        out("cevm-tick counter=%" PRIu64 " sum=%016" PRIx64 " mem=%s disk=%s",
            c, digest, mok ? "ok" : "BAD", disk_word(dok));
        sync_log();
        if (shared_counter) {
            __atomic_store_n(shared_counter, c, __ATOMIC_RELAXED);
            net_reap();
        }
        next += tick_ns;
        uint64_t t = now_ns();
        if (next < t)
            next = t; /* late: run the next tick now, but never a burst */
    }
}
