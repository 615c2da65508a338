/*
 * rtpgen: paced RTP sender and counting sink for bench/media.py.
 *
 *   rtpgen send -a SRC_ADDR -r PPS -d SECONDS [-b BATCH] [-w MS] < streams
 *       streams: one "SRC_PORT DST_ADDR DST_PORT" line per stream.  Valid RTP
 *       (12-byte header, 160-byte PCMU payload, seq/timestamp incrementing per
 *       stream, SSRC per stream) from SRC_ADDR:SRC_PORT, written with its UDP/IP
 *       header to one raw socket; each stream in turn sends a burst of at most
 *       20 ms of its packets (at most BATCH, 32), paced to PPS packets/s in all,
 *       in sendmmsg calls of up to BATCH packets about every 0.1 ms.
 *       With -w, one packet per stream first, then a pause of MS milliseconds
 *       (ARP, endpoint learning) before the paced part.  Prints
 *       "sent=N due=D preroll=P errors=E lagged=L seconds=T": N packets sent in the
 *       paced part, which lasted T seconds, when D were due by then.
 *
 *   rtpgen sink -a ADDR -p PORT -n STREAMS
 *       Binds one UDP socket (every stream's callee uses the same address and port,
 *       so the sink costs little per packet whatever the number of streams), counts
 *       what arrives with recvmmsg, per stream by SSRC, and prints "ready" once
 *       bound.  When its stdin closes (the sender is done) it waits until nothing
 *       has arrived for 200 ms (at most 5 s), or stops at SIGTERM/SIGINT, prints
 *       "received=N bad=B streams=S" (bad: not a 172-byte RTP packet of one of the
 *       streams; streams: how many streams got anything through) and exits.
 *
 * Python cannot out-run a relay; this can: the sender's per-packet cost is the
 * kernel's veth transmit, not the program.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 160
#define PACKET (12 + PAYLOAD)
#define HEAD (20 + 8) /* IPv4 + UDP headers, written by the sender itself */
#define MAX_BATCH 64
#define SINK_BUFFER (32 << 20)
#define SSRC_BASE 0x52420000u /* stream i sends SSRC_BASE + i */
#define QUIET_S 0.2

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double when) {
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static void raise_file_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int udp_socket(const char *addr, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "rtpgen: bad address %s\n", addr);
        exit(2);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "rtpgen: bind %s:%d: %s\n", addr, port, strerror(errno));
        exit(2);
    }
    return fd;
}

struct stream {
    struct sockaddr_in to;
    unsigned char head[HEAD]; /* IPv4 + UDP header, built once */
    uint16_t seq;
    uint32_t ts, ssrc;
};

static void build_stream(struct stream *s, int index, const char *src, int src_port,
                         const char *dst, int dst_port) {
    struct in_addr from;
    memset(s, 0, sizeof *s);
    s->to.sin_family = AF_INET;
    s->to.sin_port = htons(dst_port);
    if (inet_pton(AF_INET, src, &from) != 1 || inet_pton(AF_INET, dst, &s->to.sin_addr) != 1) {
        fprintf(stderr, "rtpgen: bad address %s or %s\n", src, dst);
        exit(2);
    }
    unsigned char *h = s->head;
    h[0] = 0x45;                                   /* IPv4, 20-byte header */
    h[2] = (HEAD + PACKET) >> 8, h[3] = (HEAD + PACKET) & 0xff;
    h[6] = 0x40;                                   /* DF; id and checksum: the kernel's */
    h[8] = 64, h[9] = IPPROTO_UDP;
    memcpy(h + 12, &from, 4);
    memcpy(h + 16, &s->to.sin_addr, 4);
    h[20] = src_port >> 8, h[21] = src_port & 0xff;
    h[22] = dst_port >> 8, h[23] = dst_port & 0xff;
    h[24] = (8 + PACKET) >> 8, h[25] = (8 + PACKET) & 0xff; /* UDP checksum 0: none */
    s->seq = (uint16_t)(index * 7919);
    s->ts = (uint32_t)index * 104729u;
    s->ssrc = SSRC_BASE + (uint32_t)index;
}

