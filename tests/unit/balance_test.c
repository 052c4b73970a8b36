/* balance_test.c - load-balancing policies (router/balance.c) and the worker
 * health / circuit-breaker state machines (router/worker.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "router/balance.h"
#include "router/worker.h"

static balance *mk(balance_policy p)
{
	balance_config c = balance_config_default(p);
	balance *b = balance_create(&c, 42);
	cr_assert(b);
	return b;
}

static int pick(balance *b, const balance_cand *c, int n, const char *text)
{
	int out = -2;
	cr_assert_eq(balance_pick(b, c, n, text, text ? strlen(text) : 0, &out, NULL), 0);
	char err[ERR_LEN];
	cr_assert_eq(balance_check(b, err), 0, "%s", err);
	return out;
}

Test(balance, names)
{
	for (int p = 0; p < 4; p++)
		cr_expect_eq(balance_policy_parse(balance_policy_name((balance_policy)p)), p);
	cr_expect_eq(balance_policy_parse("least_load"), -1);
	balance_config c = balance_config_default(BALANCE_CACHE_AWARE);
	cr_expect_float_eq(c.cache_threshold, 0.3, 1e-9);
	cr_expect_eq(c.balance_abs_threshold, 64);
	cr_expect_float_eq(c.balance_rel_threshold, 1.5, 1e-9);
}

Test(balance, empty_set)
{
	balance *b = mk(BALANCE_CACHE_AWARE);
	int out = 7;
	cr_expect_eq(balance_pick(b, NULL, 0, "x", 1, &out, NULL), 0);
	cr_expect_eq(out, -1);
	balance_destroy(b);
}

Test(balance, round_robin_exact)
{
	balance *b = mk(BALANCE_ROUND_ROBIN);
	balance_cand c[3] = { { 1, 5 }, { 2, 0 }, { 3, 9 } };
	int count[3] = { 0 };
	for (int i = 0; i < 30; i++) {
		int k = pick(b, c, 3, NULL);
		cr_assert_eq(k, i % 3, "request %d went to %d", i, k);
		count[k]++;
	}
	cr_expect(count[0] == 10 && count[1] == 10 && count[2] == 10);
	balance_destroy(b);
}

Test(balance, random_covers_all)
{
	balance *b = mk(BALANCE_RANDOM);
	balance_cand c[3] = { { 1, 0 }, { 2, 0 }, { 3, 0 } };
	int count[3] = { 0 };
	for (int i = 0; i < 3000; i++)
		count[pick(b, c, 3, NULL)]++;
	for (int k = 0; k < 3; k++)
		cr_expect(count[k] > 800 && count[k] < 1200, "worker %d: %d of 3000", k, count[k]);
	balance_destroy(b);
}

Test(balance, power_of_two_avoids_the_loaded)
{
	balance *b = mk(BALANCE_POWER_OF_TWO);
	balance_cand c[3] = { { 1, 0 }, { 2, 50 }, { 3, 1 } };
	int count[3] = { 0 };
	for (int i = 0; i < 1000; i++)
		count[pick(b, c, 3, NULL)]++;
	/* two distinct samples: the most loaded one never wins */
	cr_expect_eq(count[1], 0);
	/* the least loaded wins whenever it is sampled: 2 of the 3 pairs */
	cr_expect(count[0] > 600, "%d", count[0]);
	cr_expect(count[2] > 200, "%d", count[2]);
	balance_cand one = { 9, 100 };
	cr_expect_eq(pick(b, &one, 1, NULL), 0);
	balance_destroy(b);
}

