/* The echo benchmark's first load generator (echo_poll.c, built differently, is the second).
 * C, so that it spends little beyond its own system calls; a server that is as cheap (uvloop
 * comes close) can still bring it near its limit, which is why its CPU use is printed.
 *
 *   echo_load PORT CONNECTIONS MESSAGE_BYTES SECONDS
 *
 * Opens CONNECTIONS to 127.0.0.1:PORT. Each sends one message, waits until the whole echo
 * is back, then sends the next (a ping-pong per connection, so a server cannot win by
 * batching what nobody waits for). Runs one untimed second of warm-up, then counts the
 * echoes completed in SECONDS and prints: "messages N seconds S cpu C" (C: CPU seconds this
 * process used while counting, to show how far from saturated it was).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "echo_load: %s: %s\n", what, strerror(errno));
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: echo_load PORT CONNECTIONS MESSAGE_BYTES SECONDS\n");
        return 2;
    }
    int port = atoi(argv[1]), nconn = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (nconn < 1 || size < 1 || size > 65536 || seconds <= 0) {
        fprintf(stderr, "echo_load: bad arguments\n");
        return 2;
    }
    int *got = calloc(nconn, sizeof *got);
    char *msg = malloc(size), *buf = malloc(65536);
    memset(msg, 'x', size);
    int ep = epoll_create1(0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((unsigned long long)i << 32) | fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        if (send(fd, msg, size, 0) != size) die("send");
    }
    long long count = 0;
    double start = now(), counting_from = start + 1.0, end = counting_from + seconds, cpu0 = 0;
    int counting = 0;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!counting && t >= counting_from) {
            counting = 1;
            count = 0;
            cpu0 = cpu();
        }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            int fd = (int)(events[k].data.u64 & 0xffffffff), i = (int)(events[k].data.u64 >> 32);
            ssize_t r = recv(fd, buf, 65536, 0);
            if (r <= 0) {
                errno = r ? errno : ECONNRESET;
                die("recv");
            }
            got[i] += r;
            while (got[i] >= size) {  /* one whole echo back: count it, send the next */
                got[i] -= size;
                count++;
                if (send(fd, msg, size, 0) != size) die("send");
            }
        }
    }
    printf("messages %lld seconds %.3f cpu %.3f\n", count, now() - counting_from, cpu() - cpu0);
    return 0;
}
