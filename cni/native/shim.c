/*
 * railnet CNI shim, native build: forwards one CNI call to the railnet node agent over its unix
 * socket and prints the answer. It does what cni/shim.py does, byte for byte, in a fraction of
 * the start-up time (no interpreter); tests/unit/test_shim_parity.py holds the two to that.
 * Wire format: see cni/spec/wire.py.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define NSUPPORTED (sizeof SUPPORTED / sizeof SUPPORTED[0])
static const double RETRY_DELAYS[] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8};
#define NDELAYS (sizeof RETRY_DELAYS / sizeof RETRY_DELAYS[0])
#define DEFAULT_SOCKET "/run/railnet/agent.sock"
#define SOCKET_DIR "/run/railnet/" /* the config key agentSocket may only point below this */
#define DEFAULT_TIMEOUT 120.0      /* seconds for the whole call; RAILNET_AGENT_TIMEOUT overrides */
#define MAX_TIMEOUT 86400.0
#define HINT "; is the railnet-agent DaemonSet running on this node?"

struct str {
    const char *p; /* NUL-terminated; may hold NULs before n (decoded \u0000) */
    size_t n;
};

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
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

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

/* ---- the top-level JSON scanner (as shim.py top_level) ---- */

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static long hex4(const char *raw, size_t n, size_t i) {
    long v = 0;
    if (i + 4 > n) return -1;
    for (size_t k = i; k < i + 4; k++) {
        char c = raw[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A JSON string's content as UTF-8 into out (room for n + 1); lone surrogates become U+FFFD. */
static int unescape(const char *raw, size_t n, char *out, size_t *outn) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (raw[i] != '\\') {
            out[o++] = raw[i++];
            continue;
        }
        if (i + 1 >= n) return -1;
        const char *m = raw[i + 1] ? strchr(from, raw[i + 1]) : NULL;
        if (m) {
            out[o++] = to[m - from];
            i += 2;
            continue;
        }
        if (raw[i + 1] != 'u') return -1;
        long cp = hex4(raw, n, i + 2);
        if (cp < 0) return -1;
        i += 6;
        if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < n && raw[i] == '\\' && raw[i + 1] == 'u') {
            long low = hex4(raw, n, i + 2);
            if (low < 0) return -1;
            if (low >= 0xDC00 && low < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                i += 6;
            }
        }
        if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[o] = 0;
    *outn = o;
    return 0;
}

/*
 * The string values of keys[] at the top level of the JSON object in c; nested keys are never
 * read. The last occurrence wins, a non-string value unsets; a config that is not one closed
 * object, or with a bad escape in a top-level key or wanted value, yields nothing. Decoded values
 * go to arena (room for n + 2). Returns 1 when the object closed, else 0 with all values unset.
 */
static int top_level(const char *c, size_t n, const char *const *keys, struct str *values, int nkeys,
                     char *arena) {
    enum { KEY, COLON, VALUE, OTHER } state = KEY;
    int depth = 1, key = -1;
    size_t used = 0, i = 0, len;
    while (i < n && is_ws(c[i])) i++;
    if (i == n || c[i] != '{') goto none;
    for (i++; i < n; i++) {
        char ch = c[i];
        if (ch == '"') {
            size_t j = i + 1;
            while (j < n && c[j] != '"') j += c[j] == '\\' ? 2 : 1;
            if (j >= n) goto none;
            if (depth == 1 && state == KEY) {
                if (unescape(c + i + 1, j - i - 1, arena + used, &len) < 0) goto none;
                key = -1;
                for (int k = 0; k < nkeys; k++)
                    if (len == strlen(keys[k]) && memcmp(arena + used, keys[k], len) == 0) key = k;
                state = COLON;
            } else if (depth == 1 && state == VALUE) {
                if (key >= 0) {
                    if (unescape(c + i + 1, j - i - 1, arena + used, &len) < 0) goto none;
                    values[key] = (struct str){arena + used, len};
                    used += len + 1;
                }
                state = OTHER;
            } else if (depth == 1) {
                state = OTHER;
            }
            i = j;
            continue;
        }
        if (depth == 1 && !is_ws(ch)) {
            if (ch == ':' && state == COLON) {
                state = VALUE;
            } else if (ch == ',') {
                state = KEY;
            } else {
                if (state == VALUE && key >= 0) values[key].p = NULL;
                state = OTHER;
            }
        }
        if (ch == '{' || ch == '[') depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0) return 1;
    }
none:
    for (int k = 0; k < nkeys; k++) values[k].p = NULL;
    return 0;
}

