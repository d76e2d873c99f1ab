# moonwire — see README.md. `make` builds bin/moonwire; `make test` installs what is missing
# (Debian), builds and runs every spec.

PREFIX   ?= /usr/local
LUADIR   ?= $(PREFIX)/share/lua/5.1
CC       ?= cc
PKGS     := luajit libuv
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
WARN     := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror
CFLAGS   ?= -O2 -g
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

.PHONY: all test unit integration deps lint asan bench run clean install format

all: $(BIN)

$(BIN): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(OBJS) $(LIBS)

$(BUILD)/%.o: runtime/%.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

-include $(OBJS:.o=.d)
-include bench/bench.mk

deps:
	@scripts/install-deps.sh

# Unit specs need no server; integration specs start bin/moonwire on loopback ports.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory lint
	$(BUSTED) --run=default spec

unit: all
	$(BUSTED) --exclude-tags=integration spec

integration: all
	$(BUSTED) --tags=integration spec

lint:
	luacheck -q $(wildcard $(LUA_SRC))
	clang-format --dry-run --Werror runtime/*.c runtime/*.h $(wildcard bench/*.c)

format:
	clang-format -i runtime/*.c runtime/*.h $(wildcard bench/*.c)

# Same specs against a build with AddressSanitizer and UBSan.
asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan BIN=build/asan/moonwire \
		CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
		LDFLAGS="-fsanitize=address,undefined" all
	MOONWIRE_BIN=build/asan/moonwire ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp \
		$(BUSTED) spec

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-example.sh

clean:
	rm -rf $(BUILD) bin bench/bin
