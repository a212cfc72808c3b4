// A single-threaded epoll WebSocket (RFC 6455) load generator for bench/load.ts.
//
//   cc -O2 -Wall -Wextra -o loadgen loadgen.c
//   loadgen [--host 127.0.0.1|::1] echo PORT CONNS SIZE WINDOW SECONDS [text|binary]
//   loadgen [--host 127.0.0.1|::1] fanout PORT RECEIVERS WINDOW SECONDS [own|all]
//   loadgen [--host 127.0.0.1|::1] connect PORT COUNT
//
// It opens its connections (PARALLEL handshakes at a time), then prints a JSON line
// {"ready":true,...} with the handshakes' wall and CPU seconds, and reads commands from
// stdin, one a line, while it keeps reading its sockets:
//   echo, fanout: "run" does one run and prints one JSON line of results ("run S" one of
//                 S seconds instead of SECONDS, such as a warm-up);
//                 "quit" or end of input closes the connections and exits.
//   connect:      the connections stay idle (what arrives is discarded) until any line,
//                 end of input or IDLE_CONNECT_SECONDS; then they are closed.
// So `echo run | loadgen echo 4000 64 32 1 2` does one run.
// The handshakes ask for /echo in echo mode and for / otherwise: the reference servers in
// bench/servers/ echo on /echo and broadcast on every other path.
//
// echo:    every connection keeps WINDOW messages of SIZE bytes in flight; each echo is
//          answered by a new message until SECONDS have passed, then the ones in flight
//          are awaited. Latency: from queueing a message to reading its echo. Each echo's
//          type and length are checked, and its first and last CHECK_BYTES bytes.
// fanout:  RECEIVERS+1 connections; the first is the sender, which receives too. It keeps
//          WINDOW 32-byte binary messages in flight, one done when its own copy comes back
//          (own, the default), or once every connection has received it (all: the window
//          then bounds the server's backlog whatever order it delivers in).
//          Each message starts with a 32-bit big-endian sequence number: every delivery's
//          latency is measured from its message's send time, and every connection must
//          receive every message once, in order. Text frames (connect notices) are skipped.
//          A run ends when all deliveries have arrived.
// Control frames are skipped (nothing is answered); a close frame, a closed connection, a
// protocol error, a stall (nothing read for STALL_SECONDS) or a missed deadline ends the
// program with a message on stderr and exit status 1. Loopback targets only.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
  MAX_CONNS = 10000,
  MAX_WINDOW = 4096,
  MAX_SIZE = 64 << 20,
  MAX_SECONDS = 600,
  PARALLEL = 16,          // handshakes in progress at once
  MAX_EVENTS = 1024,      // per epoll_wait
  MAX_IOV = 64,           // per writev
  READ_SIZE = 256 << 10,  // one read()
  HEAD_MAX = 4096,        // the server's handshake response
  OUT_MAX = 1 << 20,      // bytes queued on one connection (besides echo frames)
  CHECK_BYTES = 64,       // checked at each end of an echo
  FANOUT_SIZE = 32,
  LATENCY_CAP = 1 << 22,  // latencies kept per run; past it, every other one is dropped
  SEQ_RING = 1 << 20,     // send times kept for fanout messages
};
enum { CONTINUATION = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PONG = 10 };  // opcodes
static const double STALL_SECONDS = 10, SETUP_SECONDS = 120, DRAIN_SECONDS = 30;
static const double IDLE_SECONDS = 60, IDLE_CONNECT_SECONDS = 30;
static const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";  // RFC 6455 section 1.3
static const uint32_t STDIN_TAG = UINT32_MAX;                 // epoll data of stdin

// ---------------------------------------------------------------- helpers

