# pdserve - one plain Makefile.
#
#   make            build build/pdserve (-O2, C11, -Wall -Wextra -Werror)
#   make test       build and run every unit test and the e2e scripts
#   make check      the same under ASan+UBSan, in build/san
#   make faults     the fault matrix (tests/faults/*.sh; also part of make test)
#   make demo       the main job: prefill + decode + router, a chat completion streamed
#   make demo-stop  stop it (make demo-1p3d: 1 prefill, 3 decodes)
#   make soak       SOAK_MINUTES (30) of mixed load through router + 1P2D with
#                   worker restarts; RSS must stay flat (not in test/CI)
#   make clean
#
# BUILD=dir puts objects elsewhere (several builds can share one tree).
# Sources are discovered: every src/**/*.c except src/cmd/ goes into
# libpdserve.a; src/cmd/*.c make the pdserve binary; tests/unit/*_test.c are
# one Criterion program each. Files under src/kernels/x86/ are compiled with
# the ISA flags named in ISA_FLAGS_<file> and only called after runtime
# CPU-feature dispatch (src/kernels/dispatch.c).

BUILD   ?= build
CC      ?= cc
OPT     ?= -O2
SAN     ?=
CFLAGS  ?=
PKGS    := libevent libevent_pthreads json-c libcurl libcrypto
# UCX is optional: without it the ucx transfer backend reports itself unavailable.
HAVE_UCX := $(shell pkg-config --exists ucx 2>/dev/null && echo 1)
ifeq ($(HAVE_UCX),1)
PKGS    += ucx
UCX_DEF := -DPDSERVE_HAVE_UCX
endif
WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CPPFLAGS_ALL := -Isrc -D_GNU_SOURCE -DPDSERVE_SRCDIR='"$(CURDIR)"' $(UCX_DEF) $(shell pkg-config --cflags $(PKGS))
CFLAGS_ALL := -std=c11 $(OPT) -g $(WARN) -pthread -fno-strict-aliasing $(SAN) $(CFLAGS)
LDLIBS_ALL := $(shell pkg-config --libs $(PKGS)) -lm -pthread $(SAN)

ifneq ($(SAN),)
CFLAGS_ALL += -fno-omit-frame-pointer
endif

