/*
 * udpgen: load generator and receiver for the engarde benchmarks.
 *
 *   udpgen send     --to H:P [--bind H:P] [--rate R] [--size B] [--duration S | --count N]
 *                   [--tick-us T]  (paced: wake at most every T us and send what is due, so a
 *                   high rate costs fewer wake-ups; 0 = one wake-up per datagram)
 *                   [--handshake [--handshake-timeout-ms MS]]  (see "Handshake" below)
 *                   [--settle-ms MS]  (after the handshake: "udpgen: ready" on stderr, then
 *                   MS ms before the first datagram; also for clients)
 *   udpgen sink     --bind H:P [--duration S] [--idle-ms MS] [--expect N] [--split-ns T]
 *                   [--rid N [--rids K]]   (count only datagrams of this run, receiver index
 *                   N .. N+K-1 (K = 1 by default); others are "foreign"; the first 32 runs of
 *                   missing sequence numbers, below N with --expect N, else below the highest
 *                   seen, are listed as "missing": [[first, last]...])
 *                   [--wg-respond]  (answer handshake initiations, see "Handshake" below)
 *   udpgen echo     --bind H:P [--dedup] [--duration S] [--wg-respond]  (with --wg-respond it
 *                   also answers initiations, and echoed data names the peer's index: receiver
 *                   index XOR 0x5a5a5a5a, as a WireGuard reply would)
 *   udpgen pingpong --to H:P [--rate R] [--size B] [--count N | --duration S] [--timeout-ms MS]
 *                   [--handshake [--handshake-timeout-ms MS]]
 *                   (one datagram at a time: wait for its echo or the timeout, default 1000 ms;
 *                   with --duration the run ends after duration + one timeout whatever happens)
 *   udpgen clients  --to H:P --clients N --bind IP1,IP2,... [--dev IF1,IF2,...] [--rate R]
 *                   [--size B] [--duration S | --count N] [--tick-us T] [--rid BASE]
 *                   [--handshake [--handshake-timeout-ms MS]]
 *                   (N simulated engarde clients: client k has one socket per --bind address,
 *                   SO_BINDTODEVICE'd to the matching --dev interface if given, uses receiver
 *                   index BASE+k, and sends every datagram as identical copies, one per
 *                   socket, like an engarde client over its uplinks. Sequence numbers are
 *                   global: datagram i goes from client i mod N, so the total unique rate is
 *                   R whatever N, and one sink with --rid BASE --rids N counts them all.)
 *
 * Every datagram is shaped like a WireGuard transport-data message so a relay that looks at the
 * WireGuard header sees something plausible:
 *   byte 0 = 4, bytes 1-3 = 0, bytes 4-7 receiver index (--rid), bytes 8-15 sequence number
 *   (u64 LE, the WireGuard "counter" position), bytes 16-23 CLOCK_MONOTONIC send time in ns
 *   (u64 LE), then zero padding up to --size (>= 24).
 * All network namespaces share CLOCK_MONOTONIC, so one-way delay = receive time - send time.
 *
 * Handshake (engarde's server serves a client address only once WireGuard answered its
 * handshake): with --handshake, send/pingpong/clients first send a WireGuard-shaped handshake
 * initiation (148 B: byte 0 = 1, bytes 1-3 = 0, sender index S = receiver index XOR 0x5a5a5a5a
 * at byte 4, zeros) on each of their sockets, again every 200 ms, until a response (92 B,
 * byte 0 = 2, receiver index S at byte 8) came back: on the one socket for send/pingpong, on
 * every socket of the client for clients (an engarde server sends the response only to the
 * addresses it has proven, so a response on every socket means every address is proven), then
 * reads late copies of the responses until none came for 50 ms (at most 5 s). No answer within
 * --handshake-timeout-ms (default 10000): exit code 1 and a message on stderr.
 * sink/echo --wg-respond answer every initiation (byte 0 = 1, bytes 1-3 = 0, 148 B) to its
 * source with a response: byte 0 = 2, sender index = S XOR 0x5a5a5a5a (the responder's index,
 * which the data then names as receiver: the --rid the sender was given), receiver index = S,
 * zeros. The rule is stateless, so any number of independent senders can handshake with one
 * sink, and the data's receiver index is --rid as without --handshake.
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
#define WG_XOR 0x5a5a5a5aU    /* responder index = initiator's sender index XOR this */
#define INIT_LEN 148          /* WireGuard handshake initiation */
#define RESP_LEN 92           /* WireGuard handshake response */
#define HANDSHAKE_RETRY_NS 200000000ULL
#define QUIET_NS 50000000ULL       /* after the handshake: answers have stopped coming for this */
#define QUIET_MAX_NS 5000000000ULL /* ... or this much time has passed */
#define MAX_BINDS 16          /* clients: sockets (uplinks) per simulated client */
#define MAX_CLIENTS 4096      /* clients: simulated clients */

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
            "usage: udpgen send|sink|echo|pingpong|clients [--to H:P] [--bind H:P] [--rate R]\n"
            "       [--size B] [--duration S] [--count N] [--expect N] [--idle-ms MS]\n"
            "       [--timeout-ms MS] [--dedup] [--rid N] [--rids K] [--split-ns T] [--batch N]\n"
            "       [--tick-us T] [--handshake] [--handshake-timeout-ms MS] [--wg-respond]\n"
            "       [--settle-ms MS]\n"
            "       clients: --clients N --bind IP1,IP2,... [--dev IF1,IF2,...]\n");
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

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
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
    uint32_t rid, rids;
    int have_rid;
    uint64_t split_ns;
    int handshake, handshake_timeout_ms, wg_respond, clients, settle_ms;
    const char *bind_list, *dev_list; /* clients: comma-separated IPs, interfaces */
};