Test(balance, cache_aware_sticks_to_prefix)
{
	balance *b = mk(BALANCE_CACHE_AWARE);
	balance_cand c[3] = { { 1, 0 }, { 2, 0 }, { 3, 0 } };
	const char *sys_a = "system: you are a pirate who answers in rhymes about the sea\nuser: ";
	const char *sys_b = "system: you are a chef; every answer is a recipe with three steps\nuser: ";
	char t[256];
	snprintf(t, sizeof(t), "%sq0", sys_a);
	int a = pick(b, c, 3, t);
	cr_expect_eq(a, 0, "empty trees: the first of the smallest");
	snprintf(t, sizeof(t), "%sq0", sys_b);
	int bb = pick(b, c, 3, t);
	cr_expect_neq(bb, a, "a new prefix goes to an empty tree");
	for (int i = 1; i < 20; i++) {
		snprintf(t, sizeof(t), "%squestion number %d", sys_a, i);
		cr_expect_eq(pick(b, c, 3, t), a, "prefix A request %d", i);
		snprintf(t, sizeof(t), "%squestion number %d", sys_b, i);
		cr_expect_eq(pick(b, c, 3, t), bb, "prefix B request %d", i);
	}
	/* a third unrelated text goes to the still-empty worker */
	int third = pick(b, c, 3, "completely different text with nothing in common at all");
	cr_expect(third != a && third != bb);
	cr_expect_gt(balance_tree_chars(b, c[a].id), strlen(sys_a));
	balance_destroy(b);
}

Test(balance, cache_aware_threshold)
{
	balance_config cfg = balance_config_default(BALANCE_CACHE_AWARE);
	cfg.cache_threshold = 0.5;
	balance *b = balance_create(&cfg, 1);
	balance_cand c[2] = { { 1, 0 }, { 2, 0 } };
	int out;
	balance_why why;
	cr_assert_eq(balance_pick(b, c, 2, "abcdefghij", 10, &out, &why), 0);
	cr_expect_eq(out, 0);
	/* 5 of 10 characters match: not above 0.5 -> the smaller tree (worker 2) */
	cr_assert_eq(balance_pick(b, c, 2, "abcdeXXXXX", 10, &out, &why), 0);
	cr_expect_eq(out, 1);
	cr_expect_float_eq(why.match_rate, 0.5, 1e-9);
	cr_expect(!why.cache_hit);
	/* 6 of 10 on worker 1's tree: above */
	cr_assert_eq(balance_pick(b, c, 2, "abcdefYYYY", 10, &out, &why), 0);
	cr_expect_eq(out, 0);
	cr_expect(why.cache_hit);
	/* characters, not bytes: "é" is one */
	cr_assert_eq(balance_pick(b, c, 2, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 8, &out, &why), 0);
	cr_assert_eq(balance_pick(b, c, 2, "\xc3\xa9\xc3\xa9\xc3\xa9zz", 8, &out, &why), 0);
	cr_expect_float_eq(why.match_rate, 0.6, 1e-9);
	char err[ERR_LEN];
	cr_expect_eq(balance_check(b, err), 0, "%s", err);
	balance_destroy(b);
}

Test(balance, cache_aware_imbalance_uses_shortest_queue)
{
	balance_config cfg = balance_config_default(BALANCE_CACHE_AWARE);
	cfg.balance_abs_threshold = 4;
	cfg.balance_rel_threshold = 2.0;
	balance *b = balance_create(&cfg, 1);
	balance_cand c[2] = { { 1, 0 }, { 2, 0 } };
	const char *t = "the same prompt every time";
	cr_expect_eq(pick(b, c, 2, t), 0);
	/* worker 1 holds the prefix; loads 10 vs 3: diff 7 > 4 and 10 > 2*3 -> imbalanced */
	c[0].load = 10;
	c[1].load = 3;
	int out;
	balance_why why;
	cr_assert_eq(balance_pick(b, c, 2, t, strlen(t), &out, &why), 0);
	cr_expect_eq(out, 1);
	cr_expect(why.imbalanced);
	/* 10 vs 6: diff 4 is not > 4 -> balanced, the cache wins */
	c[1].load = 6;
	cr_assert_eq(balance_pick(b, c, 2, t, strlen(t), &out, &why), 0);
	cr_expect(!why.imbalanced);
	cr_expect(why.cache_hit);
	/* 20 vs 11: diff 9 > 4 but 20 is not > 2*11 -> balanced */
	c[0].load = 20;
	c[1].load = 11;
	cr_assert_eq(balance_pick(b, c, 2, t, strlen(t), &out, &why), 0);
	cr_expect(!why.imbalanced);
	balance_destroy(b);
}

