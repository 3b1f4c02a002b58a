/* A counting sink for the legacy binary protocol, in C: the same behaviour and JSON events as binsink.py.
 *
 * Why a second one: under 1 % invalid tokens every rejection ends a connection, and the Python sink (a
 * thread and a blocking handshake per connection, all behind one GIL) spent ~1.1 ms of CPU per connection
 * on the two cores it shares with the daemon and Redis, so the figure measured the sink. This one runs
 * every connection in one epoll loop with non-blocking handshakes and sessions resumed from its own cache.
 *
 * Behaviour (as binsink.py): demand a client certificate from the CA (unless --no-client-cert); count
 * command-2 frames by walking their 5-byte headers; a frame whose command is not 2 is the sentinel,
 * answered with an error response (8, 128, id 0) and a close; with --fail-prefix HEX a frame whose token
 * (item 1, written first) starts with HEX is answered with status 8 naming its identifier, then the
 * socket is closed at once, unread data and all, as Apple's gateway did.
 * Events, one JSON line each on stdout: listening, connected, closed, and summary on SIGTERM/SIGINT.
 *
 *   gcc -O2 -o benchmarks/build/binsink benchmarks/binsink.c -lssl -lcrypto
 *   binsink --port P --cert F --key F --ca F [--no-client-cert] [--fail-prefix HEX]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (1 << 20)
#define CARRY_MAX (64 * 1024) /* a frame larger than this is counted, never checked for a bad token */
#define MAX_PREFIX 32

enum { HANDSHAKE, RUNNING };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    long number;
    uint64_t frames, bytes, skip;
    double t_first, t_last;
    unsigned char carry[CARRY_MAX];
    size_t carry_len;
} conn_t;

static unsigned char prefix[MAX_PREFIX];
static size_t prefix_len;
static unsigned char rbuf[READ_SIZE];
static unsigned char work[CARRY_MAX + READ_SIZE];
static struct { long connections; uint64_t frames, bytes, sentinels, rejected; } totals;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void emit(const char *line) {
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static void die(const char *what) {
    fprintf(stderr, "binsink: %s: ", what);
    ERR_print_errors_fp(stderr);
    if (errno) perror("");
    exit(1);
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The identifier item (3) of one whole command-2 frame of `size` bytes (0 if it has none). */
static uint32_t identifier(const unsigned char *f, size_t size) {
    size_t p = 5;
    while (p + 3 <= size) {
        unsigned item = f[p];
        size_t len = ((size_t)f[p + 1] << 8) | f[p + 2];
        if (item == 3 && len == 4 && p + 7 <= size) return be32(f + p + 3);
        p += 3 + len;
    }
    return 0;
}

static void finish(conn_t *c, int sentinel, int rejected) {
    char line[512];
    close(c->fd); /* at once: no close_notify, unread bytes reset the connection as Apple's gateway did */
    /* Marked as shut down (nothing is sent) so that OpenSSL keeps its session resumable. */
    SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c->ssl);
    ERR_clear_error(); /* a reset connection leaves entries that would pile up over thousands of them */
    totals.frames += c->frames;
    totals.bytes += c->bytes;
    totals.sentinels += (uint64_t)sentinel;
    totals.rejected += (uint64_t)rejected;
    snprintf(line, sizeof line,
             "{\"event\": \"closed\", \"conn\": %ld, \"frames\": %llu, \"bytes\": %llu, \"t_first\": %.9f, "
             "\"t_last\": %.9f, \"sentinel\": %s, \"rejected\": %d}",
             c->number, (unsigned long long)c->frames, (unsigned long long)c->bytes, c->t_first, c->t_last,
             sentinel ? "true" : "false", rejected);
    emit(line);
    free(c);
}

/* Write a 6-byte error response; the socket is fresh and empty on our side, so it goes in one write. */
static void answer(conn_t *c, unsigned status, uint32_t id) {
    unsigned char r[6] = {8, (unsigned char)status, id >> 24, id >> 16, id >> 8, id};
    for (int tries = 0; tries < 1000; tries++) {
        int n = SSL_write(c->ssl, r, sizeof r);
        if (n > 0) return;
        int e = SSL_get_error(c->ssl, n);
        if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) return;
        usleep(100);
    }
}

/* Walk the frames of `data` (len bytes); returns 1 if the connection is to be closed (sentinel/rejection). */
static int consume(conn_t *c, const unsigned char *data, size_t len) {
    size_t p = 0;
    while (p + 5 <= len) {
        if (data[p] != 2) {
            answer(c, 128, 0);
            finish(c, 1, 0);
            return 1;
        }
        size_t size = 5 + (size_t)be32(data + p + 1);
        if (prefix_len && size <= CARRY_MAX) {
            if (p + size > len) break; /* checked once it is whole: carried over to the next read */
            if (data[p + 5] == 1 && size >= 8 + prefix_len && memcmp(data + p + 8, prefix, prefix_len) == 0) {
                answer(c, 8, identifier(data + p, size));
                finish(c, 0, 1);
                return 1;
            }
        }
        p += size;
        c->frames++;
    }
    if (p > len) {
        c->skip = p - len;
        c->carry_len = 0;
    } else {
        c->skip = 0;
        c->carry_len = len - p;
        memcpy(c->carry, data + p, c->carry_len);
    }
    return 0;
}

