/* Shared by the bench's C tools. */
#ifndef BENCH_ADDR_H
#define BENCH_ADDR_H

#include <netinet/in.h>

/* "IP:PORT" or ":PORT" (any address) -> IPv4 sockaddr. 0 on success, -1 if malformed. */
int parse_addr(const char *s, struct sockaddr_in *out);

#endif