static void fail(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static double cpu_seconds(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static void *allocate(size_t size) {
  void *p = calloc(1, size ? size : 1);
  if (!p) fail("out of memory (%zu bytes)", size);
  return p;
}

static double parse_seconds(const char *text) {
  char *end;
  double value = strtod(text, &end);
  if (end == text || *end || !(value >= 0 && value <= MAX_SECONDS)) {
    fail("SECONDS must be a number from 0 to %d, not '%s'", MAX_SECONDS, text);
  }
  return value;
}

static long parse_number(const char *text, long min, long max, const char *name) {
  char *end;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno || end == text || *end || value < min || value > max) {
    fail("%s must be an integer from %ld to %ld, not '%s'", name, min, max, text);
  }
  return value;
}

// A byte queue: [start, end) of data is pending.
typedef struct {
  uint8_t *data;
  size_t start, end, cap;
} Bytes;

static void bytes_append(Bytes *b, const void *src, size_t len) {
  if (b->end + len > b->cap) {
    if (b->start) memmove(b->data, b->data + b->start, b->end - b->start);
    b->end -= b->start;
    b->start = 0;
    size_t cap = b->cap ? b->cap : 256;
    while (b->end + len > cap) cap *= 2;
    if (cap > OUT_MAX) fail("more than %d bytes queued on one connection", OUT_MAX);
    if (cap != b->cap) {
      b->data = realloc(b->data, cap);
      if (!b->data) fail("out of memory");
      b->cap = cap;
    }
  }
  memcpy(b->data + b->end, src, len);
  b->end += len;
}

// Encodes a masked client frame (FIN set) into dst, which has room for len + 14 bytes.
static size_t encode_frame(uint8_t *dst, int opcode, const uint8_t *payload, size_t len,
                           const uint8_t mask[4]) {
  size_t n = 0;
  dst[n++] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    dst[n++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xffff) {
    dst[n++] = 0x80 | 126;
    dst[n++] = (uint8_t)(len >> 8);
    dst[n++] = (uint8_t)len;
  } else {
    dst[n++] = 0x80 | 127;
    for (int shift = 56; shift >= 0; shift -= 8) dst[n++] = (uint8_t)((uint64_t)len >> shift);
  }
  memcpy(dst + n, mask, 4);
  n += 4;
  for (size_t i = 0; i < len; i++) dst[n + i] = payload[i] ^ mask[i & 3];
  return n + len;
}

// ---------------------------------------------------------------- state

typedef enum { CONNECTING, HANDSHAKING, OPEN } State;

// The reader of server frames: a state machine fed whatever each read() returns.
typedef struct {
  uint8_t header[14];
  unsigned have, need;  // header bytes read and needed (2, 4 or 10)
  bool in_payload;
  int opcode;  // of the current frame
  bool fin;
  uint64_t remaining;  // payload bytes of the current frame still to come
  int message_opcode;  // TEXT or BINARY while a data message is being read, else 0
  uint64_t message_len;
  uint8_t message_head[4];  // a data message's first bytes (the fanout sequence number)
  uint8_t control_head[2];  // a control frame's first bytes (a close code)
  uint64_t control_len;
} Reader;

typedef struct {
  int fd;
  unsigned index;
  State state;
  bool want_out;  // EPOLLOUT is being watched
  char *head;     // the handshake response while it arrives
  size_t head_len;
  Bytes out;              // handshake request, fanout frames
  uint64_t frames;        // then this many copies of the echo frame
  size_t frame_offset;    // bytes of the first of them already written
  Reader in;
  uint64_t *sent_at;      // echo: a ring of the send times of the `in_flight` messages
  unsigned sent_first, in_flight;
  uint32_t next_seq;      // fanout: the sequence number this connection receives next
  unsigned received;      // data messages received by the current read
} Conn;

static struct {
  enum { ECHO, FANOUT, CONNECT } mode;
  struct sockaddr_storage addr;
  socklen_t addr_len;
  char request[256];
  size_t request_len;
  unsigned conns, size, window;
  double seconds;
  bool text;
  uint8_t mask[4];

  int epoll;
  Conn *conn;
  unsigned started, established;
  uint8_t *read_buffer;

  // echo: the payload, and its frame repeated `block_frames` times in `block`
  uint8_t *payload, *block;
  size_t frame_len;
  unsigned block_frames;

  // stdin
  char line[64];
  size_t line_len;
  unsigned commands;  // complete lines not yet handled
  double command_seconds[16];  // their run durations (a ring from commands_first)
  unsigned commands_first;
  bool input_closed;

  // the current run
  bool running, sending;
  uint64_t start, deadline, last_read;
  uint64_t messages, in_flight;         // echo
  uint64_t sent, acked, deliveries;     // fanout
  bool ack_all;                         // fanout: a message is done once all have received it
  uint32_t *seq_pending;                // fanout, ack_all: deliveries still to come, by seq
  uint32_t seq;
  uint64_t *seq_sent_at;
  float *latency;  // ms
  size_t latency_count;
  uint64_t latency_seen, latency_stride;
} G;

static void record_latency(uint64_t sent, uint64_t now) {
  if (G.latency_seen++ % G.latency_stride != 0) return;
  if (G.latency_count == LATENCY_CAP) {  // keep every other one, and record half as often
    for (size_t i = 0; i < LATENCY_CAP / 2; i++) G.latency[i] = G.latency[2 * i];
    G.latency_count = LATENCY_CAP / 2;
    G.latency_stride *= 2;
  }
  G.latency[G.latency_count++] = (float)((double)(now - sent) / 1e6);
}

static int compare_floats(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

// Prints "name":value in ms of the sorted latencies, at the rank sorted[min(n - 1, floor(n * p))].
static void print_percentile(const char *name, double p) {
  if (G.latency_count == 0) {
    printf("\"%s\":null,", name);
    return;
  }
  size_t i = (size_t)((double)G.latency_count * p);
  printf("\"%s\":%.4f,", name, G.latency[i < G.latency_count ? i : G.latency_count - 1]);
}

// ---------------------------------------------------------------- writing

static void watch_output(Conn *c, bool on) {
  if (c->want_out == on) return;
  struct epoll_event event = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = c->index};
  if (epoll_ctl(G.epoll, EPOLL_CTL_MOD, c->fd, &event) < 0) fail("epoll_ctl: %s", strerror(errno));
  c->want_out = on;
}

// Writes what is queued, up to what the socket takes; EPOLLOUT is watched while some is left.
static void flush(Conn *c) {
  for (int round = 0; round < 16; round++) {
    struct iovec iov[MAX_IOV];
    int n = 0;
    size_t pending = c->out.end - c->out.start;
    if (pending) iov[n++] = (struct iovec){c->out.data + c->out.start, pending};
    uint64_t frames = c->frames;
    size_t offset = c->frame_offset;
    while (frames > 0 && n < MAX_IOV) {
      uint64_t k = frames < G.block_frames ? frames : G.block_frames;
      iov[n++] = (struct iovec){G.block + offset, k * G.frame_len - offset};
      frames -= k;
      offset = 0;
    }
    if (n == 0) {
      watch_output(c, false);
      return;
    }
    ssize_t written = writev(c->fd, iov, n);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      fail("write on connection %u: %s", c->index, strerror(errno));
    }
    size_t w = (size_t)written, from_out = w < pending ? w : pending;
    c->out.start += from_out;
    if (c->out.start == c->out.end) c->out.start = c->out.end = 0;
    w -= from_out;
    if (w) {
      uint64_t total = c->frame_offset + w;
      c->frames -= total / G.frame_len;
      c->frame_offset = total % G.frame_len;
    }
  }
  watch_output(c, true);
}