/* Read all that is readable; returns 1 if the connection ended. */
static int on_readable(conn_t *c) {
    for (;;) {
        size_t n = 0;
        if (!SSL_read_ex(c->ssl, rbuf, sizeof rbuf, &n)) {
            int e = SSL_get_error(c->ssl, 0);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
            finish(c, 0, 0); /* peer closed, or the connection failed */
            return 1;
        }
        c->t_last = now();
        if (c->t_first == 0) c->t_first = c->t_last;
        c->bytes += n;
        if (c->skip >= n) {
            c->skip -= n;
            continue;
        }
        const unsigned char *data = rbuf + c->skip;
        size_t len = n - c->skip;
        if (c->carry_len) {
            memcpy(work, c->carry, c->carry_len);
            memcpy(work + c->carry_len, data, len);
            data = work;
            len += c->carry_len;
        }
        c->skip = 0;
        if (consume(c, data, len)) return 1;
    }
}

static void on_event(int ep, conn_t *c) {
    if (c->state == HANDSHAKE) {
        int r = SSL_accept(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                struct epoll_event ev = {.events = e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return;
            }
            ERR_clear_error();
            finish(c, 0, 0);
            return;
        }
        char line[160];
        snprintf(line, sizeof line, "{\"event\": \"connected\", \"conn\": %ld, \"t\": %.9f, \"resumed\": %s}",
                 c->number, now(), SSL_session_reused(c->ssl) ? "true" : "false");
        emit(line);
        c->state = RUNNING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    on_readable(c);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static void usage(void) {
    fprintf(stderr, "usage: binsink --port P --cert F --key F --ca F [--no-client-cert] [--fail-prefix HEX]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int port = 0, client_cert = 1;
    const char *cert = NULL, *key = NULL, *ca = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-client-cert")) client_cert = 0;
        else if (!v) usage();
        else if (!strcmp(a, "--port")) port = atoi(v), i++;
        else if (!strcmp(a, "--cert")) cert = v, i++;
        else if (!strcmp(a, "--key")) key = v, i++;
        else if (!strcmp(a, "--ca")) ca = v, i++;
        else if (!strcmp(a, "--fail-prefix")) {
            size_t h = strlen(v);
            if (h % 2 || h / 2 > MAX_PREFIX) usage();
            for (size_t k = 0; k < h / 2; k++) {
                int hi = hexval(v[2 * k]), lo = hexval(v[2 * k + 1]);
                if (hi < 0 || lo < 0) usage();
                prefix[k] = (unsigned char)(hi << 4 | lo);
            }
            prefix_len = h / 2;
            i++;
        } else usage();
    }
    if (!cert || !key || (client_cert && !ca)) usage();

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("certificate");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("key");
    if (client_cert) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) die("client CA");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    /* Resumption with client verification needs a session id context (OpenSSL refuses it otherwise). Sessions
     * stay in this process's cache and TLS 1.3 tickets only name them (stateful tickets): OpenSSL 3.0 spends
     * most of a resumed handshake decoding the client certificate inside a stateless ticket. A peer that
     * closes without close_notify is an ordinary end, not an error that would evict its session. */
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"binsink", 7);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024);

    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 512)) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &sfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

    char line[256];
    snprintf(line, sizeof line, "{\"event\": \"listening\", \"port\": %d, \"pid\": %d}", ntohs(addr.sin_port),
             (int)getpid());
    emit(line);

    int running = 1, rcvbuf = 4 << 20;
    struct epoll_event events[64];
    while (running) {
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &sfd) {
                running = 0;
            } else if (tag == &lfd) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
                    /* An error response must leave before the close that follows it (see binsink.py). */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *c = calloc(1, sizeof *c);
                    if (!c) die("calloc");
                    c->fd = fd;
                    c->number = ++totals.connections;
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, fd);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    on_event(ep, c);
                }
            } else {
                on_event(ep, (conn_t *)tag);
            }
        }
    }
    snprintf(line, sizeof line,
             "{\"event\": \"summary\", \"connections\": %ld, \"frames\": %llu, \"bytes\": %llu, \"sentinels\": %llu, "
             "\"rejected\": %llu}",
             totals.connections, (unsigned long long)totals.frames, (unsigned long long)totals.bytes,
             (unsigned long long)totals.sentinels, (unsigned long long)totals.rejected);
    emit(line);
    return 0;
}
