/* Address parsing shared by udpgen and relay (see addr.h). */
#include "addr.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int parse_addr(const char *s, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(out, 0, sizeof *out); /* sin_addr 0.0.0.0: INADDR_ANY when no host is given */
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    if (!host[0]) return 0;
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}
