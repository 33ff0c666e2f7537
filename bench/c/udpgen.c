/*
 * udpgen: load generator and receiver for the engarde benchmarks.
 *
 *   udpgen send     --to H:P [--bind H:P] [--rate R] [--size B] [--duration S | --count N]
 *                   [--tick-us T]  (paced: wake at most every T us and send what is due, so a
 *                   high rate costs fewer wake-ups; 0 = one wake-up per datagram)
 *   udpgen sink     --bind H:P [--duration S] [--idle-ms MS] [--expect N] [--split-ns T]
 *                   [--rid N]   (count only datagrams of this run; others are "foreign";
 *                   the first 32 runs of missing sequence numbers, below N with --expect N,
 *                   else below the highest seen, are listed as "missing": [[first, last]...])
 *   udpgen echo     --bind H:P [--dedup] [--duration S]
 *   udpgen pingpong --to H:P [--rate R] [--size B] [--count N | --duration S] [--timeout-ms MS]
 *                   (one datagram at a time: wait for its echo or the timeout, default 1000 ms;
 *                   with --duration the run ends after duration + one timeout whatever happens)
 *
 * Every datagram is shaped like a WireGuard transport-data message so a relay that looks at the
 * WireGuard header sees something plausible:
 *   byte 0 = 4, bytes 1-3 = 0, bytes 4-7 receiver index (--rid), bytes 8-15 sequence number
 *   (u64 LE, the WireGuard "counter" position), bytes 16-23 CLOCK_MONOTONIC send time in ns
 *   (u64 LE), then zero padding up to --size (>= 24).
 * All network namespaces share CLOCK_MONOTONIC, so one-way delay = receive time - send time.
 *
 * Each mode prints exactly one JSON object on stdout when it ends (duration reached, count sent,
 * SIGTERM or SIGINT), including its own CPU time from getrusage. sink and echo print
 * "udpgen: ready" on stderr once their socket is bound.
 */
#define _GNU_SOURCE
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_LEN 24
#define MAX_SIZE 65507
#define BATCH 64
#define MISSING_RANGES 32 /* sink --expect: lost sequence numbers reported as ranges */
#define MAX_SEQ (1ULL << 31) /* bitmap cap: 256 MiB of bits, far above any bench run */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static void die(const char *msg) {
    fprintf(stderr, "udpgen: %s: %s\n", msg, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: udpgen send|sink|echo|pingpong [--to H:P] [--bind H:P] [--rate R]\n"
            "       [--size B] [--duration S] [--count N] [--expect N] [--idle-ms MS]\n"
            "       [--timeout-ms MS] [--dedup] [--rid N] [--split-ns T] [--batch N]\n"
            "       [--tick-us T]\n");
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t t) {
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ULL),
                          .tv_nsec = (long)(t % 1000000000ULL)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void fill_header(unsigned char *p, uint32_t rid, uint64_t seq, uint64_t ts) {
    p[0] = 4;
    p[1] = p[2] = p[3] = 0;
    p[4] = (unsigned char)rid;
    p[5] = (unsigned char)(rid >> 8);
    p[6] = (unsigned char)(rid >> 16);
    p[7] = (unsigned char)(rid >> 24);
    put_u64(p + 8, seq);
    put_u64(p + 16, ts);
}

/* ---- log-linear histogram of nanosecond values (relative error < 0.4 %) ---- */

#define H_EXACT 512
#define H_SUB 256
#define H_BUCKETS (H_EXACT + 48 * H_SUB)

struct hist {
    uint64_t n[H_BUCKETS];
    uint64_t count, max;
    double sum;
};

static int msb64(uint64_t v) { return 63 - __builtin_clzll(v); }

static size_t h_index(uint64_t v) {
    if (v < H_EXACT) return (size_t)v;
    int e = msb64(v) - 8; /* v >> e lies in [256, 511] */
    size_t i = H_EXACT + (size_t)(e - 1) * H_SUB + (size_t)((v >> e) - H_SUB);
    return i < H_BUCKETS ? i : H_BUCKETS - 1;
}

static double h_value(size_t i) {
    if (i < H_EXACT) return (double)i;
    int e = (int)((i - H_EXACT) / H_SUB) + 1;
    uint64_t m = (uint64_t)((i - H_EXACT) % H_SUB) + H_SUB;
    return ((double)(m << e) + (double)((1ULL << e) - 1) / 2.0); /* middle of the bucket */
}

static void h_add(struct hist *h, int64_t v) {
    if (v < 0) v = 0; /* cannot happen with one clock, but never index out of range */
    h->n[h_index((uint64_t)v)]++;
    h->count++;
    h->sum += (double)v;
    if ((uint64_t)v > h->max) h->max = (uint64_t)v;
}