static void echo_send(Conn *c, unsigned count, uint64_t now) {
  for (unsigned i = 0; i < count; i++) {
    c->sent_at[(c->sent_first + c->in_flight) % G.window] = now;
    c->in_flight++;
  }
  G.in_flight += count;
  c->frames += count;
  flush(c);
}

// The sender keeps `window` messages in flight until the deadline.
static void fanout_send(uint64_t now) {
  Conn *sender = &G.conn[0];
  bool queued = false;
  while (G.sending && G.sent - G.acked < G.window) {
    if (now >= G.deadline) {
      G.sending = false;
      break;
    }
    uint8_t payload[FANOUT_SIZE] = {0}, frame[FANOUT_SIZE + 14];
    uint32_t seq = G.seq++;
    payload[0] = (uint8_t)(seq >> 24);
    payload[1] = (uint8_t)(seq >> 16);
    payload[2] = (uint8_t)(seq >> 8);
    payload[3] = (uint8_t)seq;
    G.seq_sent_at[seq % SEQ_RING] = now;
    if (G.ack_all) G.seq_pending[seq % SEQ_RING] = G.conns;
    G.sent++;
    bytes_append(&sender->out, frame, encode_frame(frame, BINARY, payload, FANOUT_SIZE, G.mask));
    queued = true;
  }
  if (queued) flush(sender);
}

// ---------------------------------------------------------------- reading