static void parse_opts(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof *o);
    o->size = 1400;
    o->batch = BATCH;
    o->rid = 0x6e65; /* "en" */
    o->timeout_ms = 1000;
    o->rids = 1;
    o->handshake_timeout_ms = 10000;
    o->settle_ms = -1; /* no "ready" line, no pause */
    if (argc < 2) usage();
    o->mode = argv[1];
    const int clients_mode = !strcmp(o->mode, "clients");
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
        } else if (!strcmp(a, "--bind") && clients_mode) {
            NEED();
            o->bind_list = v;
        } else if (!strcmp(a, "--bind")) {
            NEED();
            if (parse_addr(v, &o->bind)) usage();
            o->have_bind = 1;
        } else if (!strcmp(a, "--dev")) {
            NEED();
            o->dev_list = v;
        } else if (!strcmp(a, "--clients")) {
            NEED();
            o->clients = atoi(v);
        } else if (!strcmp(a, "--rids")) {
            NEED();
            o->rids = (uint32_t)strtoul(v, NULL, 0);
        } else if (!strcmp(a, "--handshake")) {
            o->handshake = 1;
        } else if (!strcmp(a, "--handshake-timeout-ms")) {
            NEED();
            o->handshake_timeout_ms = atoi(v);
        } else if (!strcmp(a, "--settle-ms")) {
            NEED();
            o->settle_ms = atoi(v);
        } else if (!strcmp(a, "--wg-respond")) {
            o->wg_respond = 1;
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
    if (o->rids < 1) o->rids = 1;
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

/* ---- handshake (see the top comment) ---- */

struct peer {
    int fds[MAX_BINDS];
    int n_fds;
    uint32_t sender;   /* S: the sender index of its initiation */
    unsigned answered; /* bit j: a response naming S came back on fds[j] */
};

struct handshake_stats {
    uint64_t initiations, responses, stray;
    double ms, quiet_ms; /* handshake, then late answers drained until quiet */
};

static void fill_initiation(unsigned char *p, uint32_t sender) {
    memset(p, 0, INIT_LEN);
    p[0] = 1;
    put_u32(p + 4, sender);
}

static int is_initiation(const unsigned char *p, size_t len) {
    return len == INIT_LEN && p[0] == 1 && !p[1] && !p[2] && !p[3];
}

/* The response to initiation `init`: responder index S ^ WG_XOR, receiver index S. */
static void fill_response(unsigned char *out, const unsigned char *init) {
    uint32_t sender = get_u32(init + 4);
    memset(out, 0, RESP_LEN);
    out[0] = 2;
    put_u32(out + 4, sender ^ WG_XOR);
    put_u32(out + 8, sender);
}

static int peer_done(const struct peer *p) { return p->answered == (1U << p->n_fds) - 1; }

/* Initiation on every socket of every peer that is not done, again every 200 ms, until each
 * of its sockets got a response naming its sender index. 0 when every peer is done, -1 after
 * timeout_ms or a signal; `hs` says how far it got either way. */
static int handshake(struct peer *peers, int n, const struct sockaddr_in *to, int timeout_ms,
                     struct handshake_stats *hs) {
    static unsigned char init[INIT_LEN], rbuf[MAX_SIZE + 1];
    int total = 0;
    for (int i = 0; i < n; i++) total += peers[i].n_fds;
    struct pollfd *pfds = calloc((size_t)total, sizeof *pfds);
    int *owner = calloc((size_t)total, sizeof *owner); /* peer * MAX_BINDS + socket */
    if (!pfds || !owner) die("calloc");
    const uint64_t start = now_ns();
    const uint64_t deadline = start + (uint64_t)timeout_ms * 1000000ULL;
    int left = n;
    while (left > 0 && !g_stop && now_ns() < deadline) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (peer_done(&peers[i])) continue;
            fill_initiation(init, peers[i].sender);
            for (int j = 0; j < peers[i].n_fds; j++) {
                /* a failed send (nothing listening yet...) is what the next round is for */
                if (sendto(peers[i].fds[j], init, INIT_LEN, 0, (const struct sockaddr *)to,
                           sizeof *to) == INIT_LEN)
                    hs->initiations++;
                pfds[k].fd = peers[i].fds[j];
                pfds[k].events = POLLIN;
                owner[k++] = i * MAX_BINDS + j;
            }
        }
        uint64_t resend = now_ns() + HANDSHAKE_RETRY_NS;
        if (resend > deadline) resend = deadline;
        for (uint64_t t = now_ns(); left > 0 && !g_stop && t < resend; t = now_ns()) {
            if (poll(pfds, (nfds_t)k, (int)((resend - t + 999999) / 1000000)) <= 0) continue;
            for (int m = 0; m < k; m++) {
                if (!pfds[m].revents) continue;
                struct peer *p = &peers[owner[m] / MAX_BINDS];
                unsigned bit = 1U << (owner[m] % MAX_BINDS);
                ssize_t r;
                while ((r = recv(pfds[m].fd, rbuf, sizeof rbuf, MSG_DONTWAIT)) >= 0) {
                    if (r == RESP_LEN && rbuf[0] == 2 && !rbuf[1] && !rbuf[2] && !rbuf[3] &&
                        get_u32(rbuf + 8) == p->sender) {
                        hs->responses++;
                        if (!peer_done(p)) {
                            p->answered |= bit;
                            if (peer_done(p)) left--;
                        }
                    } else {
                        hs->stray++; /* another client's response (a relay fanning out) */
                    }
                }
            }
        }
    }
    hs->ms = (double)(now_ns() - start) / 1e6;
    if (left == 0) {
        /* Late copies of the responses (one per initiation copy, fanned out by relays; a C relay
         * server sends every one to every client address it knows) are still coming: read them
         * until QUIET_NS without any, so that the load starts on a quiet path. */
        int k = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < peers[i].n_fds; j++) {
                pfds[k].fd = peers[i].fds[j];
                pfds[k].events = POLLIN;
                owner[k++] = i * MAX_BINDS + j;
            }
        const uint64_t give_up = now_ns() + QUIET_MAX_NS;
        uint64_t last = now_ns();
        for (uint64_t t = last; !g_stop && t - last < QUIET_NS && t < give_up; t = now_ns()) {
            if (poll(pfds, (nfds_t)k, (int)((QUIET_NS - (t - last)) / 1000000) + 1) <= 0)
                continue;
            for (int m = 0; m < k; m++) {
                if (!pfds[m].revents) continue;
                const struct peer *p = &peers[owner[m] / MAX_BINDS];
                ssize_t r;
                while ((r = recv(pfds[m].fd, rbuf, sizeof rbuf, MSG_DONTWAIT)) >= 0) {
                    last = now_ns();
                    if (r == RESP_LEN && rbuf[0] == 2 && get_u32(rbuf + 8) == p->sender)
                        hs->responses++;
                    else
                        hs->stray++;
                }
            }
        }
        hs->quiet_ms = (double)(now_ns() - start) / 1e6 - hs->ms;
    }
    free(pfds);
    free(owner);
    return left == 0 ? 0 : -1;
}

