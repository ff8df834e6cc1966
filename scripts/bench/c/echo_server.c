/*
 * echo_server.c - single-threaded epoll echo server (TCP or UDP).
 *
 * Why: it is the "physical limit" row of the echo benchmarks - what one core
 * can do with one recv and one send per wake-up and no interpreter at all.
 * Python servers are judged against it, so it is deliberately plain: level-
 * triggered epoll, one recv()/send() pair per read, no batching syscalls.
 *
 * TCP: bytes are echoed straight from a shared read buffer.  If a send() is
 * partial, the unsent tail is copied into a per-connection buffer and the
 * connection stops reading (EPOLLIN off, EPOLLOUT on) until the tail is
 * flushed - per-connection memory stays bounded by one read.
 * UDP (--udp): each datagram is sent back to its sender; a datagram that
 * cannot be sent right now is dropped, as UDP allows.
 *
 * Prints "READY <port>" once listening (the real port when --port 0) and
 * exits with status 0 on SIGTERM/SIGINT.
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
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define READ_BUF (256 * 1024)
#define OPS_PER_EVENT 16 /* bound per-event work; level-triggered re-reports */
#define ACCEPTS_PER_EVENT 64

typedef struct {
    int fd;
    uint8_t *pending; /* unsent tail of a partial write, or NULL */
    size_t off, len;
} sconn;

static volatile sig_atomic_t stop_flag;
static uint8_t rbuf[READ_BUF];
static int epfd = -1;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void close_conn(sconn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

static int watch(sconn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send buf; keep what the kernel did not take.  -1 = connection is dead. */
static int send_or_park(sconn *c, const uint8_t *buf, size_t len) {
    size_t done = 0;
    for (int iter = 0; iter < OPS_PER_EVENT && done < len; iter++) {
        ssize_t w = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    if (done == len) return 0;
    c->pending = malloc(len - done);
    if (!c->pending) return -1;
    memcpy(c->pending, buf + done, len - done);
    c->off = 0;
    c->len = len - done;
    return watch(c, EPOLLOUT);
}

static void on_tcp_readable(sconn *c) {
    for (int iter = 0; iter < OPS_PER_EVENT && !c->pending; iter++) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r > 0) {
            if (send_or_park(c, rbuf, (size_t)r) < 0) {
                close_conn(c);
                return;
            }
            if ((size_t)r < sizeof rbuf) return; /* drained for now */
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_conn(c); /* EOF or error */
        return;
    }
}

static void on_tcp_writable(sconn *c) {
    for (int iter = 0; iter < OPS_PER_EVENT && c->off < c->len; iter++) {
        ssize_t w = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w > 0) {
            c->off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_conn(c);
        return;
    }
    if (c->off < c->len) return;
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    if (watch(c, EPOLLIN) != 0) close_conn(c);
}

static void on_accept(int lfd) {
    for (int iter = 0; iter < ACCEPTS_PER_EVENT; iter++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or a transient error: try next wake-up */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sconn *c = calloc(1, sizeof *c);
        struct epoll_event ev = {.events = EPOLLIN};
        if (c) {
            c->fd = fd;
            ev.data.ptr = c;
        }
        if (!c || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
        }
    }
}

static void on_udp_readable(int fd) {
    for (int iter = 0; iter < OPS_PER_EVENT; iter++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t r = recvfrom(fd, rbuf, sizeof rbuf, 0, (struct sockaddr *)&peer, &plen);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            continue; /* EINTR or a stray ICMP error: keep serving */
        }
        (void)sendto(fd, rbuf, (size_t)r, MSG_NOSIGNAL, (struct sockaddr *)&peer, plen);
    }
}

static int open_listener(const char *host, int port, int udp) {
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        slen = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        slen = sizeof *a6;
    } else {
        fprintf(stderr, "echo_server: --host must be a numeric IPv4/IPv6 address\n");
        return -1;
    }
    int type = (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    int fd = socket(ss.ss_family, type, 0);
    if (fd < 0) {
        perror("echo_server: socket");
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, slen) != 0 || (!udp && listen(fd, 4096) != 0)) {
        perror("echo_server: bind/listen");
        close(fd);
        return -1;
    }
    slen = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &slen) != 0) {
        perror("echo_server: getsockname");
        close(fd);
        return -1;
    }
    int real = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);
    printf("READY %d\n", real);
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"udp", no_argument, NULL, 'u'},
        {NULL, 0, NULL, 0},
    };
    const char *host = "127.0.0.1";
    int port = 0, udp = 0, ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': udp = 1; break;
        default:
            fprintf(stderr, "usage: %s [--host 127.0.0.1] [--port 0] [--udp]\n", argv[0]);
            return 1;
        }
    }
    if (port < 0 || port > 65535) {
        fprintf(stderr, "echo_server: bad --port\n");
        return 1;
    }

    /* Stop signals stay blocked except inside epoll_pwait, so a signal can
     * never slip in between the stop_flag check and the wait. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGTERM);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("echo_server: epoll_create1");
        return 1;
    }
    int lfd = open_listener(host, port, udp);
    if (lfd < 0) return 1;
    /* The listener is tagged with a NULL pointer; connections carry sconn*. */
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) != 0) {
        perror("echo_server: epoll_ctl");
        return 1;
    }

    struct epoll_event events[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_pwait(epfd, events, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("echo_server: epoll_pwait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            sconn *c = events[i].data.ptr;
            if (c == NULL) {
                if (udp)
                    on_udp_readable(lfd);
                else
                    on_accept(lfd);
            } else if (c->pending) {
                on_tcp_writable(c);
            } else {
                on_tcp_readable(c);
            }
        }
    }
    close(lfd);
    close(epfd);
    return 0;
}
