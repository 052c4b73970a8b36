/* plot.c - data files and a gnuplot script for one run.
 *
 * Design. The data files are the product; the PNGs are a convenience drawn
 * by running `gnuplot plots.gp` inside DIR (fork, chdir, exec: no shell, so
 * any DIR name works). The study script (bench/pd_vs_unified.sh) reads the
 * same .dat files to overlay configurations in one picture.
 *
 * Throughput buckets are 1/100 of the run, at least 0.1 s, so a short run
 * still shows its shape.
 *
 * Left out: interactive terminals, SVG.
 */
#include "bench/plot.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/log.h"

int plot_have_gnuplot(void)
{
	const char *path = getenv("PATH");
	if (!path)
		return 0;
	char buf[4096];
	while (*path) {
		const char *end = strchr(path, ':');
		size_t n = end ? (size_t)(end - path) : strlen(path);
		if (n > 0 && n < sizeof(buf) - 16) {
			memcpy(buf, path, n);
			strcpy(buf + n, "/gnuplot");
			if (access(buf, X_OK) == 0)
				return 1;
		}
		path += n + (end ? 1 : 0);
	}
	return 0;
}

static FILE *open_in(const char *dir, const char *name, char err[ERR_LEN])
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	if (!f)
		err_set(err, ERR_IO, "%s: %s", p, strerror(errno));
	return f;
}

static int close_file(FILE *f, const char *dir, const char *name, char err[ERR_LEN])
{
	if (ferror(f) | fclose(f))
		return err_set(err, ERR_IO, "%s/%s: write failed", dir, name);
	return 0;
}

static int cdf_file(const char *dir, const char *name, double *v, size_t n, char err[ERR_LEN])
{
	summary_dist d;
	summary_dist_of(v, n, &d); /* sorts */
	FILE *f = open_in(dir, name, err);
	if (!f)
		return ERR_IO;
	fprintf(f, "# value_ms cumulative_fraction\n");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%.4f %.6f\n", v[i] * 1e3, (double)(i + 1) / (double)n);
	if (n == 0)
		fprintf(f, "0 0\n"); /* gnuplot refuses an empty file */
	return close_file(f, dir, name, err);
}

static void gp_quote(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputc('\'', f); /* '' inside single quotes */
		if (*s != '\n')
			fputc(*s, f);
	}
	fputc('\'', f);
}

static const char SCRIPT[] =
	"if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
	"  set terminal pngcairo size 960,600 noenhanced font ',10'\n"
	"} else {\n"
	"  set terminal png size 960,600 noenhanced\n"
	"}\n"
	"set grid\n"
	"set key top left\n"
	"set output 'ttft_cdf.png'\n"
	"set title 'TTFT CDF: '.T\n"
	"set xlabel 'TTFT (ms)'; set ylabel 'fraction of requests'; set yrange [0:1]\n"
	"plot 'ttft.dat' using 1:2 with steps lw 2 notitle\n"
	"set output 'tpot_cdf.png'\n"
	"set title 'TPOT CDF: '.T\n"
	"set xlabel 'TPOT (ms)'\n"
	"plot 'tpot.dat' using 1:2 with steps lw 2 notitle\n"
	"set output 'itl_time.png'\n"
	"set title 'Inter-token latency over time, one colour per request: '.T\n"
	"set xlabel 'time since the first request (s)'; set ylabel 'ITL (ms)'; set yrange [0:*]\n"
	"plot 'itl.dat' using 1:2:3 with points pt 7 ps 0.4 lc variable notitle\n"
	"set output 'throughput.png'\n"
	"set title 'Output throughput and running requests: '.T\n"
	"set xlabel 'time since the first request (s)'; set ylabel 'output tokens/s'\n"
	"set y2label 'running requests'; set y2tics; set ytics nomirror; set y2range [0:*]\n"
	"plot 'throughput.dat' using 1:2 with steps lw 2 title 'output tok/s', \\\n"
	"     '' using 1:3 axes x1y2 with steps lw 1 title 'running requests'\n";