// A complete data message.
static void on_message(Conn *c, uint64_t now) {
  Reader *r = &c->in;
  if (G.mode == CONNECT) return;
  if (G.mode == FANOUT) {
    if (r->message_opcode != BINARY) return;  // connect notices
    if (!G.running) fail("connection %u: a message outside a run", c->index);
    if (r->message_len != FANOUT_SIZE) {
      fail("connection %u: a %llu-byte delivery, not %d", c->index,
           (unsigned long long)r->message_len, FANOUT_SIZE);
    }
    uint32_t seq = (uint32_t)r->message_head[0] << 24 | (uint32_t)r->message_head[1] << 16 |
                   (uint32_t)r->message_head[2] << 8 | r->message_head[3];
    if (seq != c->next_seq) {
      fail("connection %u: message %u arrived, %u expected", c->index, seq, c->next_seq);
    }
    if (G.seq - seq > SEQ_RING) fail("connection %u lags over %d messages", c->index, SEQ_RING);
    c->next_seq++;
    record_latency(G.seq_sent_at[seq % SEQ_RING], now);
    G.deliveries++;
    if (G.ack_all ? --G.seq_pending[seq % SEQ_RING] == 0 : c->index == 0) G.acked++;
    return;
  }
  if (r->message_opcode != (G.text ? TEXT : BINARY)) fail("connection %u: an echo of the wrong type", c->index);
  if (r->message_len != G.size) {
    fail("connection %u: a %llu-byte echo of a %u-byte message", c->index,
         (unsigned long long)r->message_len, G.size);
  }
  if (c->in_flight == 0) fail("connection %u: an echo of nothing", c->index);
  record_latency(c->sent_at[c->sent_first], now);
  c->sent_first = (c->sent_first + 1) % G.window;
  c->in_flight--;
  G.in_flight--;
  G.messages++;
  c->received++;
}

// Payload bytes [at, at + len) of the current echo: its ends must match what was sent.
static void check_echo(Conn *c, uint64_t at, const uint8_t *data, size_t len) {
  if (at + len > G.size) fail("connection %u: an echo longer than %u bytes", c->index, G.size);
  uint64_t ranges[2][2] = {{0, CHECK_BYTES}, {G.size > CHECK_BYTES ? G.size - CHECK_BYTES : 0, G.size}};
  for (int i = 0; i < 2; i++) {
    uint64_t from = at > ranges[i][0] ? at : ranges[i][0];
    uint64_t to = at + len < ranges[i][1] ? at + len : ranges[i][1];
    if (from < to && memcmp(data + (from - at), G.payload + from, to - from) != 0) {
      fail("connection %u: an echo differs from its message", c->index);
    }
  }
}

static void frame_done(Conn *c, uint64_t now) {
  Reader *r = &c->in;
  r->have = 0;
  r->need = 2;
  r->in_payload = false;
  if (r->opcode == CLOSE) {
    unsigned code = r->control_len >= 2 ? (unsigned)r->control_head[0] << 8 | r->control_head[1] : 0;
    fail("connection %u: the server sent a close frame (code %u)", c->index, code);
  }
  if (r->opcode >= CLOSE || !r->fin) return;  // pings and pongs are skipped
  on_message(c, now);
  r->message_opcode = 0;
}

static void frame_start(Conn *c, uint64_t now) {
  Reader *r = &c->in;
  const uint8_t *h = r->header;
  r->fin = h[0] & 0x80;
  r->opcode = h[0] & 0x0f;
  uint64_t len = h[1] & 0x7f;
  if (len == 126) {
    len = (uint64_t)h[2] << 8 | h[3];
  } else if (len == 127) {
    len = 0;
    for (int i = 2; i < 10; i++) len = len << 8 | h[i];
    if (len >> 63) fail("connection %u: a 64-bit length with its top bit set", c->index);
  }
  if (r->opcode >= CLOSE) {
    if (r->opcode > PONG || !r->fin || len > 125) fail("connection %u: a bad control frame", c->index);
    r->control_len = 0;
  } else if (r->opcode == CONTINUATION) {
    if (!r->message_opcode) fail("connection %u: a continuation frame without a message", c->index);
  } else if (r->opcode <= BINARY) {
    if (r->message_opcode) fail("connection %u: a new message inside a fragmented one", c->index);
    r->message_opcode = r->opcode;
    r->message_len = 0;
  } else {
    fail("connection %u: reserved opcode %d", c->index, r->opcode);
  }
  if (r->opcode < CLOSE && r->message_len + len > MAX_SIZE) {
    fail("connection %u: a message over %d bytes", c->index, MAX_SIZE);
  }
  r->remaining = len;
  r->in_payload = true;
  if (len == 0) frame_done(c, now);
}

