/*
 * loadgen.h - what the two load generators (echo_client.c, ws_echo_client.c)
 * share: the latency histogram, the clock, the stop and watchdog signals, the
 * numeric-address resolver and the fd limit.  Header-only (static functions):
 * each generator is one translation unit built by scripts/bench/cbuild.py,
 * which rebuilds a binary when this header changes too.
 */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- latency histogram ------------------------------------------------ */
/* Log-linear buckets: values < 2^SUB_BITS are exact, above that each power
 * of two is split into 2^(SUB_BITS-1) buckets, so the relative error of a
 * reported percentile is below 1 %.  Constant memory, exact counts. */
#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS)
#define HALF_SUB (SUB_COUNT / 2u)
#define MAX_EXP 40 /* 2^41 ns ~ 36 min: far above any deadline */
#define HIST_BUCKETS ((MAX_EXP + 1) * HALF_SUB + SUB_COUNT)

static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_total;

static unsigned hist_index(uint64_t v) {
    if (v < SUB_COUNT) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned e = msb - SUB_BITS + 1u;
    if (e > MAX_EXP) return HIST_BUCKETS - 1u;
    return e * HALF_SUB + (unsigned)(v >> e);
}

static double hist_value(unsigned idx) {
    if (idx < SUB_COUNT) return (double)idx;
    unsigned e = idx / HALF_SUB - 1u;
    uint64_t mantissa = idx - e * HALF_SUB;
    uint64_t lo = mantissa << e;
    return (double)lo + (double)(1ull << e) / 2.0; /* bucket midpoint */
}

static void hist_add(uint64_t v) {
    hist[hist_index(v)]++;
    hist_total++;
}

static double hist_percentile(double p) {
    if (hist_total == 0) return 0.0;
    double exact = p * (double)hist_total;
    uint64_t rank = (uint64_t)exact;
    if ((double)rank < exact || rank < 1) rank++; /* ceil without libm */
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1u);
}

/* ---- clock and signals -------------------------------------------------- */
static volatile sig_atomic_t stop_flag;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_stop_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void on_watchdog(int sig) {
    (void)sig;
    static const char line[] =
        "{\"requests\": 0, \"errors\": 1, \"lost\": 0, \"duration\": 0.0, "
        "\"rps\": 0.0, \"p50_us\": 0.0, \"p99_us\": 0.0, \"watchdog\": true}\n";
    ssize_t r = write(STDOUT_FILENO, line, sizeof line - 1);
    (void)r;
    _exit(3);
}

/* SIGPIPE ignored, INT/TERM stop the loop, and a watchdog that prints an
 * error JSON line and exits 3 after `limit` seconds, whatever happens. */
static void install_signals(double limit) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_watchdog;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_sec = (time_t)limit;
    it.it_value.tv_usec = (suseconds_t)((limit - (double)(time_t)limit) * 1e6);
    setitimer(ITIMER_REAL, &it, NULL);
}

/* Done: the watchdog must not fire while the report is written. */
static void cancel_watchdog(void) {
    struct itimerval off;
    memset(&off, 0, sizeof off);
    setitimer(ITIMER_REAL, &off, NULL);
}

/* ---- setup --------------------------------------------------------------- */
/* A numeric IPv4 or IPv6 address (a benchmark never waits on DNS). */
static int resolve_numeric(const char *prog, const char *host, int port,
                           struct sockaddr_storage *addr, socklen_t *addrlen) {
    memset(addr, 0, sizeof *addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *addrlen = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *addrlen = sizeof *a6;
        return 0;
    }
    fprintf(stderr, "%s: --host must be a numeric IPv4/IPv6 address\n", prog);
    return -1;
}

static void raise_fd_limit(int needed) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur >= (rlim_t)needed) return;
    rl.rlim_cur = rl.rlim_max < (rlim_t)needed ? rl.rlim_max : (rlim_t)needed;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* The measured window's length in seconds, the run's end clamped to t_end. */
static double measured_seconds(uint64_t t_warm_end, uint64_t t_end) {
    uint64_t now = now_ns();
    if (now > t_end) now = t_end;
    return now > t_warm_end ? (double)(now - t_warm_end) / 1e9 : 0.0;
}

#endif /* LOADGEN_H */