/* Handshake or exit(1) with a message saying what did not answer. */
static void handshake_or_die(struct peer *peers, int n, const struct opts *o,
                             struct handshake_stats *hs) {
    if (handshake(peers, n, &o->to, o->handshake_timeout_ms, hs) == 0) return;
    char host[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &o->to.sin_addr, host, sizeof host);
    int done = 0, first = -1;
    for (int i = 0; i < n; i++) {
        if (peer_done(&peers[i])) done++;
        else if (first < 0) first = i;
    }
    fprintf(stderr,
            "udpgen: handshake failed%s: no response naming every initiation from %s:%d after "
            "%.0f ms (%llu initiations sent, %llu responses, %llu stray; %d of %d clients "
            "answered on all of their %d sockets; first unanswered: client %d, sender index "
            "0x%08x, sockets answered mask 0x%x)\n",
            g_stop ? " (interrupted)" : "", host, ntohs(o->to.sin_port), hs->ms,
            (unsigned long long)hs->initiations, (unsigned long long)hs->responses,
            (unsigned long long)hs->stray, done, n, peers[0].n_fds, first,
            first >= 0 ? peers[first].sender : 0, first >= 0 ? peers[first].answered : 0);
    exit(1);
}

/* send, clients --settle-ms: say "ready" on stderr (handshake done), then wait that long before
 * the first datagram, so whoever reads CPU counters on "ready" reads them before the load. */