/* The next packet of stream s, IP header and all, into p. */
static void next_packet(unsigned char *p, struct stream *s) {
    memcpy(p, s->head, HEAD);
    unsigned char *r = p + HEAD;
    uint16_t seq = s->seq++;
    uint32_t ts = s->ts;
    s->ts += PAYLOAD;
    r[2] = seq >> 8, r[3] = seq & 0xff;
    r[4] = ts >> 24, r[5] = ts >> 16, r[6] = ts >> 8, r[7] = ts & 0xff;
    r[8] = s->ssrc >> 24, r[9] = s->ssrc >> 16, r[10] = s->ssrc >> 8, r[11] = s->ssrc & 0xff;
}

static unsigned char packets[MAX_BATCH][HEAD + PACKET];
static struct iovec iov[MAX_BATCH];
static struct mmsghdr msgs[MAX_BATCH];

/* Sends msgs[0..n); returns how many went out. */
static int send_batch(int fd, int n) {
    int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, n - done, 0);
        if (r <= 0)
            break;
        done += r;
    }
    return done;
}

static int send_main(const char *src, double rate, double seconds, int batch, int preroll_ms) {
    int capacity = 64, count = 0, src_port, dst_port;
    char dst[64];
    struct stream *streams = malloc(capacity * sizeof *streams);
    while (scanf("%d %63s %d", &src_port, dst, &dst_port) == 3) {
        if (count == capacity)
            streams = realloc(streams, (capacity *= 2) * sizeof *streams);
        build_stream(&streams[count], count, src, src_port, dst, dst_port);
        count++;
    }
    if (count == 0 || rate <= 0 || seconds <= 0) {
        fprintf(stderr, "rtpgen: nothing to send\n");
        return 2;
    }
    /* One raw socket writes every stream's packets (source port included), so one
     * sendmmsg carries packets of many streams; with a UDP socket per stream, 1,000
     * streams would cost a system call per packet and the sender could fall behind. */
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) {
        perror("rtpgen: raw socket (needs CAP_NET_RAW)");
        return 2;
    }
    /* back to back: at most 20 ms of one stream's packets, and at most BATCH */
    int burst = (int)(rate / count * 0.02);
    if (burst < 1)
        burst = 1;
    if (burst > batch)
        burst = batch;
    /* a system call every 0.1 ms or so: smooth arrivals at low rates, batches at high */
    int per_call = (int)(rate * 1e-4);
    if (per_call < 1)
        per_call = 1;
    if (per_call > batch)
        per_call = batch;

    for (int i = 0; i < MAX_BATCH; i++) {
        memset(packets[i] + HEAD, 0xff, PACKET); /* PCMU silence */
        packets[i][HEAD] = 0x80;                 /* RTP version 2, PT 0 */
        packets[i][HEAD + 1] = 0;
        iov[i].iov_base = packets[i];
        iov[i].iov_len = HEAD + PACKET;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    }

    unsigned long long sent = 0, errors = 0, lagged = 0, due_total = 0, preroll = 0;
    if (preroll_ms > 0) {
        for (int i = 0; i < count; i += MAX_BATCH) {
            int n = count - i < MAX_BATCH ? count - i : MAX_BATCH;
            for (int m = 0; m < n; m++) {
                next_packet(packets[m], &streams[i + m]);
                msgs[m].msg_hdr.msg_name = &streams[i + m].to;
            }
            int done = send_batch(fd, n);
            preroll += done;
            errors += n - done;
        }
        sleep_until(now() + preroll_ms / 1e3);
    }
    double start = now(), end = start + seconds, t;
    int next = 0, left = burst;
    while ((t = now()) < end && !stop) {
        unsigned long long due = (unsigned long long)((t - start) * rate);
        if (due_total + per_call > due) {
            sleep_until(start + (double)(due_total + per_call) / rate);
            continue;
        }
        if (due - due_total > rate * 0.05 + per_call) { /* fell behind: do not burst */
            lagged += due - due_total - per_call;
            due_total = due - per_call;
        }
        for (int m = 0; m < per_call; m++) {
            struct stream *s = &streams[next];
            next_packet(packets[m], s);
            msgs[m].msg_hdr.msg_name = &s->to;
            if (--left == 0)
                next = (next + 1) % count, left = burst;
        }
        due_total += per_call;
        int done = send_batch(fd, per_call);
        sent += done;
        errors += per_call - done;
    }
    double elapsed = now() - start;
    printf("sent=%llu due=%llu preroll=%llu errors=%llu lagged=%llu seconds=%.6f\n", sent,
           (unsigned long long)(elapsed * rate), preroll, errors, lagged, elapsed);
    return 0;
}

