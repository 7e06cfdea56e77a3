/*
 * railnet CNI shim, native build: forwards one CNI call to the railnet node agent over its unix
 * socket and prints the answer. It does what cni/shim.py does, byte for byte, in a fraction of
 * the start-up time (no interpreter). Wire format: see cni/spec/wire.py.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define NSUPPORTED (sizeof(SUPPORTED) / sizeof(SUPPORTED[0]))
static const double RETRY_DELAYS[] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8};

struct buf {
    char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) {
            perror("railnet shim");
            exit(1);
        }
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
}

static int read_all(int fd, struct buf *b) {
    char chunk[65536];
    for (;;) {
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got == 0) return 0;
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        put(b, chunk, (size_t)got);
    }
}

/* The string value of `"key": "value"` in the config, without a JSON parser (as shim.py). */
static int string_field(const struct buf *config, const char *key, char *out, size_t outsz) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\"", key);
    const char *at = config->p ? memmem(config->p, config->n, needle, strlen(needle)) : NULL;
    if (!at) return 0;
    const char *end = config->p + config->n, *i = at + strlen(needle);
    while (i < end && strchr(" \t\r\n:", *i) && *i) i++;
    if (i >= end || *i != '"') return 0;
    size_t n = 0;
    for (i++; i < end && *i != '"'; i++) {
        if (*i == '\\' && i + 1 < end) i++;
        if (n + 1 < outsz) out[n++] = *i;
    }
    out[n] = 0;
    return 1;
}

static int supported(const char *version) {
    for (size_t i = 0; i < NSUPPORTED; i++)
        if (strcmp(version, SUPPORTED[i]) == 0) return 1;
    return 0;
}

static void escaped(const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

static int fail(const char *version, int code, const char *msg, const char *details) {
    printf("{\"cniVersion\":\"");
    escaped(version);
    printf("\",\"code\":%d,\"msg\":\"", code);
    escaped(msg);
    printf("\",\"details\":\"");
    escaped(details);
    printf("\"}");
    return 1;
}

static int answer_version(const char *version, int has_asked, const char *asked) {
    if (has_asked && !supported(asked)) {
        char msg[128];
        snprintf(msg, sizeof msg, "unsupported cniVersion \"%s\"", asked);
        return fail("1.1.0", 1, msg, "railnet supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0");
    }
    printf("{\"cniVersion\":\"%s\",\"supportedVersions\":[", version);
    for (size_t i = 0; i < NSUPPORTED; i++) printf("%s\"%s\"", i ? "," : "", SUPPORTED[i]);
    printf("]}");
    return 0;
}

/* Returns 0 with the reply in *reply, or an errno value. */
static int call_agent(const char *path, const struct buf *request, struct buf *reply) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) return ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    const char *timeout_env = getenv("RAILNET_AGENT_TIMEOUT");
    struct timeval tv = {.tv_sec = timeout_env && *timeout_env ? atoi(timeout_env) : 120};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = -1;
    for (size_t i = 0; i <= sizeof RETRY_DELAYS / sizeof RETRY_DELAYS[0]; i++) {
        rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
        if (rc == 0 || errno != EAGAIN || i == sizeof RETRY_DELAYS / sizeof RETRY_DELAYS[0]) break;
        struct timespec ts = {0, (long)(RETRY_DELAYS[i] * 1e9)};
        nanosleep(&ts, NULL);
    }
    int err = 0;
    if (rc != 0) {
        err = errno;
    } else {
        for (size_t sent = 0; sent < request->n && !err;) {
            ssize_t n = send(fd, request->p + sent, request->n - sent, MSG_NOSIGNAL);
            if (n < 0 && errno != EINTR) err = errno;
            if (n > 0) sent += (size_t)n;
        }
        if (!err) shutdown(fd, SHUT_WR);
        if (!err && read_all(fd, reply) < 0) err = errno == EAGAIN ? ETIMEDOUT : errno;
    }
    close(fd);
    return err;
}

int main(int argc, char **argv) {
    (void)argc;
    struct buf config = {0}, request = {0}, reply = {0};
    if (read_all(0, &config) < 0) config.n = 0;
    char asked[64] = "", version[64] = "1.1.0", path[256];
    int has_asked = string_field(&config, "cniVersion", asked, sizeof asked);
    if (has_asked && supported(asked)) strcpy(version, asked);
    const char *env_path = getenv("RAILNET_AGENT_SOCKET");
    if (env_path && *env_path)
        snprintf(path, sizeof path, "%s", env_path);
    else if (!string_field(&config, "agentSocket", path, sizeof path) || !*path)
        strcpy(path, "/run/railnet/agent.sock");

    const char *slash = strrchr(argv[0], '/');
    put(&request, "RAILNET1 ", 9);
    put(&request, slash ? slash + 1 : argv[0], strlen(slash ? slash + 1 : argv[0]));
    put(&request, "\n", 1);
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0) put(&request, *e, strlen(*e) + 1); /* with its NUL */
    put(&request, "", 1);
    if (config.n) put(&request, config.p, config.n);

    int err = call_agent(path, &request, &reply);
    char *newline = err ? NULL : memchr(reply.p ? reply.p : "", '\n', reply.n);
    if (!newline) {
        const char *command = getenv("CNI_COMMAND");
        if (command && strcmp(command, "VERSION") == 0) return answer_version(version, has_asked, asked);
        char msg[400], details[400];
        snprintf(msg, sizeof msg, "railnet agent is not reachable at %s", path);
        snprintf(details, sizeof details, "%s; is the railnet-agent DaemonSet running on this node?",
                 err ? strerror(err) : "malformed reply");
        return fail(version, 11, msg, details);
    }
    *newline = 0;
    fwrite(newline + 1, 1, reply.n - (size_t)(newline + 1 - reply.p), stdout);
    return atoi(reply.p);
}