/* ---- the answer ---- */

static int supported(struct str v) {
    for (size_t i = 0; i < NSUPPORTED; i++)
        if (v.p && v.n == strlen(SUPPORTED[i]) && memcmp(v.p, SUPPORTED[i], v.n) == 0) return 1;
    return 0;
}

static void escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

static int fail(const char *version, int code, const struct buf *msg, const char *details) {
    printf("{\"cniVersion\":\"");
    escaped(version, strlen(version));
    printf("\",\"code\":%d,\"msg\":\"", code);
    escaped(msg->p, msg->n);
    printf("\",\"details\":\"");
    escaped(details, strlen(details));
    printf("\"}");
    return 1;
}

static int answer_version(const char *version, struct str asked) {
    if (asked.p && !supported(asked)) {
        struct buf msg = {0}, details = {0};
        puts_(&msg, "unsupported cniVersion \"");
        put(&msg, asked.p, asked.n);
        puts_(&msg, "\"");
        puts_(&details, "railnet supports ");
        for (size_t i = 0; i < NSUPPORTED; i++) {
            if (i) puts_(&details, ", ");
            puts_(&details, SUPPORTED[i]);
        }
        return fail("1.1.0", 1, &msg, details.p);
    }
    printf("{\"cniVersion\":\"%s\",\"supportedVersions\":[", version);
    for (size_t i = 0; i < NSUPPORTED; i++) printf("%s\"%s\"", i ? "," : "", SUPPORTED[i]);
    printf("]}");
    return 0;
}

/* ---- the call ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* RAILNET_AGENT_TIMEOUT in seconds (digits with at most one point, > 0); else the default. */
static double agent_timeout(void) {
    const char *raw = getenv("RAILNET_AGENT_TIMEOUT");
    int digits = 0, points = 0;
    for (const char *s = raw ? raw : ""; *s; s++) {
        if (*s == '.') points++;
        else if (*s >= '0' && *s <= '9') digits++;
        else return DEFAULT_TIMEOUT;
    }
    if (!digits || points > 1) return DEFAULT_TIMEOUT;
    double seconds = strtod(raw, NULL);
    return seconds > 0 && seconds <= MAX_TIMEOUT ? seconds : DEFAULT_TIMEOUT;
}

/* Waits until fd is ready for events; 0, or ETIMEDOUT past the deadline. */
static int wait_for(int fd, short events, double deadline) {
    for (;;) {
        double left = deadline - now();
        if (left <= 0) return ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return errno;
    }
}

static int exchange(int fd, const struct buf *request, struct buf *reply, double deadline) {
    if (deadline - now() <= 0) return ETIMEDOUT;
    for (size_t sent = 0; sent < request->n;) {
        int err = wait_for(fd, POLLOUT, deadline);
        if (err) return err;
        ssize_t n = send(fd, request->p + sent, request->n - sent, MSG_NOSIGNAL);
        if (n > 0) sent += (size_t)n;
        else if (n < 0 && errno != EINTR && errno != EAGAIN) return errno;
    }
    shutdown(fd, SHUT_WR);
    char chunk[65536];
    for (;;) {
        int err = wait_for(fd, POLLIN, deadline);
        if (err) return err;
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n == 0) return 0;
        if (n > 0) put(reply, chunk, (size_t)n);
        else if (errno != EINTR && errno != EAGAIN) return errno;
    }
}