static int sink_main(const char *addr, int port, int count) {
    int fd = udp_socket(addr, port), size = SINK_BUFFER;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    unsigned long long *got = calloc(count, sizeof *got);
    printf("ready\n");
    fflush(stdout);

    static unsigned char buffers[MAX_BATCH][2048];
    struct iovec iov[MAX_BATCH];
    struct mmsghdr msgs[MAX_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < MAX_BATCH; i++) {
        iov[i].iov_base = buffers[i];
        iov[i].iov_len = sizeof buffers[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long received = 0, bad = 0;
    struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    int closing = 0;
    double last = now(), closed_at = 0;
    while (!stop) {
        poll(fds, closing ? 1 : 2, 20);
        if (!closing && fds[1].revents) {
            char scratch[256];
            if (read(0, scratch, sizeof scratch) <= 0) /* the sender is done */
                closing = 1, closed_at = now();
        }
        int r;
        while ((r = recvmmsg(fd, msgs, MAX_BATCH, MSG_DONTWAIT, NULL)) > 0) {
            for (int m = 0; m < r; m++) {
                const unsigned char *p = buffers[m];
                uint32_t ssrc = (uint32_t)p[8] << 24 | p[9] << 16 | p[10] << 8 | p[11];
                uint32_t index = ssrc - SSRC_BASE;
                if (msgs[m].msg_len != PACKET || (p[0] & 0xc0) != 0x80 || index >= (uint32_t)count)
                    bad++;
                else
                    got[index]++;
            }
            received += r;
            last = now();
        }
        /* done once nothing came for QUIET_S: what a relay still forwards late counts */
        double t = now();
        if (closing && ((t - last >= QUIET_S && t - closed_at >= QUIET_S) || t - closed_at > 5))
            break;
    }
    int streams = 0;
    for (int i = 0; i < count; i++)
        streams += got[i] > 0;
    printf("received=%llu bad=%llu streams=%d\n", received, bad, streams);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: rtpgen send -a SRC -r PPS -d SECONDS [-b BATCH] [-w MS] < streams\n"
                    "       rtpgen sink -a ADDR -p PORT -n STREAMS\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *addr = NULL;
    double rate = 0, seconds = 0;
    int batch = 32, port = 0, count = 1, preroll_ms = 0, opt;
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    optind = 2;
    while ((opt = getopt(argc, argv, "a:r:d:b:p:n:w:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'p': port = atoi(optarg); break;
        case 'n': count = atoi(optarg); break;
        case 'w': preroll_ms = atoi(optarg); break;
        default: usage();
        }
    }
    if (!addr || batch < 1 || batch > MAX_BATCH || count < 1)
        usage();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_file_limit();
    if (strcmp(mode, "send") == 0)
        return send_main(addr, rate, seconds, batch, preroll_ms);
    if (strcmp(mode, "sink") == 0)
        return sink_main(addr, port, count);
    usage();
    return 2;
}
