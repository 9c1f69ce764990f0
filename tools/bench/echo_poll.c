/* The echo benchmark's second load generator, built differently from echo_load.c so that
 * the two can check each other: a figure both agree on is the server's, not the tool's.
 *
 *   echo_poll PORT CONNECTIONS MESSAGE_BYTES SECONDS
 *
 * Same load as echo_load (CONNECTIONS to 127.0.0.1:PORT, one message in flight on each: send,
 * wait for the whole echo, send the next), same output line ("messages N seconds S cpu C"),
 * but a different program:
 *   - poll(2) over an array of every connection, rescanned on each turn, instead of epoll;
 *   - non-blocking sockets, read until the echo is whole or EAGAIN (instead of one recv per
 *     readiness event), each read asking only for what is missing of the echo;
 *   - every connection opens before any message leaves, instead of each sending at once;
 *   - every message differs (connection number, sequence number, a filler that depends on
 *     both) and each echo is compared byte for byte: a wrong echo ends the run with an error;
 *   - a partial send is finished when poll reports room, instead of being an error;
 *   - half a second of warm-up, and the window is timed from the first poll after it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    uint64_t seq;      /* number of the message in flight */
    int sent, got;     /* bytes of it sent, bytes of its echo received */
    char *out, *in;    /* the message, and where its echo is collected */
};

static double clock_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_used(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
           + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* One line on stderr and exit status 2; errno is named when it is set (0: not a system call). */
static void fail(const char *what, int conn_number) {
    int e = errno;
    fprintf(stderr, "echo_poll: ");
    if (conn_number >= 0) fprintf(stderr, "connection %d: ", conn_number);
    fprintf(stderr, "%s%s%s\n", what, e ? ": " : "", e ? strerror(e) : "");
    exit(2);
}

/* The content of message `seq` on connection `i`: its numbers first, then a filler that
 * depends on both, so an echo sent to the wrong connection or out of order cannot match. */
static void fill(char *msg, int size, int i, uint64_t seq) {
    char head[32];
    int n = snprintf(head, sizeof head, "%d:%llu:", i, (unsigned long long)seq);
    for (int k = 0; k < size; k++)
        msg[k] = k < n ? head[k] : (char)('a' + (k + i + seq) % 26);
}

/* Send what is left of the message in flight; 0 when it has all left. */
static int push(struct pollfd *p, struct conn *c, int size, int i) {
    while (c->sent < size) {
        ssize_t w = send(p->fd, c->out + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail("send", i);
        c->sent += (int)w;
    }
    p->events = c->sent < size ? POLLIN | POLLOUT : POLLIN;
    return size - c->sent;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: echo_poll PORT CONNECTIONS MESSAGE_BYTES SECONDS\n");
        return 2;
    }
    int port = atoi(argv[1]), nconn = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (port < 1 || port > 65535 || nconn < 1 || nconn > 10000 || size < 24 || size > 65536
        || !(seconds > 0 && seconds < 3600)) {
        fprintf(stderr, "echo_poll: bad arguments (MESSAGE_BYTES: 24 to 65536)\n");
        return 2;
    }
    struct pollfd *fds = calloc(nconn, sizeof *fds);
    struct conn *conns = calloc(nconn, sizeof *conns);
    char *expected = malloc(size);
    if (!fds || !conns || !expected) fail("out of memory", -1);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0) fail("socket", i);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) fail("connect", i);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fds[i].fd = fd;
        conns[i].out = malloc(size);
        conns[i].in = malloc(size);
        if (!conns[i].out || !conns[i].in) fail("out of memory", -1);
        fill(conns[i].out, size, i, 0);
    }
    for (int i = 0; i < nconn; i++) push(&fds[i], &conns[i], size, i);

    double warm_until = clock_now() + 0.5, t0 = 0, t_end = 0, cpu0 = 0;
    long long done = 0;
    int measuring = 0;
    for (;;) {
        int n = poll(fds, nconn, 100);
        if (n < 0 && errno != EINTR) fail("poll", -1);
        double t = clock_now();
        if (!measuring && t >= warm_until) {
            measuring = 1;
            done = 0;
            t0 = t;
            t_end = t + seconds;
            cpu0 = cpu_used();
        }
        if (measuring && t >= t_end) break;
        for (int i = 0; i < nconn && n > 0; i++) {
            struct pollfd *p = &fds[i];
            if (!p->revents) continue;
            n--;
            struct conn *c = &conns[i];
            if (p->revents & POLLOUT) push(p, c, size, i);
            if (!(p->revents & (POLLIN | POLLERR | POLLHUP))) continue;
            for (;;) {  /* until the echo is whole or EAGAIN: it may come in pieces */
                ssize_t r = recv(p->fd, c->in + c->got, size - c->got, 0);
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (r < 0 && errno == EINTR) continue;
                if (r == 0) {
                    errno = 0;
                    fail("the server closed the connection", i);
                }
                if (r < 0) fail("recv", i);
                c->got += (int)r;
                if (c->got < size) continue;
                if (c->sent < size) {  /* an echo of bytes not yet sent */
                    errno = 0;
                    fail("more bytes came back than were sent", i);
                }
                fill(expected, size, i, c->seq);
                if (memcmp(expected, c->in, size) != 0) {
                    errno = 0;
                    fail("the echo differs from the message sent", i);
                }
                done++;
                c->seq++;
                c->got = c->sent = 0;
                fill(c->out, size, i, c->seq);
                push(p, c, size, i);
                break;  /* nothing more can come before the server has read the new message */
            }
        }
    }
    double elapsed = clock_now() - t0;
    printf("messages %lld seconds %.3f cpu %.3f\n", done, elapsed, cpu_used() - cpu0);
    return 0;
}