static void settle(const struct opts *o) {
    if (o->settle_ms < 0) return;
    ready();
    if (o->settle_ms > 0) sleep_until_ns(now_ns() + (uint64_t)o->settle_ms * 1000000ULL);
}

static void handshake_json(FILE *f, const struct opts *o, const struct handshake_stats *hs) {
    if (!o->handshake) {
        fprintf(f, "\"handshake\":null,");
        return;
    }
    fprintf(f,
            "\"handshake\":{\"ms\":%.3f,\"quiet_ms\":%.3f,\"initiations\":%llu,"
            "\"responses\":%llu,\"stray\":%llu},",
            hs->ms, hs->quiet_ms, (unsigned long long)hs->initiations,
            (unsigned long long)hs->responses, (unsigned long long)hs->stray);
}

/* ---- pacing (send, clients) ---- */

/* Sends datagrams seq .. seq+n-1 stamped t; returns how many it handled (0: interrupted, try
 * again). */
typedef int (*emit_fn)(void *ctx, uint64_t seq, unsigned n, uint64_t t);

/* Datagrams 0, 1, ... through `emit` at o->rate (0: back to back, o->batch at a time) from
 * `start` until --duration or --count or a signal; returns how many were sent. */
static uint64_t pace(const struct opts *o, uint64_t start, emit_fn emit, void *ctx,
                     uint64_t *calls) {
    uint64_t seq = 0;
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
        int n = emit(ctx, seq, (unsigned)want, t);
        (*calls)++;
        seq += (uint64_t)n;
        owed = owed > (uint64_t)n ? owed - (uint64_t)n : 0;
    }
    return seq;
}

