/* plot.h - `--plot DIR`: PNG plots of one benchmark run through gnuplot.
 *
 * Writes, into DIR (created if absent):
 *   ttft.dat, tpot.dat   sorted values (ms) and their cumulative fraction
 *   itl.dat              "time_s itl_ms request" per text chunk after the
 *                        first, one block per request (time since the first
 *                        send, so prefill interruptions line up across requests)
 *   throughput.dat       "time_s output_tok_per_s running_requests" per bucket
 *   plots.gp             the gnuplot script, then, when gnuplot is on PATH:
 *   ttft_cdf.png, tpot_cdf.png, itl_time.png, throughput.png
 * Without gnuplot the data files and the script are still written and the
 * PNGs are skipped with one log line: plots never fail a benchmark.
 *
 * Chunk times are rebuilt from each request's start, TTFT and ITL list.
 */
#ifndef PDSERVE_BENCH_PLOT_H
#define PDSERVE_BENCH_PLOT_H

#include "base/err.h"
#include "bench/summary.h"

/* title goes on every plot (borrowed). Returns 0 (PNGs written), 1 (data
   and script written, gnuplot missing or failed: logged), or an error with
   err when DIR or a file cannot be written. */
int plot_write(const char *dir, const char *title, const summary_req *r, size_t n, double duration_s,
	       char err[ERR_LEN]);

/* Whether an executable `gnuplot` is on PATH. */
int plot_have_gnuplot(void);

#endif