static double h_quantile(const struct hist *h, double q) {
    if (h->count == 0) return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            double v = h_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

/* {"count":..,"p50":..,...} in microseconds */
static void h_json(FILE *f, const char *name, const struct hist *h) {
    fprintf(f,
            "\"%s\":{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
            "\"max\":%.3f,\"mean\":%.3f}",
            name, (unsigned long long)h->count, h_quantile(h, 0.5) / 1e3,
            h_quantile(h, 0.9) / 1e3, h_quantile(h, 0.99) / 1e3, h_quantile(h, 0.999) / 1e3,
            (double)h->max / 1e3, h->count ? h->sum / (double)h->count / 1e3 : 0.0);
}

/* ---- bitmap of seen sequence numbers, grown on demand ---- */

struct bitmap {
    uint64_t *w;
    size_t words;
};

/* returns 1 if seq was already set, 0 if newly set, -1 if seq is out of range */
static int bm_test_set(struct bitmap *b, uint64_t seq) {
    if (seq >= MAX_SEQ) return -1;
    size_t wi = (size_t)(seq >> 6);
    if (wi >= b->words) {
        size_t nw = b->words ? b->words : 1024;
        while (nw <= wi) nw *= 2;
        uint64_t *p = realloc(b->w, nw * sizeof *p);
        if (!p) die("realloc");
        memset(p + b->words, 0, (nw - b->words) * sizeof *p);
        b->w = p;
        b->words = nw;
    }
    uint64_t bit = 1ULL << (seq & 63);
    if (b->w[wi] & bit) return 1;
    b->w[wi] |= bit;
    return 0;
}

static int bm_has(const struct bitmap *b, uint64_t seq) {
    size_t wi = (size_t)(seq >> 6);
    return wi < b->words && (b->w[wi] >> (seq & 63) & 1);
}

/* ---- options ---- */

struct opts {
    const char *mode;
    struct sockaddr_in to, bind;
    int have_to, have_bind;
    double rate, duration;
    uint64_t count, expect;
    int size, batch, dedup, idle_ms, timeout_ms, tick_us;
    uint32_t rid;
    int have_rid;
    uint64_t split_ns;
};

static void parse_opts(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof *o);
    o->size = 1400;
    o->batch = BATCH;
    o->rid = 0x6e65; /* "en" */
    o->timeout_ms = 1000;
    if (argc < 2) usage();
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()              \
    do {                    \
        if (!v) usage();    \
        i++;                \
    } while (0)
        if (!strcmp(a, "--to")) {
            NEED();
            if (parse_addr(v, &o->to)) usage();
            o->have_to = 1;
        } else if (!strcmp(a, "--bind")) {
            NEED();
            if (parse_addr(v, &o->bind)) usage();
            o->have_bind = 1;
        } else if (!strcmp(a, "--rate")) {
            NEED();
            o->rate = atof(v);
        } else if (!strcmp(a, "--size")) {
            NEED();
            o->size = atoi(v);
        } else if (!strcmp(a, "--duration")) {
            NEED();
            o->duration = atof(v);
        } else if (!strcmp(a, "--count")) {
            NEED();
            o->count = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--expect")) {
            NEED();
            o->expect = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--batch")) {
            NEED();
            o->batch = atoi(v);
        } else if (!strcmp(a, "--tick-us")) {
            NEED();
            o->tick_us = atoi(v);
        } else if (!strcmp(a, "--idle-ms")) {
            NEED();
            o->idle_ms = atoi(v);
        } else if (!strcmp(a, "--timeout-ms")) {
            NEED();
            o->timeout_ms = atoi(v);
        } else if (!strcmp(a, "--rid")) {
            NEED();
            o->rid = (uint32_t)strtoul(v, NULL, 0);
            o->have_rid = 1;
        } else if (!strcmp(a, "--split-ns")) {
            NEED();
            o->split_ns = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--dedup")) {
            o->dedup = 1;
        } else {
            usage();
        }
#undef NEED
    }
    if (o->size < HDR_LEN || o->size > MAX_SIZE) {
        fprintf(stderr, "udpgen: --size must be in [%d, %d]\n", HDR_LEN, MAX_SIZE);
        exit(2);
    }
    if (o->batch < 1 || o->batch > BATCH) o->batch = BATCH;
}

static int make_socket(const struct opts *o, int bufsize) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* FORCE variants (root) so the measuring tools are never the ones that drop */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    if (o->have_bind && bind(fd, (const struct sockaddr *)&o->bind, sizeof o->bind) < 0)
        die("bind");
    return fd;
}