Test(balance, eviction_and_forget)
{
	balance_config cfg = balance_config_default(BALANCE_CACHE_AWARE);
	cfg.max_tree_size = 100;
	cfg.cache_threshold = 0.99; /* force the smallest-tree path: inserts spread */
	balance *b = balance_create(&cfg, 1);
	balance_cand c[1] = { { 7, 0 } };
	char t[64];
	for (int i = 0; i < 50; i++) {
		snprintf(t, sizeof(t), "prefix-%03d-some-text-to-fill", i);
		pick(b, c, 1, t);
	}
	cr_expect_gt(balance_tree_chars(b, 7), 100);
	balance_evict(b);
	cr_expect_leq(balance_tree_chars(b, 7), 100);
	char err[ERR_LEN];
	cr_expect_eq(balance_check(b, err), 0, "%s", err);
	/* the most recent survive: the last text still matches in full */
	int out;
	balance_why why;
	cfg.cache_threshold = 0.3;
	cr_assert_eq(balance_pick(b, c, 1, t, strlen(t), &out, &why), 0);
	cr_expect_float_eq(why.match_rate, 1.0, 1e-9);
	balance_forget(b, 7);
	cr_expect_eq(balance_tree_chars(b, 7), 0);
	balance_clear(b);
	balance_destroy(b);
}

Test(balance, tree_splits_stay_consistent)
{
	balance *b = mk(BALANCE_CACHE_AWARE);
	balance_cand c[1] = { { 1, 0 } };
	const char *texts[] = { "abcdef", "abcxyz", "ab", "abcdefgh", "b", "abc", "", "abcdeX", "\xe4\xbd\xa0\xe5\xa5\xbd",
				"\xe4\xbd\xa0\xe4\xbb\xac" };
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		pick(b, c, 1, texts[i]);
	/* distinct characters stored: abcdefgh + xyz + X + b(root) + 你好们 */
	cr_expect_eq(balance_tree_chars(b, 1), 8 + 3 + 1 + 1 + 3);
	balance_destroy(b);
}

/* ---------------------------------------------------------------- worker state */

static const worker_policy POL = { .failure_threshold = 3,
				   .success_threshold = 2,
				   .cb_failure_threshold = 2,
				   .cb_success_threshold = 2,
				   .cb_timeout_s = 1.0 };

Test(worker, health_thresholds)
{
	worker_state s;
	worker_state_init(&s);
	cr_expect(!worker_state_routable(&s, &POL, 0), "pending is not routable");
	for (int i = 0; i < 10; i++)
		cr_expect(!worker_state_probe(&s, &POL, false), "pending stays pending on failures");
	cr_expect_eq(s.health, WORKER_PENDING);
	cr_expect(worker_state_probe(&s, &POL, true));
	cr_expect_eq(s.health, WORKER_HEALTHY);
	cr_expect(worker_state_routable(&s, &POL, 0));
	worker_state_probe(&s, &POL, false);
	worker_state_probe(&s, &POL, false);
	cr_expect_eq(s.health, WORKER_HEALTHY, "2 of 3 failures");
	worker_state_probe(&s, &POL, true); /* resets the streak */
	worker_state_probe(&s, &POL, false);
	worker_state_probe(&s, &POL, false);
	cr_expect_eq(s.health, WORKER_HEALTHY);
	cr_expect(worker_state_probe(&s, &POL, false));
	cr_expect_eq(s.health, WORKER_UNHEALTHY);
	cr_expect(!worker_state_routable(&s, &POL, 0));
	cr_expect(!worker_state_probe(&s, &POL, true));
	cr_expect_eq(s.health, WORKER_UNHEALTHY, "1 of 2 successes");
	cr_expect(worker_state_probe(&s, &POL, true));
	cr_expect_eq(s.health, WORKER_HEALTHY);
}

Test(worker, circuit_breaker)
{
	worker_state s;
	worker_state_init(&s);
	worker_state_probe(&s, &POL, true);
	const int64_t S = 1000000000;
	cr_expect(!worker_state_request(&s, &POL, false, 0));
	cr_expect(worker_state_request(&s, &POL, false, 0));
	cr_expect_eq(s.cb, WORKER_CB_OPEN);
	cr_expect(!worker_state_routable(&s, &POL, S / 2), "open before the timeout");
	cr_expect(worker_state_routable(&s, &POL, S + 1), "half open after it");
	cr_expect_eq(s.cb, WORKER_CB_HALF_OPEN);
	cr_expect(worker_state_request(&s, &POL, false, 2 * S), "a failure in half open reopens");
	cr_expect_eq(s.cb, WORKER_CB_OPEN);
	cr_expect(worker_state_routable(&s, &POL, 3 * S + 1));
	worker_state_request(&s, &POL, true, 3 * S + 2);
	cr_expect_eq(s.cb, WORKER_CB_HALF_OPEN);
	worker_state_request(&s, &POL, true, 3 * S + 3);
	cr_expect_eq(s.cb, WORKER_CB_CLOSED);
	/* disabled: never opens */
	worker_policy off = POL;
	off.cb_disabled = true;
	for (int i = 0; i < 10; i++)
		worker_state_request(&s, &off, false, 0);
	cr_expect_eq(s.cb, WORKER_CB_CLOSED);
}

