/* libvald_bind: bind Ray's wildcard listeners to one address (vald.cluster.bind).
 *
 * Ray 2.60's GCS, raylets and core workers listen on every interface ("0.0.0.0" / "[::]") and have no
 * setting for it.  Loaded with LD_PRELOAD, this library moves a wildcard listener to VALD_BIND_ADDRESS
 * (an IPv6 one to its IPv4-mapped form ::ffff:a.b.c.d, which a dual-stack socket accepts):
 *   - bind() to a wildcard with a port becomes a bind to the address with that port;
 *   - a socket bound to a wildcard with port 0 is left as it is until listen(): a client's bind before
 *     connect() keeps the source address the kernel picks.  At listen() it is replaced (same descriptor,
 *     options and port) by one bound to the address.
 * Every other bind is passed on unchanged.  A VALD_BIND_ADDRESS that is not an IPv4 literal fails those
 * binds and listens (EADDRNOTAVAIL) instead of opening them on every interface.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);

static bind_fn next_bind(void) {
    static bind_fn next;
    if (next == NULL) next = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return next;
}

/* 1: addr is a wildcard; out = the same port on VALD_BIND_ADDRESS.  0: not a wildcard (or no address set).
 * -1: a wildcard, but VALD_BIND_ADDRESS is not an IPv4 literal. */
static int moved(const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out, socklen_t *out_len) {
    const char *want = getenv("VALD_BIND_ADDRESS");
    if (want == NULL || *want == '\0' || addr == NULL) return 0;
    struct in_addr v4;
    int valid = inet_pton(AF_INET, want, &v4) == 1;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if (a.sin_addr.s_addr != htonl(INADDR_ANY)) return 0;
        if (!valid) return -1;
        a.sin_addr = v4;
        memcpy(out, &a, sizeof a);
        *out_len = sizeof a;
        return 1;
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (!IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) return 0;
        if (!valid) return -1;
        memset(&a.sin6_addr, 0, sizeof a.sin6_addr);
        a.sin6_addr.s6_addr[10] = 0xff;
        a.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&a.sin6_addr.s6_addr[12], &v4, sizeof v4);
        memcpy(out, &a, sizeof a);
        *out_len = sizeof a;
        return 1;
    }
    return 0;
}

static int port_of(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)addr)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    struct sockaddr_storage to;
    socklen_t to_len = 0;
    int m = moved(addr, len, &to, &to_len);
    if (m == 0 || port_of(addr) == 0) return next_bind()(fd, addr, len); /* port 0: decided at listen() */
    if (m < 0) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    return next_bind()(fd, (const struct sockaddr *)&to, to_len);
}

static const struct {
    int level, name;
} kept[] = {
    {SOL_SOCKET, SO_REUSEADDR}, {SOL_SOCKET, SO_REUSEPORT}, {SOL_SOCKET, SO_KEEPALIVE},
    {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_IPV6, IPV6_V6ONLY},
};

int listen(int fd, int backlog) {
    static listen_fn next;
    if (next == NULL) next = (listen_fn)dlsym(RTLD_NEXT, "listen");
    struct sockaddr_storage now, to;
    socklen_t now_len = sizeof now, to_len = 0;
    if (getsockname(fd, (struct sockaddr *)&now, &now_len) != 0) return next(fd, backlog);
    int m = moved((const struct sockaddr *)&now, now_len, &to, &to_len);
    if (m == 0) return next(fd, backlog);
    if (m < 0) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    int type = 0, protocol = 0;
    socklen_t n = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) != 0) return -1;
    n = sizeof protocol;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &n) != 0) return -1;
    int fresh = socket(now.ss_family, type, protocol);
    if (fresh < 0) return -1;
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        int value = 0;
        n = sizeof value;
        if (getsockopt(fd, kept[i].level, kept[i].name, &value, &n) == 0)
            setsockopt(fresh, kept[i].level, kept[i].name, &value, sizeof value);
    }
    int status = fcntl(fd, F_GETFL), descriptor = fcntl(fd, F_GETFD);
    if (dup2(fresh, fd) < 0) { /* the old socket is closed by dup2: its port is free for the new one */
        int e = errno;
        close(fresh);
        errno = e;
        return -1;
    }
    close(fresh);
    if (status >= 0) fcntl(fd, F_SETFL, status);
    if (descriptor >= 0) fcntl(fd, F_SETFD, descriptor);
    if (next_bind()(fd, (const struct sockaddr *)&to, to_len) != 0) return -1;
    return next(fd, backlog);
}
