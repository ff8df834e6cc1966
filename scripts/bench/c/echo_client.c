/*
 * echo_client.c - single-threaded epoll echo load generator (TCP or UDP).
 *
 * Why C: the benchmark must measure the server, not the load generator.  A
 * Python client saturates its own core long before a uvloop server does, so
 * the client is a tight epoll loop with no allocation on the hot path.
 *
 * TCP: N non-blocking connections (TCP_NODELAY).  Each keeps `pipeline`
 * messages of `size` bytes in flight; a message completes when exactly its
 * bytes have come back.  Every echoed byte is compared with what was sent.
 * UDP: N connected datagram sockets, `pipeline` datagrams in flight each; a
 * datagram not echoed within --udp-timeout-ms is counted as lost and resent.
 *
 * Output: one JSON line on stdout:
 *   {"requests":..,"errors":..,"lost":..,"duration":..,"rps":..,
 *    "p50_us":..,"p99_us":..}
 * requests/lost/latencies cover the measured window only (after --warmup);
 * errors cover the whole run, because any error is worth seeing.
 *
 * Bounded: the event loop stops at warmup+duration no matter what the server
 * does, and an interval timer kills the process (printing an error JSON
 * line) 1 s after that should anything ever block.
 *
 * Exit status: 0 ok, 1 bad usage / setup failure, 2 every connection was
 * lost (JSON still printed), 3 watchdog fired.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define PATTERN_SPAN 251u   /* prime: consecutive messages differ */
#define MAX_EVENTS 256
#define READ_BUF (256 * 1024)
#define MAX_IOV 16
#define READS_PER_EVENT 16  /* bound per-event work; level-triggered re-reports */
#define WRITES_PER_CALL 64
#define UDP_MAX_PAYLOAD 65507
#define UDP_SCAN_NS 5000000ull

/* ---- options and global state ----------------------------------------- */
typedef struct {
    const char *host;
    int port;
    int connections;
    int size;
    double duration;
    double warmup;
    int pipeline;
    int udp;
    int udp_timeout_ms;
} options;

enum { ST_CONNECTING, ST_OPEN, ST_CLOSED };

typedef struct {
    int fd;
    int idx;
    int state;
    int want_out;     /* EPOLLOUT currently registered */
    int bad_msg;      /* TCP: current incoming message had a mismatch */
    uint64_t sent;    /* TCP: bytes written */
    uint64_t recvd;   /* TCP: bytes read */
    uint64_t next_seq;/* UDP: next datagram sequence number */
    uint64_t *starts; /* per pipeline slot: send timestamp (ns) */
    uint64_t *seqs;   /* UDP: sequence in flight per slot */
    uint8_t *active;  /* UDP: slot has a datagram in flight */
} conn;

static options opt;
static conn *conns;
static int epfd = -1;
static int alive;
static uint8_t *pattern;
static uint8_t *udp_sbuf;
static uint8_t rbuf[READ_BUF];
static struct sockaddr_storage server_addr;
static socklen_t server_addrlen;

static uint64_t t_warm_end, t_end;
static uint64_t n_requests, n_errors, n_lost;

/* Message m of connection c: a window into a shared random pattern, shifted
 * per message and per connection so stale or crossed bytes are detected. */
static const uint8_t *msg_bytes(const conn *c, uint64_t m) {
    return pattern + (m + (uint64_t)c->idx * 17u) % PATTERN_SPAN;
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s --port N [--host 127.0.0.1] [--connections 64] [--size 100]\n"
            "          [--duration 5] [--warmup 1] [--pipeline 1] [--udp]\n"
            "          [--udp-timeout-ms 200]\n",
            prog);
}

static int parse_args(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"connections", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"pipeline", required_argument, NULL, 'k'},
        {"udp", no_argument, NULL, 'u'},
        {"udp-timeout-ms", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    opt = (options){"127.0.0.1", -1, 64, 100, 5.0, 1.0, 1, 0, 200};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.connections = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'k': opt.pipeline = atoi(optarg); break;
        case 'u': opt.udp = 1; break;
        case 't': opt.udp_timeout_ms = atoi(optarg); break;
        default: return -1;
        }
    }
    if (optind != argc) return -1;
    int max_size = opt.udp ? UDP_MAX_PAYLOAD : (16 << 20);
    if (opt.port < 1 || opt.port > 65535 || opt.connections < 1 ||
        opt.connections > 100000 || opt.size < 1 || opt.size > max_size ||
        !(opt.duration > 0.0 && opt.duration <= 86400.0) ||
        !(opt.warmup >= 0.0 && opt.warmup <= 86400.0) || opt.pipeline < 1 ||
        opt.pipeline > 4096 || opt.udp_timeout_ms < 1) {
        fprintf(stderr, "echo_client: invalid argument value\n");
        return -1;
    }
    return 0;
}

/* ---- connection bookkeeping ------------------------------------------- */
static void set_events(conn *c, int want_out) {
    if (c->state == ST_CLOSED || c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u),
                             .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = want_out;
}

/* A lost connection is one error; it is not reopened, the run goes on with
 * the rest (closing the fd also drops it from the epoll set). */