/* ---- send ---- */

struct send_ctx {
    int fd;
    struct mmsghdr *msgs;
    unsigned char (*bufs)[MAX_SIZE];
    uint32_t rid;
    uint64_t errors;
    int last_errno;
};

static int send_emit(void *ctx, uint64_t seq, unsigned n, uint64_t t) {
    struct send_ctx *c = ctx;
    for (unsigned i = 0; i < n; i++) fill_header(c->bufs[i], c->rid, seq + i, t);
    int r = sendmmsg(c->fd, c->msgs, n, 0);
    if (r < 0) {
        if (errno == EINTR) return 0;
        /* ENOBUFS/ECONNREFUSED/...: count, and skip the batch so the pace holds */
        c->errors++;
        c->last_errno = errno;
        return (int)n;
    }
    return r;
}

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
    struct handshake_stats hs = {0};
    if (o->handshake) {
        struct peer self = {.fds = {fd}, .n_fds = 1, .sender = o->rid ^ WG_XOR};
        handshake_or_die(&self, 1, o, &hs);
    }
    settle(o);
    struct send_ctx ctx = {.fd = fd, .msgs = msgs, .bufs = bufs, .rid = o->rid};
    uint64_t calls = 0;
    const uint64_t start = now_ns();
    const uint64_t seq = pace(o, start, send_emit, &ctx, &calls);
    const uint64_t stop = now_ns();
    double elapsed = (double)(stop - start) / 1e9;
    printf("{\"mode\":\"send\",\"sent\":%llu,\"elapsed_s\":%.6f,\"rate\":%.1f,"
           "\"target_rate\":%.1f,\"size\":%d,\"send_errors\":%llu,\"last_errno\":%d,"
           "\"calls\":%llu,\"start_ns\":%llu,\"stop_ns\":%llu,",
           (unsigned long long)seq, elapsed, elapsed > 0 ? (double)seq / elapsed : 0.0, o->rate,
           o->size, (unsigned long long)ctx.errors, ctx.last_errno, (unsigned long long)calls,
           (unsigned long long)start, (unsigned long long)stop);
    handshake_json(stdout, o, &hs);
    json_cpu(stdout);
    printf("}\n");
    return 0;
}

/* ---- clients ---- */

/* Splits `s` at commas in place; the number of items, -1 if more than `max`. */
static int split_list(char *s, char **items, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max) return -1;
        items[n++] = tok;
    }
    return n;
}

struct clients_ctx {
    struct peer *peers;
    uint32_t n, rid;
    const struct sockaddr_in *to;
    unsigned char *buf;
    size_t size;
    uint64_t copies, errors;
    int last_errno;
};

static int clients_emit(void *ctx, uint64_t seq, unsigned n, uint64_t t) {
    struct clients_ctx *c = ctx;
    for (unsigned i = 0; i < n; i++) {
        uint32_t k = (uint32_t)((seq + i) % c->n);
        const struct peer *p = &c->peers[k];
        fill_header(c->buf, c->rid + k, seq + i, t);
        for (int j = 0; j < p->n_fds; j++) {
            if (sendto(p->fds[j], c->buf, c->size, 0, (const struct sockaddr *)c->to,
                       sizeof *c->to) < 0) {
                c->errors++; /* a lost copy: the others still go */
                c->last_errno = errno;
            } else {
                c->copies++;
            }
        }
    }
    return (int)n;
}

