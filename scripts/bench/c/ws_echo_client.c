/*
 * ws_echo_client.c - single-threaded epoll WebSocket echo load generator.
 *
 * Why C: the WebSocket benchmark charges the server's CPU to the messages
 * it echoed; a Python client (websockets, wsproto) spends more per message
 * than the servers under test and would set the pace instead of them.
 *
 * N non-blocking TCP connections each do the RFC 6455 opening handshake
 * (GET --path with Upgrade: websocket, a fresh Sec-WebSocket-Key; the
 * answer must be "101"), then keep exactly one message in flight: a masked
 * client frame (FIN, text or --binary, --size payload bytes, a new mask per
 * frame, as RFC 6455 5.3 asks), and wait until the whole message has come
 * back (unmasked server frames, fragmented or not) before sending the next.
 * Every echoed byte is compared with what was sent.  A ping from the server
 * is answered with a pong; a close frame or EOF loses the connection.
 *
 * Output: one JSON line on stdout, the same keys as echo_client:
 *   {"requests":..,"errors":..,"lost":..,"duration":..,"rps":..,
 *    "p50_us":..,"p99_us":..,"handshakes":..}
 * requests (round trips) and latencies cover the measured window only
 * (after --warmup); errors cover the whole run.
 *
 * Bounded: the loop stops at warmup+duration whatever the server does, and
 * an interval timer kills the process (printing an error JSON line) 1 s
 * after that.  At the end each open connection gets a close frame (1000)
 * before its socket is closed, so servers see a normal close.
 *
 * Exit status: 0 ok, 1 bad usage / setup failure, 2 no connection opened
 * (JSON still printed, with the first refused handshake on stderr), 3
 * watchdog fired.
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
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define MAX_EVENTS 256
#define HANDSHAKE_MAX 4096
#define FRAME_HEADER_MAX 14 /* 2 + 8 (length) + 4 (mask) */
#define READS_PER_EVENT 16

typedef struct {
    const char *host;
    const char *path;
    int port;
    int connections;
    int size;
    double duration;
    double warmup;
    int binary;
} options;

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };

typedef struct {
    int fd;
    int idx;
    int state;
    int want_out;
    uint64_t seq;      /* message number: selects the payload bytes */
    uint64_t started;  /* send time of the message in flight (ns) */
    uint64_t echoed;   /* payload bytes of the current message received */
    int bad;           /* current message had a mismatch */
    uint8_t *out;      /* bytes still to write (frame or handshake) */
    size_t out_len, out_off;
    uint8_t *in;       /* bytes read, not yet parsed */
    size_t in_len;
} conn;

static options opt;
static conn *conns;
static int epfd = -1;
static int alive;
static uint8_t *pattern;
static size_t in_cap;
static struct sockaddr_storage server_addr;
static socklen_t server_addrlen;
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t t_warm_end, t_end;
static uint64_t n_requests, n_errors, n_handshakes;
static int refused_reported;

static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#define PATTERN_SPAN 251u
static const uint8_t *msg_bytes(const conn *c, uint64_t m) {
    return pattern + (m + (uint64_t)c->idx * 17u) % PATTERN_SPAN;
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s --port N [--host 127.0.0.1] [--path /ws] [--connections 64]\n"
            "          [--size 100] [--duration 5] [--warmup 1] [--binary]\n",
            prog);
}

static int parse_args(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"path", required_argument, NULL, 'P'},
        {"connections", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"binary", no_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    opt = (options){"127.0.0.1", "/ws", -1, 64, 100, 5.0, 1.0, 0};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'P': opt.path = optarg; break;
        case 'c': opt.connections = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'b': opt.binary = 1; break;
        default: return -1;
        }
    }
    if (optind != argc) return -1;
    if (opt.port < 1 || opt.port > 65535 || opt.connections < 1 ||
        opt.connections > 100000 || opt.size < 1 || opt.size > (1 << 20) ||
        !(opt.duration > 0.0 && opt.duration <= 86400.0) ||
        !(opt.warmup >= 0.0 && opt.warmup <= 86400.0) || opt.path[0] != '/' ||
        strlen(opt.path) > 1024) {
        fprintf(stderr, "ws_echo_client: invalid argument value\n");
        return -1;
    }
    return 0;
}

