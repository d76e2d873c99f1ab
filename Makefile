# moonwire — see README.md. `make` builds bin/moonwire; `make test` installs what is missing
# (Debian), builds and runs every spec.

PREFIX   ?= /usr/local
LUADIR   ?= $(PREFIX)/share/lua/5.1
BINDIR   ?= $(PREFIX)/bin
CC       ?= cc
PKGS     := luajit libuv
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
WARN     := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror
CFLAGS   ?= -O2 -g
# luarocks passes its own CFLAGS (which may be -O2 -fPIC); keep ours as the baseline.
override CFLAGS := $(filter-out -fPIC,$(CFLAGS))
ALL_CFLAGS = $(WARN) $(CFLAGS) -D_GNU_SOURCE -DMW_LUA_DIR='"$(LUADIR)"' $(PKG_CFLAGS) -MMD -MP
# -Wl,-E exports the runtime's mw_* functions so LuaJIT's ffi.C can reach them.
LDFLAGS  ?=
ALL_LDFLAGS = -Wl,-E $(LDFLAGS)
LIBS     := $(PKG_LIBS) -lpthread -lm

BUILD    ?= build
BIN      ?= bin/moonwire
SRCS     := $(wildcard runtime/*.c)
OBJS     := $(SRCS:runtime/%.c=$(BUILD)/%.o)

BUSTED   := luajit /usr/bin/busted
LUA_SRC  := lua handlers examples spec bench

.PHONY: all test ctest unit integration deps lint asan valgrind bench run clean install format

all: $(BIN)

$(BIN): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(OBJS) $(LIBS)

$(BUILD)/%.o: runtime/%.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

-include $(OBJS:.o=.d)
-include bench/bench.mk

# C-level tests link the runtime's own objects (all but main.o).
CTEST_OBJS := $(filter-out $(BUILD)/main.o,$(OBJS))
$(BUILD)/test_core: spec/c/test_core.c $(CTEST_OBJS)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -Wno-missing-prototypes -o $@ $^ $(LIBS)

ctest: $(BUILD)/test_core
	$(BUILD)/test_core

deps:
	@scripts/install-deps.sh

# Unit specs need no server; integration specs start bin/moonwire on loopback ports.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory ctest
	scripts/run-specs.sh spec

unit: all
	$(BUSTED) --exclude-tags=integration spec

integration: all
	$(BUSTED) --tags=integration spec

lint:
	luacheck -q $(wildcard $(LUA_SRC))
	clang-format --dry-run --Werror runtime/*.c runtime/*.h spec/c/*.c $(wildcard bench/*.c)

format:
	clang-format -i runtime/*.c runtime/*.h spec/c/*.c $(wildcard bench/*.c)

# Same specs against a build with AddressSanitizer and UBSan. Sanitizer reports from every
# server the specs start are written under build/asan/reports; any report fails the target.
ASAN_REPORTS := $(CURDIR)/build/asan/reports
asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan BIN=build/asan/moonwire \
		CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
		LDFLAGS="-fsanitize=address,undefined" all
	rm -rf $(ASAN_REPORTS) && mkdir -p $(ASAN_REPORTS)
	MOONWIRE_BIN=build/asan/moonwire MOONWIRE_LUA_DIR=$(CURDIR)/lua MOONWIRE_SANITIZER=1 \
		ASAN_OPTIONS=detect_leaks=1:log_path=$(ASAN_REPORTS)/asan \
		UBSAN_OPTIONS=print_stacktrace=1:log_path=$(ASAN_REPORTS)/ubsan \
		LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp \
		$(BUSTED) spec
	@if ls $(ASAN_REPORTS)/* >/dev/null 2>&1; then cat $(ASAN_REPORTS)/*; echo "asan: sanitizer reports above"; exit 1; fi
	@echo "asan: no sanitizer reports"

# Integration specs with every server under valgrind's memcheck; any report fails.
VALGRIND_DIR := $(CURDIR)/build/valgrind
VALGRIND_SPECS := spec/runtime_spec.lua spec/examples_spec.lua spec/http_integration_spec.lua \
	spec/ws_protocol_spec.lua
valgrind: all
	rm -rf $(VALGRIND_DIR) && mkdir -p $(VALGRIND_DIR)
	MOONWIRE_BIN=$(CURDIR)/scripts/valgrind-moonwire MOONWIRE_VALGRIND_DIR=$(VALGRIND_DIR) \
		$(BUSTED) $(VALGRIND_SPECS)
	@if find $(VALGRIND_DIR) -type f -size +0 | grep -q .; then \
		cat $(VALGRIND_DIR)/*; echo "valgrind: reports above"; exit 1; fi
	@echo "valgrind: no reports"

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-example.sh

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LUADIR)/moonwire
	install -m 755 $(BIN) $(DESTDIR)$(BINDIR)/moonwire
	cd lua && find moonwire -type d -exec install -d $(DESTDIR)$(LUADIR)/{} \;
	cd lua && find moonwire -type f -name '*.lua' -exec install -m 644 {} $(DESTDIR)$(LUADIR)/{} \;
	cd lua && find moonwire -type f ! -name '*.lua' -exec install -m 644 {} $(DESTDIR)$(LUADIR)/{} \;

clean:
	rm -rf $(BUILD) bin bench/bin
