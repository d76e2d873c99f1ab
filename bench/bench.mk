# bench/bench.mk: benchmark tools, included by the top-level Makefile, which
# runs from the repository root. `make bench-tools` builds bench/bin/*;
# `make bench` runs bench/run.sh (all scenarios; see docs/BENCHMARKS.md).

BENCH_CC ?= $(CC)
BENCH_CFLAGS ?= -std=c11 -O2 -Wall -Wextra -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Werror -D_GNU_SOURCE
BENCH_UV_CFLAGS := $(shell pkg-config --cflags libuv)
BENCH_UV_LIBS := $(shell pkg-config --libs libuv)

BENCH_BIN := bench/bin
BENCH_TOOLS := $(BENCH_BIN)/echo_c $(BENCH_BIN)/http_c $(BENCH_BIN)/ws_c $(BENCH_BIN)/loadgen \
	$(BENCH_BIN)/churn

.PHONY: bench-tools bench bench-clean

bench-tools: $(BENCH_TOOLS)

$(BENCH_BIN):
	mkdir -p $@

$(BENCH_BIN)/echo_c $(BENCH_BIN)/http_c: $(BENCH_BIN)/%: bench/%.c | $(BENCH_BIN)
	$(BENCH_CC) $(BENCH_CFLAGS) $(BENCH_UV_CFLAGS) -o $@ $< $(BENCH_UV_LIBS)

$(BENCH_BIN)/ws_c $(BENCH_BIN)/loadgen: $(BENCH_BIN)/%: bench/%.c | $(BENCH_BIN)
	$(BENCH_CC) $(BENCH_CFLAGS) $(BENCH_UV_CFLAGS) -o $@ $< $(BENCH_UV_LIBS) -lcrypto

$(BENCH_BIN)/churn: bench/churn.c | $(BENCH_BIN)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $<

# Scenarios can be picked with BENCH_ARGS, e.g. make bench BENCH_ARGS="tcp idle".
bench: bench-tools
	scripts/install-deps.sh --bench
	bash bench/run.sh $(BENCH_ARGS)

bench-clean:
	rm -rf $(BENCH_BIN)