/* ---- connections ------------------------------------------------------- */
static void set_events(conn *c, int want_out) {
    if (c->state == ST_CLOSED || c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u),
                             .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = want_out;
}

static void lose(conn *c) {
    if (c->state == ST_CLOSED) return;
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    alive--;
    n_errors++;
}

/* Write what is queued in c->out; 0 when all of it left (or it waits for
 * EPOLLOUT), -1 when the connection is gone. */
static int flush_out(conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, 1);
                return 0;
            }
            return -1;
        }
        c->out_off += (size_t)w;
    }
    c->out_len = c->out_off = 0;
    set_events(c, 0);
    return 0;
}

/* Queue one masked client frame.  The buffer holds a header and at most
 * opt.size payload bytes (data frames) or 125 (control frames). */
static void queue_frame(conn *c, uint8_t opcode, const uint8_t *payload, size_t len) {
    uint8_t *p = c->out + c->out_len;
    size_t n = 0;
    p[n++] = (uint8_t)(0x80u | opcode);
    if (len < 126) {
        p[n++] = (uint8_t)(0x80u | len);
    } else if (len < 65536) {
        p[n++] = 0x80u | 126u;
        p[n++] = (uint8_t)(len >> 8);
        p[n++] = (uint8_t)len;
    } else {
        p[n++] = 0x80u | 127u;
        for (int b = 7; b >= 0; b--) p[n++] = (uint8_t)((uint64_t)len >> (8 * b));
    }
    uint32_t mask = (uint32_t)(next_random() >> 16);
    uint8_t key[4] = {(uint8_t)(mask >> 24), (uint8_t)(mask >> 16), (uint8_t)(mask >> 8),
                      (uint8_t)mask};
    memcpy(p + n, key, 4);
    n += 4;
    for (size_t i = 0; i < len; i++) p[n + i] = payload[i] ^ key[i & 3u];
    c->out_len += n + len;
}

static int send_message(conn *c, uint64_t now) {
    c->started = now;
    c->echoed = 0;
    c->bad = 0;
    queue_frame(c, opt.binary ? 0x2u : 0x1u, msg_bytes(c, c->seq), (size_t)opt.size);
    return flush_out(c);
}

/* Text messages must be valid UTF-8: keep the pattern 7-bit for them. */
static void make_pattern(void) {
    for (size_t i = 0; i < (size_t)opt.size + PATTERN_SPAN; i++) {
        uint8_t b = (uint8_t)(next_random() >> 24);
        pattern[i] = opt.binary ? b : (uint8_t)('a' + b % 26u);
    }
}

static int in_window(uint64_t now) { return now >= t_warm_end && now < t_end; }

static void base64(const uint8_t *src, size_t n, char *dst) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16;
        if (i + 1 < n) v |= (uint32_t)src[i + 1] << 8;
        if (i + 2 < n) v |= src[i + 2];
        dst[j++] = alphabet[(v >> 18) & 63u];
        dst[j++] = alphabet[(v >> 12) & 63u];
        dst[j++] = i + 1 < n ? alphabet[(v >> 6) & 63u] : '=';
        dst[j++] = i + 2 < n ? alphabet[v & 63u] : '=';
    }
    dst[j] = '\0';
}

static int queue_handshake(conn *c) {
    uint8_t nonce[16];
    for (int i = 0; i < 16; i++) nonce[i] = (uint8_t)(next_random() >> 24);
    char key[32];
    base64(nonce, sizeof nonce, key);
    int n = snprintf((char *)c->out, HANDSHAKE_MAX,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt.path, opt.host, opt.port, key);
    if (n <= 0 || n >= HANDSHAKE_MAX) return -1;
    c->out_len = (size_t)n;
    c->out_off = 0;
    return 0;
}

