/*
 * relay: the minimal C relay the engarde benchmarks compare against.
 *
 *   relay client --listen H:P --uplink IFNAME,SRCADDR,DST_H:P [--uplink ...]
 *   relay server --listen H:P --dst H:P [--client-timeout S]
 *
 * client: every datagram read on the listen socket is sent on every uplink socket (each one
 * SO_BINDTODEVICE'd to its interface and bound to SRCADDR:0) to that uplink's destination; every
 * datagram read on any uplink goes back to the most recent source seen on the listen socket.
 * server: every datagram read on the listen socket is forwarded to --dst from one upstream socket
 * and its source is remembered; every datagram from --dst goes to every source seen within
 * --client-timeout seconds.
 *
 * Deliberately the "practical straightforward" relay: one thread, level-triggered epoll,
 * non-blocking sockets, one recvfrom/sendto system call per datagram (no recvmmsg/sendmmsg, no
 * GSO), drain each readable socket up to 64 datagrams before returning to epoll_wait. A send that
 * would block is dropped and counted (never waited for), as engarde must do. Socket buffers are
 * 4 MiB (SO_RCVBUF/SO_SNDBUF, within this machine's rmem_max/wmem_max).
 *
 * Prints "relay: ready" on stderr once every socket is bound, and one JSON line of counters and
 * getrusage CPU time on stdout when it gets SIGTERM or SIGINT.
 */
#define _GNU_SOURCE
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_UPLINKS 16
#define MAX_CLIENTS 1024 /* source addresses remembered: 100 simulated clients x 3 uplinks fit */
#define DRAIN 64
#define BUF_SIZE 65536
#define SOCK_BUF (4 << 20)

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void die(const char *what) {
    fprintf(stderr, "relay: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: relay client --listen H:P --uplink IF,SRC,DST_H:P [--uplink ...]\n"
                    "       relay server --listen H:P --dst H:P [--client-timeout S]\n");
    exit(2);
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int udp_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1, sz = SOCK_BUF;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    return fd;
}

static int is_drop_errno(int e) {
    /* would block, or the path is (temporarily) gone: drop this copy and carry on */
    return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == ENETUNREACH ||
           e == EHOSTUNREACH || e == ENODEV || e == ENETDOWN || e == ECONNREFUSED ||
           e == EADDRNOTAVAIL || e == EPERM || e == EINVAL;
}

static void add_epoll(int ep, int fd, uint32_t tag) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

static void print_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f}\n",
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    fflush(stdout);
}

struct uplink {
    char ifname[IFNAMSIZ];
    struct sockaddr_in src, dst;
    int fd;
    uint64_t tx, tx_drop, rx;
};

static unsigned char buf[BUF_SIZE];

