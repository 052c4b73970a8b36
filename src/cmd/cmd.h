/* cmd.h - subcommand entry points (argv[0] is the subcommand name). */
#ifndef PDSERVE_CMD_CMD_H
#define PDSERVE_CMD_CMD_H

int cmd_generate(int argc, char **argv);
int cmd_model(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_server(int argc, char **argv); /* also "launch_server" */
int cmd_router(int argc, char **argv); /* also "launch_router" */
int cmd_bench(int argc, char **argv);  /* bench serving | bench engine */
int cmd_bench_serving(int argc, char **argv); /* also "bench_serving" */
int cmd_bench_transfer(int argc, char **argv); /* bench transfer */
int cmd_bench_engine(int argc, char **argv); /* bench engine */

#endif
