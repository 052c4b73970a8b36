/* auth.h - the cluster secret's challenge-response (docs/PROTOCOL.md 3.1).
 *
 * When --disaggregation-secret (or $PDSERVE_DISAGGREGATION_SECRET) is set,
 * both ends of every bootstrap and transfer connection send a fresh random
 * nonce first and answer the other side's nonce with
 *
 *     HMAC-SHA256(secret, nonce || role)     role = "prefill" | "decode"
 *
 * The role in the MAC keeps a peer from reflecting one side's challenge back
 * at it. The secret itself never crosses the wire. This is authentication
 * only: frames after the handshake are neither encrypted nor MACed
 * (docs/SECURITY.md says what that means for deployments).
 *
 * The only module that includes OpenSSL (libcrypto).
 */
#ifndef PDSERVE_DISAGG_AUTH_H
#define PDSERVE_DISAGG_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define AUTH_NONCE 32
#define AUTH_MAC 32

/* A cryptographically random nonce. 0, or ERR_IO when no randomness. */
int auth_nonce(uint8_t out[AUTH_NONCE]);

/* out = HMAC-SHA256(secret[0..secret_len), nonce || role). 0, or ERR_IO. */
int auth_mac(const void *secret, size_t secret_len, const uint8_t nonce[AUTH_NONCE], const char *role,
	     uint8_t out[AUTH_MAC]);

/* Constant-time comparison of two MACs. */
bool auth_equal(const uint8_t a[AUTH_MAC], const uint8_t b[AUTH_MAC]);

#endif