static void feed(Conn *c, const uint8_t *data, size_t n, uint64_t now) {
  Reader *r = &c->in;
  while (n > 0) {
    if (!r->in_payload) {
      size_t take = r->need - r->have < n ? r->need - r->have : n;
      memcpy(r->header + r->have, data, take);
      r->have += (unsigned)take;
      data += take;
      n -= take;
      if (r->have == 2) {
        if (r->header[0] & 0x70) fail("connection %u: RSV bits set", c->index);
        if (r->header[1] & 0x80) fail("connection %u: a masked server frame", c->index);
        unsigned len7 = r->header[1] & 0x7f;
        r->need = len7 == 126 ? 4 : len7 == 127 ? 10 : 2;
      }
      if (r->have == r->need) frame_start(c, now);
      continue;
    }
    size_t take = r->remaining < n ? (size_t)r->remaining : n;
    if (r->opcode >= CLOSE) {
      for (size_t i = 0; i < take && r->control_len + i < 2; i++) r->control_head[r->control_len + i] = data[i];
      r->control_len += take;
    } else {
      for (size_t i = 0; i < take && r->message_len + i < 4; i++) r->message_head[r->message_len + i] = data[i];
      if (G.mode == ECHO) check_echo(c, r->message_len, data, take);
      r->message_len += take;
    }
    r->remaining -= take;
    data += take;
    n -= take;
    if (r->remaining == 0) frame_done(c, now);
  }
}

// The server's response: "HTTP/1.1 101" and the accept key of KEY.
static void check_handshake(Conn *c, size_t head_len) {
  c->head[head_len] = 0;
  if (strncmp(c->head, "HTTP/1.1 101 ", 13) != 0) {
    char *eol = strstr(c->head, "\r\n");
    if (eol) *eol = 0;
    fail("connection %u: handshake answered '%s'", c->index, c->head);
  }
  const char *name = "sec-websocket-accept:";
  for (char *line = strstr(c->head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
    if (strncasecmp(line + 2, name, strlen(name)) != 0) continue;
    char *value = line + 2 + strlen(name);
    while (*value == ' ' || *value == '\t') value++;
    size_t len = strcspn(value, " \t\r");
    if (len == strlen(ACCEPT) && memcmp(value, ACCEPT, len) == 0) return;
    fail("connection %u: a wrong Sec-WebSocket-Accept", c->index);
  }
  fail("connection %u: no Sec-WebSocket-Accept", c->index);
}

static void on_readable(Conn *c) {
  ssize_t n = read(c->fd, G.read_buffer, READ_SIZE);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    fail("read on connection %u: %s", c->index, strerror(errno));
  }
  if (n == 0) fail("the server closed connection %u", c->index);
  uint64_t now = now_ns();
  G.last_read = now;
  const uint8_t *data = G.read_buffer;
  size_t len = (size_t)n;
  if (c->state == HANDSHAKING) {
    size_t room = HEAD_MAX - 1 - c->head_len, take = len < room ? len : room;
    memcpy(c->head + c->head_len, data, take);
    size_t old = c->head_len;
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head + (old > 3 ? old - 3 : 0), "\r\n\r\n");
    if (!end) {
      if (c->head_len == HEAD_MAX - 1) fail("connection %u: a handshake response over %d bytes", c->index, HEAD_MAX);
      return;
    }
    size_t head_len = (size_t)(end - c->head) + 4;
    check_handshake(c, head_len);
    free(c->head);
    c->head = NULL;
    c->state = OPEN;
    G.established++;
    data += head_len - old;  // frames right after the response
    len -= head_len - old;
  }
  c->received = 0;
  feed(c, data, len, now);
  if (G.mode == ECHO && c->received && G.sending) {
    if (now >= G.deadline) G.sending = false;
    else echo_send(c, c->received, now);
  }
  if (G.mode == FANOUT && (c->index == 0 || G.ack_all)) fanout_send(now);
}