/* The handshake's answer: "HTTP/1.1 101" and the end of the headers.
 * Returns 1 when done (leftover frame bytes stay in c->in), 0 to wait, -1
 * when refused. */
static int parse_handshake(conn *c) {
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL) return c->in_len >= HANDSHAKE_MAX ? -1 : 0;
    size_t head = (size_t)(end - c->in) + 4;
    if (c->in_len < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0) {
        if (!refused_reported) {
            refused_reported = 1;
            size_t show = head < 200 ? head : 200;
            fprintf(stderr, "ws_echo_client: handshake refused: %.*s\n", (int)show,
                    (const char *)c->in);
        }
        return -1;
    }
    memmove(c->in, c->in + head, c->in_len - head);
    c->in_len -= head;
    return 1;
}

/* Parse complete server frames in c->in.  Returns -1 when the connection
 * must go (close frame, protocol error, a mismatched length). */
static int parse_frames(conn *c, uint64_t now) {
    size_t pos = 0;
    for (;;) {
        size_t avail = c->in_len - pos;
        if (avail < 2) break;
        const uint8_t *p = c->in + pos;
        uint8_t opcode = p[0] & 0x0Fu;
        int fin = (p[0] & 0x80u) != 0;
        int masked = (p[1] & 0x80u) != 0;
        uint64_t len = p[1] & 0x7Fu;
        size_t hlen = 2;
        if (len == 126) {
            if (avail < 4) break;
            len = ((uint64_t)p[2] << 8) | p[3];
            hlen = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int b = 0; b < 8; b++) len = (len << 8) | p[2 + b];
            hlen = 10;
        }
        if (masked) return -1; /* RFC 6455 5.1: servers never mask */
        if (len > in_cap - FRAME_HEADER_MAX) return -1;
        if (avail < hlen + len) break;
        const uint8_t *payload = p + hlen;
        pos += hlen + (size_t)len;
        if (opcode == 0x8u) return -1; /* close: the server ended it */
        if (opcode == 0x9u) {          /* ping: pong with the same data */
            if (len > 125) return -1;
            queue_frame(c, 0xAu, payload, (size_t)len);
            if (flush_out(c) < 0) return -1;
            continue;
        }
        if (opcode == 0xAu) continue; /* unsolicited pong */
        if (opcode > 0x2u) return -1;  /* reserved opcode */
        if (c->echoed + len > (uint64_t)opt.size) return -1;
        if (memcmp(payload, msg_bytes(c, c->seq) + c->echoed, (size_t)len) != 0) c->bad = 1;
        c->echoed += len;
        if (!fin) continue;
        if (c->echoed != (uint64_t)opt.size) return -1;
        if (c->bad)
            n_errors++;
        else if (in_window(now)) {
            n_requests++;
            hist_add(now - c->started);
        }
        c->seq++;
        if (now < t_end && !stop_flag && send_message(c, now) < 0) return -1;
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static void on_event(conn *c, uint32_t events, uint64_t now) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            lose(c);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        c->state = ST_HANDSHAKE;
        if (queue_handshake(c) < 0 || flush_out(c) < 0) lose(c);
        return;
    }
    if (events & EPOLLOUT) {
        if (flush_out(c) < 0) {
            lose(c);
            return;
        }
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (int iter = 0; iter < READS_PER_EVENT; iter++) {
        if (c->in_len == in_cap) {
            lose(c);
            return;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, in_cap - c->in_len, 0);
        if (r == 0) {
            lose(c);
            return;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            lose(c);
            return;
        }
        c->in_len += (size_t)r;
        if (c->state == ST_HANDSHAKE) {
            int done = parse_handshake(c);
            if (done < 0) {
                lose(c);
                return;
            }
            if (done == 0) continue;
            c->state = ST_OPEN;
            n_handshakes++;
            if (send_message(c, now) < 0) {
                lose(c);
                return;
            }
        }
        if (parse_frames(c, now) < 0) {
            lose(c);
            return;
        }
    }
}

