/* The C -> Lua side of a loop: its lua_State and the one dispatcher every event goes
 * through.
 *
 * The stack of each state holds two permanent slots: 1 is the traceback message handler,
 * 2 is the dispatcher returned by moonwire.runtime. An event is one lua_pcall of slot 2 with
 * a few numbers (event, connection id, ...), so a C -> Lua crossing costs one pcall and a
 * handful of pushes. Lua errors never escape: they are logged with their traceback, counted,
 * and close the connection the event was for. */
#include "internal.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

#define SLOT_TRACEBACK 1
#define SLOT_DISPATCH 2

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Runs the dispatcher with nargs arguments already pushed above a copy of it. Returns the
 * numeric result (0 when none), or -1 after logging a Lua error. */
static double call(mw_loop_t *l, mw_conn_t *c, int nargs) {
    lua_State *L = l->L;
    l->in_lua++;
    atomic_store_explicit(&l->dispatch_seq,
                          atomic_load_explicit(&l->dispatch_seq, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&l->in_cb, 1, memory_order_relaxed);
    int rc = lua_pcall(L, nargs, 1, SLOT_TRACEBACK);
    atomic_store_explicit(&l->in_cb, 0, memory_order_relaxed);
    l->in_lua--;
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        MW_STAT_ADD(l->stats.handler_errors, 1);
        if (c)
            MW_LOG(MW_LOG_ERROR, l->id, "handler error (conn %.0f closed): %s", c->id,
                   msg ? msg : "?");
        else
            MW_LOG(MW_LOG_ERROR, l->id, "handler error: %s", msg ? msg : "?");
        lua_settop(L, SLOT_DISPATCH);
        if (c)
            mw__conn_teardown(c, MW_REASON_ERROR, 1);
        return -1;
    }
    double r = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : (lua_toboolean(L, -1) ? 1 : 0);
    lua_settop(L, SLOT_DISPATCH);
    /* Deferred work queued by the callback (a close, say) is picked up by the prepare phase
     * before the loop sleeps. */
    return r;
}

static void push_event(mw_loop_t *l, int ev) {
    lua_State *L = l->L;
    atomic_store_explicit(&l->cb_event, ev, memory_order_relaxed);
    lua_pushvalue(L, SLOT_DISPATCH);
    lua_pushinteger(L, ev);
}

void mw__lua_open(mw_loop_t *l, mw_conn_t *c) {
    lua_State *L = l->L;
    push_event(l, MW_EV_OPEN);
    lua_pushnumber(L, c->id);
    /* Addresses cross as numbers (exact below 2^53): LuaJIT compiles ffi.cast from a number
     * but not from a light userdata, and this is the hot path. */
    lua_pushnumber(L, (lua_Number)(uintptr_t)c);
    call(l, c, 3);
}

long mw__lua_input(mw_loop_t *l, mw_conn_t *c, const char *p, size_t n) {
    lua_State *L = l->L;
    push_event(l, MW_EV_INPUT);
    lua_pushnumber(L, c->id);
    lua_pushnumber(L, (lua_Number)(uintptr_t)p);
    lua_pushinteger(L, (lua_Integer)n);
    double r = call(l, c, 4);
    if (r < 0)
        return -1;
    return (long)r;
}

int mw__lua_event(mw_loop_t *l, mw_conn_t *c, int ev) {
    lua_State *L = l->L;
    push_event(l, ev);
    lua_pushnumber(L, c->id);
    double r = call(l, c, 2);
    return r < 0 ? 1 : (int)r; /* an erroring handler has already closed the connection */
}

void mw__lua_close(mw_loop_t *l, mw_conn_t *c) {
    lua_State *L = l->L;
    push_event(l, MW_EV_CLOSE);
    lua_pushnumber(L, c->id);
    lua_pushstring(L, mw__reason_name(c->reason));
    call(l, NULL, 3); /* the connection is already closing: an error here only logs */
}

void mw__lua_timer(mw_loop_t *l, double ref) {
    lua_State *L = l->L;
    push_event(l, MW_EV_TIMER);
    lua_pushnumber(L, ref);
    call(l, NULL, 2);
}

void mw__lua_shutdown(mw_loop_t *l) {
    push_event(l, MW_EV_SHUTDOWN);
    call(l, NULL, 1);
}

void mw__lua_publish(mw_loop_t *l, mw_blob_t *b) {
    lua_State *L = l->L;
    push_event(l, MW_EV_PUBLISH);
    lua_pushlstring(L, b->data, b->topic_len);
    lua_pushlstring(L, b->data + b->topic_len, b->len);
    call(l, NULL, 3);
}