static void json_cpu(FILE *f) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(f, "\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
}

static void ready(void) {
    fprintf(stderr, "udpgen: ready\n");
    fflush(stderr);
}

/* ---- send ---- */

static int run_send(const struct opts *o) {
    if (!o->have_to) usage();
    if (o->duration <= 0 && o->count == 0) {
        fprintf(stderr, "udpgen: send needs --duration or --count\n");
        return 2;
    }
    int fd = make_socket(o, 4 << 20);
    static unsigned char bufs[BATCH][MAX_SIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        memset(bufs[i], 0, (size_t)o->size);
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = (size_t)o->size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = (void *)&o->to;
        msgs[i].msg_hdr.msg_namelen = sizeof o->to;
    }
    uint64_t seq = 0, errors = 0, calls = 0;
    int last_errno = 0;
    const uint64_t start = now_ns();
    const uint64_t end = o->duration > 0 ? start + (uint64_t)(o->duration * 1e9) : UINT64_MAX;
    const uint64_t limit = o->count ? o->count : UINT64_MAX;
    const double interval_ns = o->rate > 0 ? 1e9 / o->rate : 0;
    const uint64_t tick_ns = (uint64_t)(o->tick_us > 0 ? o->tick_us : 0) * 1000ULL;
    uint64_t wake = 0; /* last wake-up that found datagrams due */
    uint64_t owed = 0; /* due at that wake-up and not sent yet */
    while (!g_stop && seq < limit) {
        uint64_t t = now_ns();
        if (t >= end) break;
        uint64_t want = (uint64_t)o->batch;
        if (o->rate > 0) {
            if (owed == 0) {
                /* datagrams due by now; sleep until the next one (and the tick) otherwise */
                uint64_t due = (uint64_t)((double)(t - start) / interval_ns) + 1;
                if (due <= seq || t < wake + tick_ns) {
                    uint64_t next = start + (uint64_t)((double)seq * interval_ns);
                    if (next < wake + tick_ns) next = wake + tick_ns;
                    sleep_until_ns(next < end ? next : end);
                    continue;
                }
                owed = due - seq;
                wake = t;
            }
            if (want > owed) want = owed;
        }
        if (want > limit - seq) want = limit - seq;
        for (uint64_t i = 0; i < want; i++) fill_header(bufs[i], o->rid, seq + i, t);
        int n = sendmmsg(fd, msgs, (unsigned)want, 0);
        calls++;
        if (n < 0) {
            if (errno == EINTR) continue;
            /* ENOBUFS/ECONNREFUSED/...: count, and skip the batch so the pace holds */
            errors++;
            last_errno = errno;
            n = (int)want;
        }
        seq += (uint64_t)n;
        owed = owed > (uint64_t)n ? owed - (uint64_t)n : 0;
    }
    const uint64_t stop = now_ns();
    double elapsed = (double)(stop - start) / 1e9;
    printf("{\"mode\":\"send\",\"sent\":%llu,\"elapsed_s\":%.6f,\"rate\":%.1f,"
           "\"target_rate\":%.1f,\"size\":%d,\"send_errors\":%llu,\"last_errno\":%d,"
           "\"calls\":%llu,\"start_ns\":%llu,\"stop_ns\":%llu,",
           (unsigned long long)seq, elapsed, elapsed > 0 ? (double)seq / elapsed : 0.0, o->rate,
           o->size, (unsigned long long)errors, last_errno, (unsigned long long)calls,
           (unsigned long long)start, (unsigned long long)stop);
    json_cpu(stdout);
    printf("}\n");
    return 0;
}

/* ---- sink ---- */

static struct hist h_first, h_all, h_before, h_after;