static void lose(conn *c) {
    if (c->state == ST_CLOSED) return;
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    alive--;
    n_errors++;
}

static int in_window(uint64_t now) { return now >= t_warm_end && now < t_end; }

static void complete(uint64_t slot_start, uint64_t now) {
    if (!in_window(now)) return;
    n_requests++;
    hist_add(now - slot_start);
}

/* ---- TCP ----------------------------------------------------------------- */
/* Write as much as the pipeline window allows.  Returns -1 if the connection
 * is gone.  Timestamps are taken for every message whose first byte left. */
static int tcp_fill(conn *c, uint64_t now) {
    const uint64_t size = (uint64_t)opt.size;
    const uint64_t k = (uint64_t)opt.pipeline;
    const uint64_t limit = (c->recvd / size + k) * size;
    for (int iter = 0; iter < WRITES_PER_CALL && c->sent < limit; iter++) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        uint64_t off = c->sent;
        while (n < MAX_IOV && off < limit) {
            uint64_t m = off / size, i = off % size;
            iov[n].iov_base = (void *)(msg_bytes(c, m) + i);
            iov[n].iov_len = (size_t)(size - i);
            off += size - i;
            n++;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, 1);
                return 0;
            }
            return -1;
        }
        uint64_t before = c->sent;
        c->sent += (uint64_t)w;
        for (uint64_t m = (before + size - 1) / size; m * size < c->sent; m++)
            c->starts[m % k] = now;
    }
    set_events(c, c->sent < limit);
    return 0;
}

/* Verify echoed bytes against what message (recvd / size) carried. */
static int tcp_consume(conn *c, const uint8_t *buf, size_t n, uint64_t now) {
    const uint64_t size = (uint64_t)opt.size;
    if (c->recvd + n > c->sent) return -1; /* server sent bytes we never sent */
    size_t pos = 0;
    while (pos < n) {
        uint64_t m = c->recvd / size, i = c->recvd % size;
        size_t chunk = (size_t)(size - i);
        if (chunk > n - pos) chunk = n - pos;
        if (memcmp(buf + pos, msg_bytes(c, m) + i, chunk) != 0) c->bad_msg = 1;
        c->recvd += chunk;
        pos += chunk;
        if (c->recvd % size == 0) {
            if (c->bad_msg)
                n_errors++;
            else
                complete(c->starts[m % (uint64_t)opt.pipeline], now);
            c->bad_msg = 0;
        }
    }
    return 0;
}

static void tcp_on_event(conn *c, uint32_t events, uint64_t now) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            lose(c);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        c->state = ST_OPEN;
        if (tcp_fill(c, now) < 0) lose(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (int iter = 0; iter < READS_PER_EVENT; iter++) {
            ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
            if (r > 0) {
                if (tcp_consume(c, rbuf, (size_t)r, now) < 0) {
                    lose(c);
                    return;
                }
                if ((size_t)r < sizeof rbuf) break; /* drained for now */
                continue;
            }
            if (r == 0) { /* EOF: short read if a message was half-echoed */
                lose(c);
                return;
            }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            lose(c); /* ECONNRESET and friends */
            return;
        }
    }
    if (tcp_fill(c, now) < 0) lose(c);
}

static int tcp_open(conn *c) {
    c->fd = socket(server_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&server_addr, server_addrlen) != 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->want_out = 1;
    return 0;
}

/* ---- UDP ----------------------------------------------------------------- */
static unsigned udp_hdr_len(void) { return opt.size < 8 ? (unsigned)opt.size : 8u; }

static uint64_t udp_seq_mask(void) {
    unsigned h = udp_hdr_len();
    return h >= 8 ? ~0ull : ((1ull << (8u * h)) - 1u);
}

/* (Re)send slot s with a fresh sequence number.  A failed send is left to
 * the timeout: it becomes a loss and is retried, as on a real network. */
static void udp_send(conn *c, int s, uint64_t now) {
    uint64_t seq = c->next_seq++;
    unsigned h = udp_hdr_len();
    memcpy(udp_sbuf, msg_bytes(c, seq), (size_t)opt.size);
    for (unsigned b = 0; b < h; b++) udp_sbuf[b] = (uint8_t)(seq >> (8u * b));
    c->seqs[s] = seq;
    c->starts[s] = now;
    c->active[s] = 1;
    if (send(c->fd, udp_sbuf, (size_t)opt.size, MSG_NOSIGNAL) < 0 &&
        errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
        n_errors++; /* e.g. ECONNREFUSED from an earlier ICMP unreachable */
}

static void udp_on_event(conn *c, uint64_t now) {
    const unsigned h = udp_hdr_len();
    const uint64_t mask = udp_seq_mask();
    for (int iter = 0; iter < READS_PER_EVENT; iter++) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, MSG_TRUNC);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            n_errors++; /* ECONNREFUSED etc.: reported once, keep going */
            continue;
        }
        if (r != opt.size) {
            n_errors++;
            continue;
        }
        uint64_t seq = 0;
        for (unsigned b = 0; b < h; b++) seq |= (uint64_t)rbuf[b] << (8u * b);
        int slot = -1;
        for (int s = 0; s < opt.pipeline; s++) {
            if (c->active[s] && (c->seqs[s] & mask) == seq) {
                slot = s;
                break;
            }
        }
        if (slot < 0) continue; /* late echo of a datagram already counted lost */
        const uint8_t *want = msg_bytes(c, c->seqs[slot]);
        if (memcmp(rbuf + h, want + h, (size_t)opt.size - h) != 0)
            n_errors++;
        else
            complete(c->starts[slot], now);
        udp_send(c, slot, now);
    }
}