LIB_SRC  := $(shell find src -name '*.c' ! -path 'src/cmd/*' | sort)
CMD_SRC  := $(sort $(wildcard src/cmd/*.c))
TEST_SRC := $(sort $(wildcard tests/unit/*_test.c))
TEST_HELPERS := $(filter-out $(TEST_SRC),$(sort $(wildcard tests/unit/*.c)))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CMD_OBJ  := $(CMD_SRC:%.c=$(BUILD)/%.o)
HELP_OBJ := $(TEST_HELPERS:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:%.c=$(BUILD)/%)
LIB      := $(BUILD)/libpdserve.a
BIN      := $(BUILD)/pdserve

# Per-ISA kernel files (issue: kernels). Each gets its own -m flags.
$(BUILD)/src/kernels/x86/avx2.o:   ISA := -mavx2 -mfma -mf16c
$(BUILD)/src/kernels/x86/avx512.o: ISA := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mfma -mf16c

.PHONY: all test check clean unit e2e faults demo demo-1p3d demo-stop fuzz fuzz-bins bench-kernels soak
.SECONDARY:
all: $(BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(ISA) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(CMD_OBJ) $(LIB)
	$(CC) $(CFLAGS_ALL) -o $@ $(CMD_OBJ) $(LIB) $(LDLIBS_ALL)

$(BUILD)/tests/unit/%_test: $(BUILD)/tests/unit/%_test.o $(HELP_OBJ) $(LIB)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(HELP_OBJ) $(LIB) -lcriterion -ljson-c $(LDLIBS_ALL)

# Each test's output goes to BUILD/tests/unit/NAME.log; we print Criterion's
# lines and every sanitizer report. A report fails the run even when the
# test's exit status does not say so (LeakSanitizer inside Criterion's
# workers exits 0 for the runner).
SAN_REPORT := ERROR: (Leak|Address|Thread)Sanitizer|runtime error:
unit: $(TEST_BIN) $(BIN)
	@fail=0; for t in $(TEST_BIN); do \
		echo "== $$t"; \
		PDSERVE_BIN=$(abspath $(BIN)) $$t --jobs 2 > $$t.log 2>&1 || { fail=1; echo "FAILED: $$t (see $$t.log)"; }; \
		grep -E '^\[(FAIL|====)\]|Assertion|Crash|$(SAN_REPORT)' $$t.log; \
		if grep -Eq '$(SAN_REPORT)' $$t.log; then fail=1; echo "SANITIZER REPORT: $$t (see $$t.log)"; fi; \
	done; exit $$fail

e2e: $(BIN)
	@fail=0; for t in $(sort $(wildcard tests/e2e/*.sh)); do \
		echo "== $$t"; \
		PDSERVE_BIN=$(abspath $(BIN)) bash $$t || fail=1; \
	done; exit $$fail

# The fault matrix: real processes, faults injected at known phases
# (tests/faults/faults.py says what each case asserts).
FAULT_SH := $(filter-out tests/faults/lib.sh,$(sort $(wildcard tests/faults/*.sh)))
faults: $(BIN)
	@fail=0; for t in $(FAULT_SH); do \
		echo "== $$t"; \
		PDSERVE_BIN=$(abspath $(BIN)) bash $$t || fail=1; \
	done; exit $$fail

test: $(BIN) $(TEST_BIN)
	@$(MAKE) --no-print-directory unit e2e faults

check:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/san OPT=-O1 \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

# The main job: prefill + decode + router on loopback (scripts/demo.sh builds
# first), one chat completion streamed through them; the stack stays up until
# `make demo-stop`. demo-1p3d: the 1 prefill : 3 decode layout.
demo:
	@BUILD=$(BUILD) scripts/demo.sh
demo-1p3d:
	@BUILD=$(BUILD) DECODES=3 scripts/demo.sh
demo-stop:
	@BUILD=$(BUILD) scripts/demo.sh stop

# The soak (tests/soak/soak.sh says what it does and asserts): long, so never
# part of test, check or CI. SOAK_MINUTES=3 for a try; results (samples.csv,
# summary.json, logs) in BUILD/soak/DATE unless SOAK_RESULTS names a folder.
SOAK_MINUTES ?= 30
soak: $(BIN)
	PDSERVE_BIN=$(abspath $(BIN)) SOAK_MINUTES=$(SOAK_MINUTES) \
		SOAK_RESULTS=$${SOAK_RESULTS:-$(abspath $(BUILD))/soak/$$(date -u +%Y%m%d-%H%M%S)} bash tests/soak/soak.sh

# libFuzzer targets (tests/fuzz/*_fuzz.c), built with clang + ASan/UBSan in
# BUILD/fuzz, each run for FUZZ_SECONDS over its committed seed corpus
# (tests/fuzz/corpus/NAME) plus what it finds (BUILD/fuzz/corpus/NAME).
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(sort $(wildcard tests/fuzz/*_fuzz.c))
FUZZ_BIN := $(FUZZ_SRC:%.c=$(BUILD)/%)
$(BUILD)/tests/fuzz/%_fuzz: $(BUILD)/tests/fuzz/%_fuzz.o $(LIB)
	$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer -o $@ $< $(LIB) $(LDLIBS_ALL)
fuzz-bins: $(FUZZ_BIN)
fuzz:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/fuzz CC=clang OPT=-O1 \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link" fuzz-bins
	@fail=0; for src in $(FUZZ_SRC); do \
		t=$$(basename $$src .c); mkdir -p $(BUILD)/fuzz/corpus/$$t; \
		echo "== $$t ($(FUZZ_SECONDS) s)"; \
		$(BUILD)/fuzz/tests/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
			> $(BUILD)/fuzz/$$t.log 2>&1 || { fail=1; tail -30 $(BUILD)/fuzz/$$t.log; }; \
		grep -E "stat::number_of_executed_units|Done [0-9]+ runs" $(BUILD)/fuzz/$$t.log | tail -1; \
	done; exit $$fail

# Kernel micro-benchmarks (bench/kernels.c): every implementation the CPU
# supports against ref. BENCH_ARGS passes flags, e.g. BENCH_ARGS=--quick.
# BUILD/bench/NAME builds any other bench/NAME.c (e.g. requant).
bench-kernels: $(BUILD)/bench/kernels
	$(BUILD)/bench/kernels $(BENCH_ARGS)
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(LIB) $(LDLIBS_ALL)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