Test(worker, circuit_breaker_window)
{
	worker_state s;
	worker_state_init(&s);
	worker_state_probe(&s, &POL, true);
	const int64_t S = 1000000000;
	worker_policy w = POL; /* 2 failures in a row open it */
	w.cb_window_s = 1;
	worker_state_request(&s, &w, false, 0);
	cr_expect(!worker_state_request(&s, &w, false, 2 * S), "failures 2 s apart with a 1 s window are not in a row");
	cr_expect_eq(s.cb, WORKER_CB_CLOSED);
	cr_expect(worker_state_request(&s, &w, false, 2 * S + S / 2), "two within the window open it");
	cr_expect_eq(s.cb, WORKER_CB_OPEN);
}

Test(worker, recovery_closes_the_breaker)
{
	worker_state s;
	worker_state_init(&s);
	worker_state_probe(&s, &POL, true);
	worker_state_request(&s, &POL, false, 0);
	worker_state_request(&s, &POL, false, 0);
	cr_expect_eq(s.cb, WORKER_CB_OPEN);
	for (int i = 0; i < 3; i++)
		worker_state_probe(&s, &POL, false);
	for (int i = 0; i < 2; i++)
		worker_state_probe(&s, &POL, true);
	cr_expect_eq(s.health, WORKER_HEALTHY);
	cr_expect_eq(s.cb, WORKER_CB_CLOSED, "a worker that came back starts with a closed breaker");
	cr_expect(worker_state_routable(&s, &POL, 0));
}

Test(worker, urls)
{
	worker_url u;
	char err[ERR_LEN];
	cr_assert_eq(worker_url_parse("http://127.0.0.1:30001", &u, err), 0, "%s", err);
	cr_expect_str_eq(u.host, "127.0.0.1");
	cr_expect_eq(u.port, 30001);
	cr_expect_str_eq(u.url, "http://127.0.0.1:30001");
	cr_assert_eq(worker_url_parse("localhost:8000/", &u, err), 0, "%s", err);
	cr_expect_str_eq(u.url, "http://localhost:8000");
	cr_assert_eq(worker_url_parse("http://node-1.example", &u, err), 0, "%s", err);
	cr_expect_eq(u.port, 80);
	cr_assert_eq(worker_url_parse("http://[::1]:9000", &u, err), 0, "%s", err);
	cr_expect_str_eq(u.host, "::1");
	cr_expect_str_eq(u.url, "http://[::1]:9000");
	const char *bad[] = { "", "https://a:1", "http://:80", "http://a:0", "http://a:70000", "http://a:1/v1", "http://a b:1",
			      "http://[::1", "http://a\"b:1", "http://u@h:1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(worker_url_parse(bad[i], &u, err), ERR_INVAL, "accepted '%s'", bad[i]);
		cr_expect_neq(err[0], '\0');
	}
	size_t len;
	int port;
	cr_assert_eq(worker_split_bootstrap("http://p:30000@8998", &len, &port, err), 0);
	cr_expect_eq(port, 8998);
	cr_expect_eq(len, strlen("http://p:30000"));
	cr_assert_eq(worker_split_bootstrap("http://p:30000", &len, &port, err), 0);
	cr_expect_eq(port, 0);
	cr_expect_eq(worker_split_bootstrap("http://p:30000@x", &len, &port, err), ERR_INVAL);
	cr_expect_eq(worker_split_bootstrap("http://p:30000@0", &len, &port, err), ERR_INVAL);
	cr_expect_eq(worker_type_parse("decode"), WORKER_DECODE);
	cr_expect_eq(worker_type_parse("unified"), -1);
}