static void udp_scan_timeouts(uint64_t now) {
    const uint64_t timeout = (uint64_t)opt.udp_timeout_ms * 1000000u;
    for (int i = 0; i < opt.connections; i++) {
        conn *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        for (int s = 0; s < opt.pipeline; s++) {
            if (c->active[s] && now - c->starts[s] >= timeout) {
                if (in_window(now)) n_lost++;
                udp_send(c, s, now);
            }
        }
    }
}

static int udp_open(conn *c) {
    c->fd = socket(server_addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    /* connect(): the kernel filters foreign senders and reports ICMP errors */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (connect(c->fd, (struct sockaddr *)&server_addr, server_addrlen) != 0 ||
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = ST_OPEN;
    return 0;
}

/* ---- main ------------------------------------------------------------------ */
static int setup(void) {
    size_t k = (size_t)opt.pipeline;
    size_t n = (size_t)opt.connections;
    pattern = malloc((size_t)opt.size + PATTERN_SPAN);
    udp_sbuf = malloc((size_t)opt.size);
    conns = calloc(n, sizeof *conns);
    uint64_t *starts = calloc(n * k, sizeof *starts);
    uint64_t *seqs = calloc(n * k, sizeof *seqs);
    uint8_t *active = calloc(n * k, 1);
    if (!pattern || !udp_sbuf || !conns || !starts || !seqs || !active) {
        fprintf(stderr, "echo_client: out of memory\n");
        return -1;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull; /* xorshift64: fixed, reproducible */
    for (size_t i = 0; i < (size_t)opt.size + PATTERN_SPAN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (uint8_t)(x >> 24);
    }
    for (size_t i = 0; i < n; i++) {
        conns[i].idx = (int)i;
        conns[i].fd = -1;
        conns[i].state = ST_CLOSED;
        conns[i].starts = starts + i * k;
        conns[i].seqs = seqs + i * k;
        conns[i].active = active + i * k;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("echo_client: epoll_create1");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        usage(argv[0]);
        return 1;
    }
    if (resolve_numeric("echo_client", opt.host, opt.port, &server_addr, &server_addrlen) != 0)
        return 1;
    install_signals(opt.warmup + opt.duration + 1.0); /* warmup + duration + 1 s grace */
    raise_fd_limit(opt.connections + 16);
    if (setup() != 0) return 1;

    const uint64_t t0 = now_ns();
    t_warm_end = t0 + (uint64_t)(opt.warmup * 1e9);
    t_end = t_warm_end + (uint64_t)(opt.duration * 1e9);

    for (int i = 0; i < opt.connections; i++) {
        conn *c = &conns[i];
        int rc = opt.udp ? udp_open(c) : tcp_open(c);
        if (rc != 0) {
            n_errors++;
            continue;
        }
        alive++;
        if (opt.udp)
            for (int s = 0; s < opt.pipeline; s++) udp_send(c, s, t0);
    }

    struct epoll_event events[MAX_EVENTS];
    uint64_t next_scan = t0 + UDP_SCAN_NS;
    uint64_t now = t0;
    while (!stop_flag && alive > 0) {
        now = now_ns();
        if (now >= t_end) break;
        uint64_t wake = t_end;
        if (opt.udp && next_scan < wake) wake = next_scan;
        int timeout_ms = wake > now ? (int)((wake - now + 999999u) / 1000000u) : 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("echo_client: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            conn *c = events[i].data.ptr;
            if (c->state == ST_CLOSED) continue;
            /* Per event, not per batch: a batch of 64 connections takes
             * ~100 us of syscalls, which would otherwise skew latencies. */
            now = now_ns();
            if (opt.udp)
                udp_on_event(c, now);
            else
                tcp_on_event(c, events[i].events, now);
        }
        now = now_ns();
        if (opt.udp && now >= next_scan) {
            udp_scan_timeouts(now);
            next_scan = now + UDP_SCAN_NS;
        }
    }
    cancel_watchdog();
    double measured = measured_seconds(t_warm_end, t_end);
    double rps = measured > 0.0 ? (double)n_requests / measured : 0.0;
    printf("{\"requests\": %llu, \"errors\": %llu, \"lost\": %llu, \"duration\": %.6f, "
           "\"rps\": %.3f, \"p50_us\": %.3f, \"p99_us\": %.3f}\n",
           (unsigned long long)n_requests, (unsigned long long)n_errors,
           (unsigned long long)n_lost, measured, rps, hist_percentile(0.50) / 1000.0,
           hist_percentile(0.99) / 1000.0);
    fflush(stdout);
    return alive > 0 ? 0 : 2;
}