// ---------------------------------------------------------------- connections

static void start_connection(unsigned index) {
  Conn *c = &G.conn[index];
  c->index = index;
  c->fd = socket(G.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) fail("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&G.addr, G.addr_len) < 0 && errno != EINPROGRESS) {
    fail("connect: %s", strerror(errno));
  }
  c->state = CONNECTING;
  c->want_out = true;
  struct epoll_event event = {.events = EPOLLIN | EPOLLOUT, .data.u32 = index};
  if (epoll_ctl(G.epoll, EPOLL_CTL_ADD, c->fd, &event) < 0) fail("epoll_ctl: %s", strerror(errno));
  if (G.mode == ECHO) c->sent_at = allocate(G.window * sizeof *c->sent_at);
  c->in.need = 2;
}

static void on_connected(Conn *c) {
  int error = 0;
  socklen_t len = sizeof error;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
  if (error) fail("connect: %s", strerror(error));
  G.last_read = now_ns();
  c->state = HANDSHAKING;
  c->head = allocate(HEAD_MAX);
  bytes_append(&c->out, G.request, G.request_len);
  flush(c);
}

static void on_input(void) {
  char buffer[256];
  ssize_t n = read(STDIN_FILENO, buffer, sizeof buffer);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    G.input_closed = true;
    epoll_ctl(G.epoll, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (buffer[i] == '\n') {
      G.line[G.line_len] = 0;
      G.line_len = 0;
      if (G.mode != CONNECT && strcmp(G.line, "quit") == 0) {  // what follows is ignored
        G.input_closed = true;
        epoll_ctl(G.epoll, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
        return;
      }
      double seconds = G.seconds;
      if (G.mode != CONNECT) {
        if (strncmp(G.line, "run ", 4) == 0) seconds = parse_seconds(G.line + 4);
        else if (strcmp(G.line, "run") != 0) fail("unknown command '%s' (run [SECONDS] or quit)", G.line);
      }
      if (G.commands == 16) fail("more than 16 commands queued");
      G.command_seconds[(G.commands_first + G.commands) % 16] = seconds;
      G.commands++;
    } else if (G.line_len + 1 < sizeof G.line) {
      G.line[G.line_len++] = buffer[i];
    } else {
      fail("a command line over %zu bytes", sizeof G.line - 1);
    }
  }
}

// One epoll_wait and what it reports.
static void poll_once(int timeout_ms) {
  struct epoll_event events[MAX_EVENTS];
  int n = epoll_wait(G.epoll, events, MAX_EVENTS, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return;
    fail("epoll_wait: %s", strerror(errno));
  }
  for (int i = 0; i < n; i++) {
    if (events[i].data.u32 == STDIN_TAG) {
      on_input();
      continue;
    }
    Conn *c = &G.conn[events[i].data.u32];
    uint32_t what = events[i].events;
    if (c->state == CONNECTING) {
      if (what & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
      continue;
    }
    if (what & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    if (what & EPOLLOUT) flush(c);
  }
}

// Fails past `deadline`, or when nothing has been read for STALL_SECONDS.
static void check_time(uint64_t deadline, const char *doing) {
  uint64_t now = now_ns();
  if (now > deadline) fail("%s: past the deadline", doing);
  if ((double)(now - G.last_read) / 1e9 > STALL_SECONDS) {
    fail("stalled: nothing read for %.0f s while %s", STALL_SECONDS, doing);
  }
}

static void open_connections(void) {
  uint64_t deadline = now_ns() + (uint64_t)(SETUP_SECONDS * 1e9);
  G.last_read = now_ns();
  while (G.established < G.conns) {
    while (G.started < G.conns && G.started - G.established < PARALLEL) start_connection(G.started++);
    check_time(deadline, "opening connections");
    poll_once(100);
  }
}

// Reads the sockets until a command line (true), the end of input or `seconds` (false).
// The command's run duration goes to *run_seconds.
static bool wait_for_command(double seconds, double *run_seconds) {
  uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9);
  while (!G.input_closed && G.commands == 0) {
    if (now_ns() > deadline) {
      fprintf(stderr, "loadgen: no command for %.0f s; closing\n", seconds);
      return false;
    }
    poll_once(100);
  }
  if (G.commands == 0) return false;
  *run_seconds = G.command_seconds[G.commands_first];
  G.commands_first = (G.commands_first + 1) % 16;
  G.commands--;
  return true;
}

// ---------------------------------------------------------------- runs

static void run(double seconds) {
  double cpu0 = cpu_seconds();
  uint64_t now = now_ns();
  G.running = G.sending = true;
  G.start = G.last_read = now;
  G.deadline = now + (uint64_t)(seconds * 1e9);
  uint64_t hard_deadline = G.deadline + (uint64_t)(DRAIN_SECONDS * 1e9);
  G.messages = G.in_flight = G.sent = G.acked = G.deliveries = 0;
  G.latency_count = G.latency_seen = 0;
  G.latency_stride = 1;
  if (G.mode == ECHO) {
    for (unsigned i = 0; i < G.conns; i++) echo_send(&G.conn[i], G.window, now);
    while (G.in_flight > 0) {
      check_time(hard_deadline, "waiting for echoes");
      poll_once(100);
    }
  } else {
    fanout_send(now);
    while (G.sending || G.deliveries < G.sent * G.conns) {
      check_time(hard_deadline, "waiting for deliveries");
      poll_once(100);
      if (G.sending && now_ns() >= G.deadline) G.sending = false;
    }
  }
  double wall = (double)(now_ns() - G.start) / 1e9, cpu = cpu_seconds() - cpu0;
  G.running = false;
  qsort(G.latency, G.latency_count, sizeof *G.latency, compare_floats);
  if (G.mode == ECHO) {
    printf("{\"mode\":\"echo\",\"messages\":%llu,\"bytes\":%llu,", (unsigned long long)G.messages,
           (unsigned long long)G.messages * G.size);
  } else {
    printf("{\"mode\":\"fanout\",\"sent\":%llu,\"deliveries\":%llu,", (unsigned long long)G.sent,
           (unsigned long long)G.deliveries);
  }
  print_percentile("p50_ms", 0.5);
  print_percentile("p99_ms", 0.99);
  printf("\"latency_samples\":%zu,\"wall_s\":%.6f,\"cpu_s\":%.6f}\n", G.latency_count, wall, cpu);
  fflush(stdout);
}

// ---------------------------------------------------------------- setup

static void usage(void) {
  fail("usage: loadgen [--host 127.0.0.1|::1] echo PORT CONNS SIZE WINDOW SECONDS [text|binary]\n"
       "       loadgen [--host 127.0.0.1|::1] fanout PORT RECEIVERS WINDOW SECONDS [own|all]\n"
       "       loadgen [--host 127.0.0.1|::1] connect PORT COUNT");
}

static void parse_arguments(int argc, char **argv) {
  const char *host = "127.0.0.1";
  if (argc > 2 && strcmp(argv[1], "--host") == 0) {
    host = argv[2];
    argc -= 2;
    argv += 2;
  }
  if (argc < 3) usage();
  struct sockaddr_in *v4 = (struct sockaddr_in *)&G.addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&G.addr;
  unsigned port = (unsigned)parse_number(argv[2], 1, 65535, "PORT");
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1 && ntohl(v4->sin_addr.s_addr) == INADDR_LOOPBACK) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    G.addr_len = sizeof *v4;
  } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1 && IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    G.addr_len = sizeof *v6;
  } else {
    fail("refusing target '%s': loopback only (127.0.0.1 or ::1)", host);
  }

  const char *mode = argv[1];
  if (strcmp(mode, "echo") == 0 && (argc == 7 || argc == 8)) {
    G.mode = ECHO;
    G.conns = (unsigned)parse_number(argv[3], 1, MAX_CONNS, "CONNS");
    G.size = (unsigned)parse_number(argv[4], 0, MAX_SIZE, "SIZE");
    G.window = (unsigned)parse_number(argv[5], 1, MAX_WINDOW, "WINDOW");
    G.seconds = parse_seconds(argv[6]);
    if (argc == 8 && strcmp(argv[7], "text") != 0 && strcmp(argv[7], "binary") != 0) usage();
    G.text = argc == 8 && strcmp(argv[7], "text") == 0;
  } else if (strcmp(mode, "fanout") == 0 && (argc == 6 || argc == 7)) {
    G.mode = FANOUT;
    if (argc == 7 && strcmp(argv[6], "own") != 0 && strcmp(argv[6], "all") != 0) usage();
    G.ack_all = argc == 7 && strcmp(argv[6], "all") == 0;
    G.conns = (unsigned)parse_number(argv[3], 0, MAX_CONNS - 1, "RECEIVERS") + 1;
    G.window = (unsigned)parse_number(argv[4], 1, MAX_WINDOW, "WINDOW");
    G.seconds = parse_seconds(argv[5]);
  } else if (strcmp(mode, "connect") == 0 && argc == 4) {
    G.mode = CONNECT;
    G.conns = (unsigned)parse_number(argv[3], 1, MAX_CONNS, "COUNT");
  } else {
    usage();
  }
  int length = snprintf(G.request, sizeof G.request,
                        "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                        G.mode == ECHO ? "/echo" : "/", G.addr.ss_family == AF_INET6 ? "[" : "", host,
                        G.addr.ss_family == AF_INET6 ? "]" : "", port, KEY);
  G.request_len = (size_t)length;
}