static int run_sink(const struct opts *o) {
    if (!o->have_bind) usage();
    int fd = make_socket(o, 32 << 20);
    ready();
    static unsigned char bufs[BATCH][MAX_SIZE + 1];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct bitmap bm = {0};
    uint64_t received = 0, unique = 0, dups = 0, junk = 0, foreign = 0, bytes = 0, max_seq = 0;
    uint64_t first_rx = 0, last_rx = 0, first_unique_seq = UINT64_MAX;
    const uint64_t start = now_ns();
    const uint64_t end = o->duration > 0 ? start + (uint64_t)(o->duration * 1e9) : UINT64_MAX;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!g_stop) {
        uint64_t t = now_ns();
        if (t >= end) break;
        if (o->idle_ms > 0 && received > 0 && t - last_rx > (uint64_t)o->idle_ms * 1000000ULL)
            break;
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED)
                die("recvmmsg");
            poll(&pfd, 1, 50);
            continue;
        }
        t = now_ns();
        if (!first_rx) first_rx = t;
        last_rx = t;
        for (int i = 0; i < n; i++) {
            const unsigned char *p = bufs[i];
            unsigned len = msgs[i].msg_len;
            received++;
            bytes += len;
            if (len < HDR_LEN || p[0] != 4) {
                junk++;
                continue;
            }
            uint32_t rid = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                           (uint32_t)p[7] << 24;
            if (o->have_rid && rid != o->rid) {
                foreign++;
                continue;
            }
            uint64_t seq = get_u64(p + 8), ts = get_u64(p + 16);
            int64_t delay = (int64_t)(t - ts);
            int seen = bm_test_set(&bm, seq);
            if (seen < 0) {
                junk++;
                continue;
            }
            h_add(&h_all, delay);
            if (seen) {
                dups++;
                continue;
            }
            unique++;
            if (seq > max_seq) max_seq = seq;
            if (seq < first_unique_seq) first_unique_seq = seq;
            h_add(&h_first, delay);
            if (o->split_ns) h_add(ts < o->split_ns ? &h_before : &h_after, delay);
        }
    }
    double span = last_rx > first_rx ? (double)(last_rx - first_rx) / 1e9 : 0.0;
    printf("{\"mode\":\"sink\",\"received\":%llu,\"unique\":%llu,\"duplicates\":%llu,"
           "\"junk\":%llu,\"foreign\":%llu,\"bytes\":%llu,\"max_seq\":%llu,",
           (unsigned long long)received, (unsigned long long)unique, (unsigned long long)dups,
           (unsigned long long)junk, (unsigned long long)foreign, (unsigned long long)bytes,
           (unsigned long long)max_seq);
    if (o->expect)
        printf("\"expected\":%llu,\"lost\":%lld,", (unsigned long long)o->expect,
               (long long)o->expect - (long long)unique);
    else
        printf("\"lost\":null,");
    /* which ones: the first MISSING_RANGES runs [a, b] of sequence numbers absent below
     * --expect (without it, below the highest one seen: a lost tail is not visible then) */
    const uint64_t upto = o->expect ? o->expect : (unique ? max_seq + 1 : 0);
    printf("\"missing\":[");
    int runs = 0;
    for (uint64_t s = 0; s < upto && runs < MISSING_RANGES; s++) {
        if (bm_has(&bm, s)) continue;
        uint64_t e = s;
        while (e + 1 < upto && !bm_has(&bm, e + 1)) e++;
        printf("%s[%llu,%llu]", runs ? "," : "", (unsigned long long)s, (unsigned long long)e);
        runs++;
        s = e;
    }
    printf("],");
    printf("\"first_rx_ns\":%llu,\"last_rx_ns\":%llu,\"rx_span_s\":%.6f,\"rate\":%.1f,",
           (unsigned long long)first_rx, (unsigned long long)last_rx, span,
           span > 0 ? (double)unique / span : 0.0);
    h_json(stdout, "delay_us", &h_first);
    printf(",");
    h_json(stdout, "delay_all_copies_us", &h_all);
    if (o->split_ns) {
        printf(",\"split_ns\":%llu,", (unsigned long long)o->split_ns);
        h_json(stdout, "delay_before_us", &h_before);
        printf(",");
        h_json(stdout, "delay_after_us", &h_after);
    }
    printf(",");
    json_cpu(stdout);
    printf("}\n");
    free(bm.w);
    return 0;
}

/* ---- echo ---- */

static int run_echo(const struct opts *o) {
    if (!o->have_bind) usage();
    int fd = make_socket(o, 8 << 20);
    ready();
    static unsigned char bufs[BATCH][MAX_SIZE + 1];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in names[BATCH];
    memset(in, 0, sizeof in);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        in[i].msg_hdr.msg_iov = &iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &names[i];
    }
    struct bitmap bm = {0};
    uint64_t received = 0, echoed = 0, dropped_dups = 0, errors = 0;
    const uint64_t start = now_ns();
    const uint64_t end = o->duration > 0 ? start + (uint64_t)(o->duration * 1e9) : UINT64_MAX;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!g_stop && now_ns() < end) {
        for (int i = 0; i < BATCH; i++) in[i].msg_hdr.msg_namelen = sizeof names[i];
        int n = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED)
                die("recvmmsg");
            poll(&pfd, 1, 50);
            continue;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
            received++;
            if (o->dedup && in[i].msg_len >= HDR_LEN && bufs[i][0] == 4 &&
                bm_test_set(&bm, get_u64(bufs[i] + 8)) == 1) {
                dropped_dups++;
                continue;
            }
            out[k].msg_hdr = in[i].msg_hdr;
            iov[i].iov_len = in[i].msg_len; /* reply with exactly what arrived */
            out[k].msg_len = 0;
            k++;
        }
        if (k > 0) {
            int s = sendmmsg(fd, out, (unsigned)k, 0);
            if (s < 0) errors++;
            else echoed += (uint64_t)s;
        }
        for (int i = 0; i < n; i++) iov[i].iov_len = sizeof bufs[i];
    }
    printf("{\"mode\":\"echo\",\"received\":%llu,\"echoed\":%llu,\"dropped_duplicates\":%llu,"
           "\"send_errors\":%llu,",
           (unsigned long long)received, (unsigned long long)echoed,
           (unsigned long long)dropped_dups, (unsigned long long)errors);
    json_cpu(stdout);
    printf("}\n");
    free(bm.w);
    return 0;
}