static int run_gnuplot(const char *dir)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (chdir(dir) != 0)
			_exit(127);
		execlp("gnuplot", "gnuplot", "plots.gp", (char *)NULL);
		_exit(127);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int plot_write(const char *dir, const char *title, const summary_req *r, size_t n, double dur, char err[ERR_LEN])
{
	if (mkdir(dir, 0777) != 0 && errno != EEXIST)
		return err_set(err, ERR_IO, "%s: %s", dir, strerror(errno));
	size_t ok = 0;
	for (size_t i = 0; i < n; i++)
		ok += r[i].success;
	double *v = alloc_array(ok ? ok : 1, sizeof(double));
	if (!v)
		return err_set(err, ERR_NOMEM, "out of memory");
	int rc;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (r[i].success)
			v[k++] = r[i].ttft_s;
	if ((rc = cdf_file(dir, "ttft.dat", v, k, err)) < 0)
		goto done;
	k = 0;
	for (size_t i = 0; i < n; i++)
		if (r[i].success && summary_tpot(&r[i]) >= 0)
			v[k++] = summary_tpot(&r[i]);
	if ((rc = cdf_file(dir, "tpot.dat", v, k, err)) < 0)
		goto done;

	FILE *f = open_in(dir, "itl.dat", err);
	if (!f) {
		rc = ERR_IO;
		goto done;
	}
	fprintf(f, "# time_s itl_ms request\n");
	size_t points = 0;
	for (size_t i = 0; i < n; i++) {
		if (!r[i].success || !r[i].n_itl)
			continue;
		double at = r[i].start_s + r[i].ttft_s;
		for (size_t j = 0; j < r[i].n_itl; j++) {
			at += r[i].itl[j];
			fprintf(f, "%.6f %.4f %zu\n", at, r[i].itl[j] * 1e3, i);
			points++;
		}
		fprintf(f, "\n");
	}
	if (!points)
		fprintf(f, "0 0 0\n");
	if ((rc = close_file(f, dir, "itl.dat", err)) < 0)
		goto done;

	double w = dur / 100 > 0.1 ? dur / 100 : 0.1;
	size_t nb = (size_t)ceil((dur > 0 ? dur : 0) / w) + 1;
	double *tok = alloc_zeroed(nb, sizeof(double)), *run = alloc_zeroed(nb, sizeof(double));
	if (!tok || !run) {
		alloc_free(tok);
		alloc_free(run);
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		if (!r[i].success)
			continue;
		double at = r[i].start_s + r[i].ttft_s;
		if (r[i].ttft_s > 0 && at >= 0 && (size_t)(at / w) < nb)
			tok[(size_t)(at / w)] += 1;
		for (size_t j = 0; j < r[i].n_itl; j++) {
			at += r[i].itl[j];
			if (at >= 0 && (size_t)(at / w) < nb)
				tok[(size_t)(at / w)] += 1;
		}
		/* running: the fraction of each bucket the request overlaps */
		double a = r[i].start_s, b = r[i].start_s + r[i].latency_s;
		for (size_t j = a > 0 ? (size_t)(a / w) : 0; j < nb && (double)j * w < b; j++) {
			double lo = (double)j * w, hi = lo + w;
			double o = (b < hi ? b : hi) - (a > lo ? a : lo);
			if (o > 0)
				run[j] += o / w;
		}
	}
	if (!(f = open_in(dir, "throughput.dat", err))) {
		alloc_free(tok);
		alloc_free(run);
		rc = ERR_IO;
		goto done;
	}
	fprintf(f, "# time_s output_tok_per_s running_requests (bucket %.3f s)\n", w);
	for (size_t j = 0; j < nb; j++)
		fprintf(f, "%.3f %.2f %.3f\n", (double)j * w, tok[j] / w, run[j]);
	alloc_free(tok);
	alloc_free(run);
	if ((rc = close_file(f, dir, "throughput.dat", err)) < 0)
		goto done;

	if (!(f = open_in(dir, "plots.gp", err))) {
		rc = ERR_IO;
		goto done;
	}
	fprintf(f, "# pdserve bench serving --plot: run `gnuplot plots.gp` in this folder\nT = ");
	gp_quote(f, title ? title : "");
	fprintf(f, "\n%s", SCRIPT);
	if ((rc = close_file(f, dir, "plots.gp", err)) < 0)
		goto done;

	if (!plot_have_gnuplot()) {
		LOGW("bench", "plot: gnuplot not found on PATH; wrote the data and %s/plots.gp, skipped the PNGs "
			      "(apt-get install gnuplot-nox)", dir);
		rc = 1;
	} else if (run_gnuplot(dir) != 0) {
		LOGW("bench", "plot: gnuplot failed in %s; the data files and plots.gp are there", dir);
		rc = 1;
	} else {
		rc = 0;
	}
done:
	alloc_free(v);
	return rc;
}