static int open_conn(conn *c) {
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

/* A close frame (1000) to every open connection, best effort, then close. */
static void close_all(void) {
    static const uint8_t code[2] = {0x03, 0xE8};
    for (int i = 0; i < opt.connections; i++) {
        conn *c = &conns[i];
        if (c->state == ST_CLOSED) continue;
        if (c->state == ST_OPEN) {
            c->out_len = c->out_off = 0;
            queue_frame(c, 0x8u, code, sizeof code);
            ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
        }
        close(c->fd);
        c->fd = -1;
        c->state = ST_CLOSED;
    }
}

static int setup(void) {
    size_t n = (size_t)opt.connections;
    size_t out_cap = (size_t)opt.size + FRAME_HEADER_MAX + 2 * (125 + FRAME_HEADER_MAX);
    if (out_cap < HANDSHAKE_MAX) out_cap = HANDSHAKE_MAX;
    in_cap = 2 * ((size_t)opt.size + FRAME_HEADER_MAX) + HANDSHAKE_MAX;
    pattern = malloc((size_t)opt.size + PATTERN_SPAN);
    conns = calloc(n, sizeof *conns);
    if (!pattern || !conns) return -1;
    make_pattern();
    for (size_t i = 0; i < n; i++) {
        conns[i].idx = (int)i;
        conns[i].fd = -1;
        conns[i].state = ST_CLOSED;
        conns[i].out = malloc(out_cap);
        conns[i].in = malloc(in_cap);
        if (!conns[i].out || !conns[i].in) return -1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    return epfd < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        usage(argv[0]);
        return 1;
    }
    if (resolve_numeric("ws_echo_client", opt.host, opt.port, &server_addr, &server_addrlen) !=
        0)
        return 1;
    install_signals(opt.warmup + opt.duration + 1.0);
    raise_fd_limit(opt.connections + 16);
    if (setup() != 0) {
        fprintf(stderr, "ws_echo_client: setup failed (memory or epoll)\n");
        return 1;
    }
    const uint64_t t0 = now_ns();
    t_warm_end = t0 + (uint64_t)(opt.warmup * 1e9);
    t_end = t_warm_end + (uint64_t)(opt.duration * 1e9);
    for (int i = 0; i < opt.connections; i++) {
        if (open_conn(&conns[i]) != 0) {
            n_errors++;
            continue;
        }
        alive++;
    }
    struct epoll_event events[MAX_EVENTS];
    uint64_t now = t0;
    while (!stop_flag && alive > 0) {
        now = now_ns();
        if (now >= t_end) break;
        int timeout_ms = (int)((t_end - now + 999999u) / 1000000u);
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("ws_echo_client: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            conn *c = events[i].data.ptr;
            if (c->state == ST_CLOSED) continue;
            now = now_ns();
            on_event(c, events[i].events, now);
        }
    }
    int opened = alive;
    close_all();
    cancel_watchdog();
    double measured = measured_seconds(t_warm_end, t_end);
    double rps = measured > 0.0 ? (double)n_requests / measured : 0.0;
    printf("{\"requests\": %llu, \"errors\": %llu, \"lost\": 0, \"duration\": %.6f, "
           "\"rps\": %.3f, \"p50_us\": %.3f, \"p99_us\": %.3f, \"handshakes\": %llu}\n",
           (unsigned long long)n_requests, (unsigned long long)n_errors, measured, rps,
           hist_percentile(0.50) / 1000.0, hist_percentile(0.99) / 1000.0,
           (unsigned long long)n_handshakes);
    fflush(stdout);
    return opened > 0 && n_handshakes > 0 ? 0 : 2;
}