static int run_client(int argc, char **argv) {
    struct sockaddr_in listen_addr;
    int have_listen = 0, n_up = 0;
    static struct uplink up[MAX_UPLINKS];
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            if (parse_addr(argv[++i], &listen_addr)) usage();
            have_listen = 1;
        } else if (!strcmp(argv[i], "--uplink") && i + 1 < argc && n_up < MAX_UPLINKS) {
            char spec[256];
            snprintf(spec, sizeof spec, "%s", argv[++i]);
            char *c1 = strchr(spec, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
            if (!c1 || !c2) usage();
            *c1 = *c2 = 0;
            struct uplink *u = &up[n_up++];
            if (strlen(spec) >= sizeof u->ifname) usage();
            memcpy(u->ifname, spec, strlen(spec) + 1);
            char srcspec[80];
            snprintf(srcspec, sizeof srcspec, "%s:0", c1 + 1);
            if (parse_addr(srcspec, &u->src) || parse_addr(c2 + 1, &u->dst)) usage();
        } else {
            usage();
        }
    }
    if (!have_listen || n_up == 0) usage();

    int lfd = udp_socket();
    if (bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    add_epoll(ep, lfd, 0xffffffffu);
    for (int i = 0; i < n_up; i++) {
        up[i].fd = udp_socket();
        if (setsockopt(up[i].fd, SOL_SOCKET, SO_BINDTODEVICE, up[i].ifname,
                       (socklen_t)strlen(up[i].ifname)) < 0)
            die("SO_BINDTODEVICE");
        if (bind(up[i].fd, (struct sockaddr *)&up[i].src, sizeof up[i].src) < 0)
            die("bind uplink");
        add_epoll(ep, up[i].fd, (uint32_t)i);
    }
    fprintf(stderr, "relay: ready\n");

    struct sockaddr_in peer = {0};
    int have_peer = 0;
    uint64_t rx_listen = 0, tx_listen = 0, tx_listen_drop = 0, no_peer = 0;
    struct epoll_event evs[MAX_UPLINKS + 1];
    while (!g_stop) {
        int n = epoll_wait(ep, evs, MAX_UPLINKS + 1, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            uint32_t tag = evs[e].data.u32;
            if (tag == 0xffffffffu) {
                for (int k = 0; k < DRAIN; k++) {
                    struct sockaddr_in from;
                    socklen_t fl = sizeof from;
                    ssize_t r = recvfrom(lfd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
                    if (r < 0) break; /* EAGAIN, or a queued ICMP error: nothing to relay */
                    rx_listen++;
                    peer = from;
                    have_peer = 1;
                    for (int i = 0; i < n_up; i++) {
                        if (sendto(up[i].fd, buf, (size_t)r, 0, (struct sockaddr *)&up[i].dst,
                                   sizeof up[i].dst) < 0) {
                            if (!is_drop_errno(errno)) die("sendto uplink");
                            up[i].tx_drop++;
                        } else {
                            up[i].tx++;
                        }
                    }
                }
            } else {
                struct uplink *u = &up[tag];
                for (int k = 0; k < DRAIN; k++) {
                    ssize_t r = recv(u->fd, buf, sizeof buf, 0);
                    if (r < 0) break;
                    u->rx++;
                    if (!have_peer) {
                        no_peer++;
                        continue;
                    }
                    if (sendto(lfd, buf, (size_t)r, 0, (struct sockaddr *)&peer, sizeof peer) <
                        0) {
                        if (!is_drop_errno(errno)) die("sendto listen");
                        tx_listen_drop++;
                    } else {
                        tx_listen++;
                    }
                }
            }
        }
    }
    printf("{\"mode\":\"client\",\"rx_listen\":%llu,\"tx_listen\":%llu,\"tx_listen_drop\":%llu,"
           "\"no_peer\":%llu,\"uplinks\":[",
           (unsigned long long)rx_listen, (unsigned long long)tx_listen,
           (unsigned long long)tx_listen_drop, (unsigned long long)no_peer);
    for (int i = 0; i < n_up; i++)
        printf("%s{\"ifname\":\"%s\",\"tx\":%llu,\"tx_drop\":%llu,\"rx\":%llu}", i ? "," : "",
               up[i].ifname, (unsigned long long)up[i].tx, (unsigned long long)up[i].tx_drop,
               (unsigned long long)up[i].rx);
    printf("],");
    print_cpu();
    return 0;
}

struct client {
    struct sockaddr_in addr;
    double last_seen;
};

static int run_server(int argc, char **argv) {
    struct sockaddr_in listen_addr, dst;
    int have_listen = 0, have_dst = 0;
    double timeout_s = 30;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            if (parse_addr(argv[++i], &listen_addr)) usage();
            have_listen = 1;
        } else if (!strcmp(argv[i], "--dst") && i + 1 < argc) {
            if (parse_addr(argv[++i], &dst)) usage();
            have_dst = 1;
        } else if (!strcmp(argv[i], "--client-timeout") && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        } else {
            usage();
        }
    }
    if (!have_listen || !have_dst) usage();

    int lfd = udp_socket();
    if (bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind listen");
    int ufd = udp_socket();
    if (connect(ufd, (struct sockaddr *)&dst, sizeof dst) < 0) die("connect dst");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    add_epoll(ep, lfd, 0);
    add_epoll(ep, ufd, 1);
    fprintf(stderr, "relay: ready\n");

    static struct client clients[MAX_CLIENTS];
    int n_clients = 0;
    uint64_t rx_listen = 0, tx_up = 0, tx_up_drop = 0, rx_up = 0, tx_clients = 0;
    uint64_t tx_clients_drop = 0, table_full = 0;
    struct epoll_event evs[2];
    while (!g_stop) {
        int n = epoll_wait(ep, evs, 2, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        double now = mono_s();
        for (int e = 0; e < n; e++) {
            if (evs[e].data.u32 == 0) {
                for (int k = 0; k < DRAIN; k++) {
                    struct sockaddr_in from;
                    socklen_t fl = sizeof from;
                    ssize_t r = recvfrom(lfd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
                    if (r < 0) break;
                    rx_listen++;
                    int j;
                    for (j = 0; j < n_clients; j++)
                        if (clients[j].addr.sin_addr.s_addr == from.sin_addr.s_addr &&
                            clients[j].addr.sin_port == from.sin_port)
                            break;
                    if (j == n_clients) {
                        if (n_clients < MAX_CLIENTS) {
                            clients[n_clients++].addr = from;
                        } else {
                            table_full++;
                            j = -1;
                        }
                    }
                    if (j >= 0) clients[j].last_seen = now;
                    if (send(ufd, buf, (size_t)r, 0) < 0) {
                        if (!is_drop_errno(errno)) die("send dst");
                        tx_up_drop++;
                    } else {
                        tx_up++;
                    }
                }
            } else {
                for (int k = 0; k < DRAIN; k++) {
                    ssize_t r = recv(ufd, buf, sizeof buf, 0);
                    if (r < 0) break;
                    rx_up++;
                    for (int j = 0; j < n_clients;) {
                        if (now - clients[j].last_seen > timeout_s) {
                            clients[j] = clients[--n_clients]; /* expired: forget it */
                            continue;
                        }
                        if (sendto(lfd, buf, (size_t)r, 0, (struct sockaddr *)&clients[j].addr,
                                   sizeof clients[j].addr) < 0) {
                            if (!is_drop_errno(errno)) die("sendto client");
                            tx_clients_drop++;
                        } else {
                            tx_clients++;
                        }
                        j++;
                    }
                }
            }
        }
    }
    printf("{\"mode\":\"server\",\"rx_listen\":%llu,\"tx_dst\":%llu,\"tx_dst_drop\":%llu,"
           "\"rx_dst\":%llu,\"tx_clients\":%llu,\"tx_clients_drop\":%llu,\"clients\":%d,"
           "\"table_full\":%llu,",
           (unsigned long long)rx_listen, (unsigned long long)tx_up,
           (unsigned long long)tx_up_drop, (unsigned long long)rx_up,
           (unsigned long long)tx_clients, (unsigned long long)tx_clients_drop, n_clients,
           (unsigned long long)table_full);
    print_cpu();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stderr, NULL, _IONBF, 0);
    if (!strcmp(argv[1], "client")) return run_client(argc, argv);
    if (!strcmp(argv[1], "server")) return run_server(argc, argv);
    usage();
    return 2;
}