static int run_clients(const struct opts *o) {
    if (!o->have_to || !o->bind_list) usage();
    if (o->clients < 1 || o->clients > MAX_CLIENTS) {
        fprintf(stderr, "udpgen: clients needs --clients within 1..%d\n", MAX_CLIENTS);
        return 2;
    }
    if (o->duration <= 0 && o->count == 0) {
        fprintf(stderr, "udpgen: clients needs --duration or --count\n");
        return 2;
    }
    char bind_s[1024], dev_s[1024];
    char *binds[MAX_BINDS], *devs[MAX_BINDS];
    snprintf(bind_s, sizeof bind_s, "%s", o->bind_list);
    snprintf(dev_s, sizeof dev_s, "%s", o->dev_list ? o->dev_list : "");
    int nb = split_list(bind_s, binds, MAX_BINDS);
    int nd = o->dev_list ? split_list(dev_s, devs, MAX_BINDS) : 0;
    if (nb < 1 || (o->dev_list && nd != nb)) {
        fprintf(stderr, "udpgen: clients needs --bind with 1..%d addresses, and --dev (if "
                        "given) with one interface per address\n", MAX_BINDS);
        return 2;
    }
    struct sockaddr_in src[MAX_BINDS];
    for (int j = 0; j < nb; j++) {
        char spec[80];
        snprintf(spec, sizeof spec, "%s:0", binds[j]);
        if (parse_addr(spec, &src[j])) usage();
    }
    struct peer *peers = calloc((size_t)o->clients, sizeof *peers);
    if (!peers) die("calloc");
    const int bufsize = 1 << 20;
    for (int k = 0; k < o->clients; k++) {
        peers[k].n_fds = nb;
        peers[k].sender = (o->rid + (uint32_t)k) ^ WG_XOR;
        for (int j = 0; j < nb; j++) {
            int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            if (fd < 0) die("socket");
            if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
            if (nd && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, devs[j],
                                 (socklen_t)strlen(devs[j])) < 0)
                die("SO_BINDTODEVICE");
            if (bind(fd, (const struct sockaddr *)&src[j], sizeof src[j]) < 0) die("bind");
            peers[k].fds[j] = fd;
        }
    }
    struct handshake_stats hs = {0};
    if (o->handshake) handshake_or_die(peers, o->clients, o, &hs);
    settle(o);
    static unsigned char buf[MAX_SIZE];
    memset(buf, 0, sizeof buf);
    struct clients_ctx ctx = {.peers = peers, .n = (uint32_t)o->clients, .rid = o->rid,
                              .to = &o->to, .buf = buf, .size = (size_t)o->size};
    uint64_t calls = 0;
    const uint64_t start = now_ns();
    const uint64_t seq = pace(o, start, clients_emit, &ctx, &calls);
    const uint64_t stop = now_ns();
    double elapsed = (double)(stop - start) / 1e9;
    printf("{\"mode\":\"clients\",\"clients\":%d,\"sockets_per_client\":%d,\"sent\":%llu,"
           "\"copies_sent\":%llu,\"elapsed_s\":%.6f,\"rate\":%.1f,\"target_rate\":%.1f,"
           "\"size\":%d,\"send_errors\":%llu,\"last_errno\":%d,\"calls\":%llu,"
           "\"start_ns\":%llu,\"stop_ns\":%llu,",
           o->clients, nb, (unsigned long long)seq, (unsigned long long)ctx.copies, elapsed,
           elapsed > 0 ? (double)seq / elapsed : 0.0, o->rate, o->size,
           (unsigned long long)ctx.errors, ctx.last_errno, (unsigned long long)calls,
           (unsigned long long)start, (unsigned long long)stop);
    handshake_json(stdout, o, &hs);
    json_cpu(stdout);
    printf("}\n");
    for (int k = 0; k < o->clients; k++)
        for (int j = 0; j < nb; j++) close(peers[k].fds[j]);
    free(peers);
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
    struct sockaddr_in names[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
    }
    unsigned char resp[RESP_LEN];
    struct bitmap bm = {0};
    uint64_t received = 0, unique = 0, dups = 0, junk = 0, foreign = 0, bytes = 0, max_seq = 0;
    uint64_t initiations = 0, responses = 0;
    uint64_t first_rx = 0, last_rx = 0, first_unique_seq = UINT64_MAX;
    const uint64_t start = now_ns();
    const uint64_t end = o->duration > 0 ? start + (uint64_t)(o->duration * 1e9) : UINT64_MAX;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!g_stop) {
        uint64_t t = now_ns();
        if (t >= end) break;
        if (o->idle_ms > 0 && received > 0 && t - last_rx > (uint64_t)o->idle_ms * 1000000ULL)
            break;
        for (int i = 0; i < BATCH; i++) msgs[i].msg_hdr.msg_namelen = sizeof names[i];
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED)
                die("recvmmsg");
            poll(&pfd, 1, 50);
            continue;
        }
        t = now_ns();
        int counted = 0; /* handshakes are not part of the receive span */
        for (int i = 0; i < n; i++) {
            const unsigned char *p = bufs[i];
            unsigned len = msgs[i].msg_len;
            if (o->wg_respond && is_initiation(p, len)) {
                initiations++;
                fill_response(resp, p);
                if (sendto(fd, resp, RESP_LEN, 0, (const struct sockaddr *)&names[i],
                           msgs[i].msg_hdr.msg_namelen) == RESP_LEN)
                    responses++;
                continue;
            }
            counted = 1;
            received++;
            bytes += len;
            if (len < HDR_LEN || p[0] != 4) {
                junk++;
                continue;
            }
            if (o->have_rid && get_u32(p + 4) - o->rid >= o->rids) {
                foreign++; /* receiver index outside --rid .. --rid + --rids - 1 */
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
        if (counted) {
            if (!first_rx) first_rx = t;
            last_rx = t;
        }
    }
    double span = last_rx > first_rx ? (double)(last_rx - first_rx) / 1e9 : 0.0;
    printf("{\"mode\":\"sink\",\"received\":%llu,\"unique\":%llu,\"duplicates\":%llu,"
           "\"junk\":%llu,\"foreign\":%llu,\"bytes\":%llu,\"max_seq\":%llu,"
           "\"initiations\":%llu,\"responses_sent\":%llu,",
           (unsigned long long)received, (unsigned long long)unique, (unsigned long long)dups,
           (unsigned long long)junk, (unsigned long long)foreign, (unsigned long long)bytes,
           (unsigned long long)max_seq, (unsigned long long)initiations,
           (unsigned long long)responses);
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
    unsigned char resp[RESP_LEN];
    struct bitmap bm = {0};
    uint64_t received = 0, echoed = 0, dropped_dups = 0, errors = 0, initiations = 0;
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
            if (o->wg_respond && is_initiation(bufs[i], in[i].msg_len)) {
                initiations++;
                fill_response(resp, bufs[i]);
                if (sendto(fd, resp, RESP_LEN, 0, (const struct sockaddr *)&names[i],
                           in[i].msg_hdr.msg_namelen) < 0)
                    errors++;
                continue;
            }
            received++;
            if (o->dedup && in[i].msg_len >= HDR_LEN && bufs[i][0] == 4 &&
                bm_test_set(&bm, get_u64(bufs[i] + 8)) == 1) {
                dropped_dups++;
                continue;
            }
            if (o->wg_respond && in[i].msg_len >= HDR_LEN && bufs[i][0] == 4)
                put_u32(bufs[i] + 4, get_u32(bufs[i] + 4) ^ WG_XOR); /* the peer's index */
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
           "\"send_errors\":%llu,\"initiations\":%llu,",
           (unsigned long long)received, (unsigned long long)echoed,
           (unsigned long long)dropped_dups, (unsigned long long)errors,
           (unsigned long long)initiations);
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
    struct handshake_stats hs = {0};
    if (o->handshake) {
        struct peer self = {.fds = {fd}, .n_fds = 1, .sender = o->rid ^ WG_XOR};
        handshake_or_die(&self, 1, o, &hs);
    }
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
    handshake_json(stdout, o, &hs);
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
    else if (!strcmp(o.mode, "clients")) rc = run_clients(&o);
    else usage();
    fflush(stdout);
    return rc;
}