/* Returns 0 with the reply in *reply, or an errno value. */
static int call_agent(const char *path, const struct buf *request, struct buf *reply, double deadline) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, strlen(path)); /* the caller checked it fits */
    /* non-blocking: a full accept queue answers EAGAIN instead of blocking */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno;
    int err = 0;
    for (size_t i = 0; connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0; i++) {
        double left = deadline - now();
        err = errno;
        if (err != EAGAIN || i == NDELAYS || left <= 0) break;
        double delay = RETRY_DELAYS[i] < left ? RETRY_DELAYS[i] : left;
        struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) continue;
        err = 0;
    }
    if (!err) err = exchange(fd, request, reply, deadline);
    close(fd);
    return err;
}

int main(int argc, char **argv) {
    struct buf config = {0}, request = {0}, reply = {0}, msg = {0}, details = {0};
    if (read_all(0, &config) < 0) config.n = 0;
    put(&config, "", 0);
    static const char *const keys[] = {"cniVersion", "agentSocket"};
    struct str fields[2] = {{0}};
    char *arena = malloc(config.n + 2);
    if (!arena) return 1;
    top_level(config.p, config.n, keys, fields, 2, arena);
    struct str asked = fields[0], sock = fields[1];
    const char *version = supported(asked) ? asked.p : "1.1.0";

    const char *path = getenv("RAILNET_AGENT_SOCKET");
    if (!path || !*path) {
        int ok = sock.p && sock.n > strlen(SOCKET_DIR) && strncmp(sock.p, SOCKET_DIR, strlen(SOCKET_DIR)) == 0 &&
                 !memchr(sock.p, 0, sock.n);
        for (const char *s = sock.p; ok && (s = strstr(s, "/..")); s += 3)
            if (s[3] == '/' || s[3] == 0) ok = 0; /* a ".." component */
        path = ok ? sock.p : DEFAULT_SOCKET;
    }

    const char *name = argc > 0 ? argv[0] : "", *slash = strrchr(name, '/');
    puts_(&request, "RAILNET1 ");
    puts_(&request, slash ? slash + 1 : name);
    puts_(&request, "\n");
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0) put(&request, *e, strlen(*e) + 1); /* with its NUL */
    put(&request, "", 1);
    put(&request, config.p, config.n);

    struct sockaddr_un addr;
    if (strlen(path) >= sizeof addr.sun_path) {
        char text[64];
        snprintf(text, sizeof text, "the socket path is longer than %zu bytes", sizeof addr.sun_path - 1);
        puts_(&details, text);
    } else {
        int err = call_agent(path, &request, &reply, now() + agent_timeout());
        if (err) {
            puts_(&details, strerror(err));
            puts_(&details, HINT);
        }
    }
    char *newline = details.n ? NULL : memchr(reply.p ? reply.p : "", '\n', reply.n);
    size_t head = newline ? (size_t)(newline - reply.p) : 0;
    int code = head >= 1 && head <= 3 ? 0 : -1;
    for (size_t i = 0; code >= 0 && i < head; i++)
        code = reply.p[i] >= '0' && reply.p[i] <= '9' ? code * 10 + reply.p[i] - '0' : -1;
    if (code >= 0 && code <= 255) {
        fwrite(newline + 1, 1, reply.n - head - 1, stdout);
        return code;
    }
    const char *command = getenv("CNI_COMMAND");
    if (command && strcmp(command, "VERSION") == 0) return answer_version(version, asked);
    puts_(&msg, details.n ? "railnet agent is not reachable at " : "malformed reply from the railnet agent at ");
    puts_(&msg, path);
    return fail(version, 11, &msg, details.n ? details.p : "the reply does not start with an exit code line (0-255)");
}
