/* proto.c: framing for the host <-> guest agent protocol (see proto.h).
 * Plain read/write/poll so that the static guest agent and the host share it. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend/agent/proto.h"
#include "backend/util/clock.h"
#include "backend/util/io.h"

#define PROTO_HDR 5  /* u32 length + u8 type */

void proto_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

void proto_put_u64(uint8_t *p, uint64_t v)
{
	proto_put_u32(p, v >> 32);
	proto_put_u32(p + 4, (uint32_t)v);
}

uint32_t proto_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

uint64_t proto_get_u64(const uint8_t *p)
{
	return (uint64_t)proto_get_u32(p) << 32 | proto_get_u32(p + 4);
}

long proto_parse(const uint8_t *buf, size_t len, struct proto_frame *f)
{
	uint32_t flen;

	if (len < 4)
		return 0;
	flen = proto_get_u32(buf);
	/* Reject a bad length as soon as its 4 bytes are in, so that a
	 * garbage header cannot make the reader wait for 4 GiB. */
	if (flen == 0 || flen > PROTO_FRAME_MAX)
		return -EPROTO;
	if (len - 4 < flen)
		return 0;
	f->type = buf[4];
	f->payload = buf + PROTO_HDR;
	f->len = flen - 1;
	return 4 + (long)flen;
}

/* The guest's virtio port has no write_iter: the kernel turns a writev into
 * one write per piece, and each is a virtqueue kick (a trap into QEMU under
 * TCG) and a separate arrival on the host.  A frame up to the port's largest
 * single write (32 KiB) goes out as one piece. */
#define GATHER_MAX (32u << 10)

int proto_writev(int fd, uint8_t type, const struct iovec *iov, int iovcnt, double deadline)
{
	struct iovec v[PROTO_IOV_MAX + 1];
	uint8_t hdr[PROTO_HDR], small[GATHER_MAX];
	size_t total = 1;
	int i, n = 0, rev;
	ssize_t w;

	if (iovcnt < 0 || iovcnt > PROTO_IOV_MAX)
		return -EINVAL;
	for (i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > PROTO_FRAME_MAX)
		return -EMSGSIZE;
	proto_put_u32(hdr, (uint32_t)total);
	hdr[4] = type;
	v[n++] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
	for (i = 0; i < iovcnt; i++)
		if (iov[i].iov_len)
			v[n++] = iov[i];
	if (n > 1 && total + PROTO_HDR - 1 <= sizeof(small)) {
		size_t len = 0;

		for (i = 0; i < n; i++) {
			memcpy(small + len, v[i].iov_base, v[i].iov_len);
			len += v[i].iov_len;
		}
		v[0] = (struct iovec){ .iov_base = small, .iov_len = len };
		n = 1;
	}

	i = 0;
	while (i < n) {
		w = writev(fd, v + i, n - i);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			/* A non-blocking fd: wait, but give up at the deadline
			 * or when the peer is gone instead of blocking forever. */
			rev = io_wait(fd, POLLOUT, deadline);
			if (rev < 0)
				return rev;
			if (rev & POLLNVAL)
				return -EBADF;
			if (!(rev & POLLOUT) && (rev & (POLLHUP | POLLERR)))
				return -EPIPE;
			continue;
		}
		while (i < n && (size_t)w >= v[i].iov_len)
			w -= v[i++].iov_len;
		if (i < n) {
			v[i].iov_base = (uint8_t *)v[i].iov_base + w;
			v[i].iov_len -= w;
		}
	}
	return 0;
}

int proto_write(int fd, uint8_t type, const void *payload, size_t len, double deadline)
{
	struct iovec v = { .iov_base = (void *)payload, .iov_len = len };

	return proto_writev(fd, type, &v, 1, deadline);
}

/* Read exactly len bytes before deadline.  -EPIPE on EOF. */
static int read_full(int fd, uint8_t *p, size_t len, double deadline)
{
	ssize_t r;
	int rev;

	while (len) {
		rev = io_wait(fd, POLLIN, deadline);
		if (rev < 0)
			return rev;
		r = read(fd, p, len);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EPIPE;
		p += r;
		len -= r;
	}
	return 0;
}

int proto_read(int fd, struct proto_frame *f, uint8_t **buf, double deadline, proto_limit_fn limit,
	       const void *arg)
{
	uint8_t hdr[PROTO_HDR];
	uint8_t *b = NULL;
	uint32_t flen, max;
	long n;
	int ret;

	*buf = NULL;
	/* The length first, refused as soon as it is in; then the type. */
	ret = read_full(fd, hdr, 4, deadline);
	if (ret < 0)
		goto out;
	flen = proto_get_u32(hdr);
	if (flen == 0 || flen > PROTO_FRAME_MAX) {
		ret = -EPROTO;
		goto out;
	}
	ret = read_full(fd, hdr + 4, 1, deadline);
	if (ret < 0)
		goto out;
	max = limit ? limit(hdr[4], arg) : PROTO_FRAME_MAX - 1;
	if (flen - 1 > max || (limit && max == 0)) {
		ret = -EPROTO;
		goto out;
	}
	b = malloc(4 + (size_t)flen);
	if (!b) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(b, hdr, sizeof(hdr));
	ret = read_full(fd, b + sizeof(hdr), flen + 4 - sizeof(hdr), deadline);
	if (ret < 0)
		goto out;
	n = proto_parse(b, 4 + (size_t)flen, f);
	if (n <= 0) {
		ret = -EPROTO;
		goto out;
	}
	*buf = b;
	b = NULL;
out:
	free(b);
	return ret;
}
