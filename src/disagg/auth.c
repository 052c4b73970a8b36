/* auth.c - HMAC-SHA256 challenge-response for the cluster secret, on
 * OpenSSL's libcrypto (HMAC, RAND_bytes, CRYPTO_memcmp). See auth.h.
 *
 * Why libcrypto and not our own SHA-256: a hand-written hash is one more
 * thing to get subtly wrong, and libcrypto is on every Debian host.
 */
#include "disagg/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

int auth_nonce(uint8_t out[AUTH_NONCE])
{
	return RAND_bytes(out, AUTH_NONCE) == 1 ? 0 : ERR_IO;
}

int auth_mac(const void *secret, size_t secret_len, const uint8_t nonce[AUTH_NONCE], const char *role,
	     uint8_t out[AUTH_MAC])
{
	uint8_t msg[AUTH_NONCE + 16];
	size_t rl = strlen(role);
	if (rl > 16 || secret_len > 1 << 20)
		return ERR_IO;
	memcpy(msg, nonce, AUTH_NONCE);
	memcpy(msg + AUTH_NONCE, role, rl);
	unsigned int n = 0;
	/* HMAC() with a NULL key pointer fails for an empty key: point at msg */
	if (!HMAC(EVP_sha256(), secret_len ? secret : msg, (int)secret_len, msg, AUTH_NONCE + rl, out, &n) ||
	    n != AUTH_MAC)
		return ERR_IO;
	return 0;
}

bool auth_equal(const uint8_t a[AUTH_MAC], const uint8_t b[AUTH_MAC])
{
	return CRYPTO_memcmp(a, b, AUTH_MAC) == 0;
}
