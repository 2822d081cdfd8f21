/* LD_PRELOAD shim for the load generator (perfdhcp), never for a server under test: every
 * UDP socket it binds gets a 16 MB receive buffer (SO_RCVBUFFORCE; root), so that on a small,
 * shared machine the replies it is measuring are not dropped by its own socket while it waits
 * for a CPU. Built by bench/run.sh with `cc -shared -fPIC -O2 -o rcvbuf.so rcvbuf.c -ldl`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    int type = 0, size = 16 << 20;
    socklen_t tlen = sizeof type;
    if (!real_bind)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_DGRAM)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    return real_bind(fd, addr, len);
}