int main(int argc, char **argv) {
  parse_arguments(argc, argv);
  signal(SIGPIPE, SIG_IGN);

  struct rlimit limit;
  rlim_t need = G.conns + 32;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < need) {
    if (limit.rlim_max < need) fail("RLIMIT_NOFILE allows %llu descriptors, %llu needed",
                                    (unsigned long long)limit.rlim_max, (unsigned long long)need);
    limit.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &limit) < 0) fail("setrlimit: %s", strerror(errno));
  }

  if (getrandom(G.mask, sizeof G.mask, 0) != sizeof G.mask) memcpy(G.mask, "\x37\xfa\x21\x3d", 4);
  if (G.mode == ECHO) {  // the message and its frame, encoded once
    G.payload = allocate(G.size);
    for (size_t i = 0; i < G.size; i++) G.payload[i] = G.text ? 'a' + i % 26 : (uint8_t)(i * 7 + (i >> 8));
    G.frame_len = G.size + 14;  // at most
    G.block_frames = G.frame_len < 4096 ? 4096 / (unsigned)G.frame_len : 1;
    if (G.block_frames > G.window) G.block_frames = G.window;
    G.block = allocate(G.frame_len * G.block_frames);
    G.frame_len = encode_frame(G.block, G.text ? TEXT : BINARY, G.payload, G.size, G.mask);
    for (unsigned i = 1; i < G.block_frames; i++) memcpy(G.block + i * G.frame_len, G.block, G.frame_len);
  }
  if (G.mode != CONNECT) G.latency = allocate(LATENCY_CAP * sizeof *G.latency);
  if (G.mode == FANOUT) G.seq_sent_at = allocate(SEQ_RING * sizeof *G.seq_sent_at);
  if (G.mode == FANOUT) G.seq_pending = allocate(SEQ_RING * sizeof *G.seq_pending);
  G.read_buffer = allocate(READ_SIZE);
  G.conn = allocate(G.conns * sizeof *G.conn);
  G.epoll = epoll_create1(EPOLL_CLOEXEC);
  if (G.epoll < 0) fail("epoll_create1: %s", strerror(errno));

  double cpu0 = cpu_seconds();
  uint64_t start = now_ns();
  open_connections();
  double wall = (double)(now_ns() - start) / 1e9;
  printf("{\"ready\":true,\"connections\":%u,\"handshakes_per_s\":%.1f,\"wall_s\":%.6f,\"cpu_s\":%.6f}\n",
         G.conns, G.conns / wall, wall, cpu_seconds() - cpu0);
  fflush(stdout);

  // stdin is watched from now on; a file (such as /dev/null) cannot be, and counts as ended.
  struct epoll_event event = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
  if (epoll_ctl(G.epoll, EPOLL_CTL_ADD, STDIN_FILENO, &event) < 0) G.input_closed = true;
  double seconds;
  if (G.mode == CONNECT) {
    wait_for_command(IDLE_CONNECT_SECONDS, &seconds);
  } else {
    for (unsigned runs = 0; runs < 1000 && wait_for_command(IDLE_SECONDS, &seconds); runs++) run(seconds);
  }
  for (unsigned i = 0; i < G.conns; i++) close(G.conn[i].fd);
  return 0;
}