void mw__lua_reload(mw_loop_t *l) {
    push_event(l, MW_EV_RELOAD);
    call(l, NULL, 1);
}

void mw__lua_profile(mw_loop_t *l, int start) {
    lua_State *L = l->L;
    push_event(l, MW_EV_PROFILE);
    lua_pushinteger(L, start);
    call(l, NULL, 2);
}

void mw__lua_profile_done(mw_loop_t *l, int from, mw_blob_t *b) {
    lua_State *L = l->L;
    push_event(l, MW_EV_PROFILE_DONE);
    lua_pushinteger(L, from);
    lua_pushlstring(L, b->data, b->len);
    call(l, NULL, 3);
}

static int full_gc(lua_State *L) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

uint64_t mw__lua_heap_bytes(mw_loop_t *l) {
    return (uint64_t)lua_gc(l->L, LUA_GCCOUNT, 0) * 1024 + (uint64_t)lua_gc(l->L, LUA_GCCOUNTB, 0);
}

/* A full collection asked for by the admin listener (POST /gc). Run protected: a finalizer
 * that raises propagates its error out of the collector. */
void mw__lua_gc(mw_loop_t *l) {
    lua_State *L = l->L;
    if (L == NULL)
        return;
    uint64_t before = mw__lua_heap_bytes(l);
    lua_pushcfunction(L, full_gc);
    if (lua_pcall(L, 0, 0, SLOT_TRACEBACK) != 0) {
        const char *msg = lua_tostring(L, -1);
        MW_LOG(MW_LOG_ERROR, l->id, "garbage collection: a finalizer failed: %s", msg ? msg : "?");
    }
    lua_settop(L, SLOT_DISPATCH);
    uint64_t after = mw__lua_heap_bytes(l);
    atomic_store_explicit(&l->stats.gc_forced_before, before, memory_order_relaxed);
    atomic_store_explicit(&l->stats.lua_live_bytes, after, memory_order_relaxed);
    atomic_store_explicit(&l->stats.lua_bytes, after, memory_order_relaxed);
    MW_STAT_ADD(l->stats.gc_forced, 1);
}

static void set_path(lua_State *L, const char *script_dir) {
    const char *lua_dir = mw__config.lua_dir;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir,
                    script_dir, script_dir, old ? old : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

int mw__lua_start(mw_loop_t *l, char *err, size_t errlen) {
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state");
        return -1;
    }
    l->L = L;
    luaL_openlibs(L);

    char dir[4096];
    snprintf(dir, sizeof dir, "%s", l->script);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    set_path(L, dir);

    lua_pushcfunction(L, traceback); /* SLOT_TRACEBACK */
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonwire.runtime");
    if (lua_pcall(L, 1, 1, SLOT_TRACEBACK) != 0) {
        snprintf(err, errlen, "cannot load the moonwire Lua library from %s: %s",
                 mw__config.lua_dir, lua_tostring(L, -1));
        return -1;
    }
    lua_getfield(L, -1, "start");
    lua_remove(L, -2);
    lua_pushlightuserdata(L, l);
    lua_pushinteger(L, l->id);
    lua_pushinteger(L, mw__nloops);
    lua_pushstring(L, l->script);
    lua_pushstring(L, l->mode);
    if (mw__config.static_dir)
        lua_pushstring(L, mw__config.static_dir);
    else
        lua_pushnil(L);
    lua_pushstring(L, mw__config.lua_dir);
    if (lua_pcall(L, 7, 1, SLOT_TRACEBACK) != 0) {
        /* The first line carries file:line and the message; the traceback is noise here. */
        const char *msg = lua_tostring(L, -1);
        const char *nl = msg ? strstr(msg, "\nstack traceback:") : NULL;
        int len = nl ? (int)(nl - msg) : (int)(msg ? strlen(msg) : 0);
        snprintf(err, errlen, "%.*s", len, msg ? msg : "?");
        return -1;
    }
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        snprintf(err, errlen, "moonwire.runtime.start did not return a dispatcher");
        return -1;
    }
    lua_settop(L, SLOT_DISPATCH);
    return 0;
}

void mw__lua_stop(mw_loop_t *l) {
    if (l->L) {
        lua_close(l->L);
        l->L = NULL;
    }
}

unsigned mw_config_max_callback_ms(void) {
    return mw__config.max_callback_ms;
}

int mw_abi_version(void) {
    return MW_ABI_VERSION;
}