/* ---- pingpong ---- */

static struct hist h_rtt;

static int run_pingpong(const struct opts *o) {
    if (!o->have_to) usage();
    double rate = o->rate > 0 ? o->rate : 1000;
    uint64_t count = o->count;
    if (!count) count = o->duration > 0 ? (uint64_t)(o->duration * rate) : 1000;
    int fd = make_socket(o, 4 << 20);
    static unsigned char buf[MAX_SIZE + 1], rbuf[MAX_SIZE + 1];
    memset(buf, 0, sizeof buf);
    uint64_t replies = 0, lost = 0, stray = 0;
    const double interval_ns = 1e9 / rate;
    const uint64_t timeout_ns = (uint64_t)o->timeout_ms * 1000000ULL;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    const uint64_t start = now_ns();
    /* a path that never answers must not stretch the run: stop at duration + one timeout */
    const uint64_t end = o->duration > 0
                             ? start + (uint64_t)(o->duration * 1e9) + timeout_ns
                             : UINT64_MAX;
    uint64_t seq;
    for (seq = 0; seq < count && !g_stop; seq++) {
        sleep_until_ns(start + (uint64_t)((double)seq * interval_ns));
        if (now_ns() >= end) break;
        /* late copies of earlier replies are counted, not measured */
        while (recv(fd, rbuf, sizeof rbuf, MSG_DONTWAIT) >= 0) stray++;
        uint64_t ts = now_ns();
        fill_header(buf, o->rid, seq, ts);
        if (sendto(fd, buf, (size_t)o->size, 0, (const struct sockaddr *)&o->to,
                   sizeof o->to) < 0) {
            lost++;
            continue;
        }
        const uint64_t deadline = ts + timeout_ns < end ? ts + timeout_ns : end;
        int got = 0;
        while (!got && !g_stop) {
            uint64_t t = now_ns();
            if (t >= deadline) break;
            int wait_ms = (int)((deadline - t + 999999) / 1000000);
            int pr = poll(&pfd, 1, wait_ms);
            if (pr <= 0) continue;
            ssize_t r;
            while ((r = recv(fd, rbuf, sizeof rbuf, MSG_DONTWAIT)) >= 0) {
                uint64_t rt = now_ns();
                if (r >= HDR_LEN && rbuf[0] == 4 && get_u64(rbuf + 8) == seq && !got) {
                    h_add(&h_rtt, (int64_t)(rt - get_u64(rbuf + 16)));
                    replies++;
                    got = 1;
                } else {
                    stray++;
                }
            }
        }
        if (!got) lost++;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    printf("{\"mode\":\"pingpong\",\"sent\":%llu,\"replies\":%llu,\"lost\":%llu,"
           "\"stray\":%llu,\"rate\":%.1f,\"size\":%d,\"elapsed_s\":%.6f,",
           (unsigned long long)seq, (unsigned long long)replies, (unsigned long long)lost,
           (unsigned long long)stray, rate, o->size, elapsed);
    h_json(stdout, "rtt_us", &h_rtt);
    printf(",");
    json_cpu(stdout);
    printf("}\n");
    return 0;
}

int main(int argc, char **argv) {
    struct opts o;
    parse_opts(argc, argv, &o);
    install_signals();
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL); /* pace with us precision, not the default 50 us slack */
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    int rc;
    if (!strcmp(o.mode, "send")) rc = run_send(&o);
    else if (!strcmp(o.mode, "sink")) rc = run_sink(&o);
    else if (!strcmp(o.mode, "echo")) rc = run_echo(&o);
    else if (!strcmp(o.mode, "pingpong")) rc = run_pingpong(&o);
    else usage();
    fflush(stdout);
    return rc;
}
