/*
 * mcr.h — annotations for programs live-updated by mcr.
 *
 * Everything here compiles to nothing-at-run-time when the program runs without mcr: the
 * runtime's entry points are weak references that stay null unless libmcr.so is
 * preloaded (which `mcr run` and `mcr update` do). No linking against anything.
 *
 *   #include "mcr.h"
 *
 *   // Accept that the new version no longer listens on the second port.
 *   static int drop_second_listener(const struct mcr_conflict *c) {
 *       return c->kind == MCR_CONFLICT_DROPPED && strcmp(c->call, "socket") == 0;
 *   }
 *   MCR_ADD_REINIT_HANDLER(drop_second_listener);
 *
 *   if (mcr_is_live_update()) { ... skip work the old version already did ... }
 */
#ifndef MCR_H
#define MCR_H

#ifdef __cplusplus
extern "C" {
#endif

/* What kind of replay conflict a reinit handler is asked about. */
enum mcr_conflict_kind {
    /* The new version reconfigures an object it inherited, in a way the old version's
     * startup never did (e.g. bind on the inherited listening socket with another address).
     * Accepting runs the operation live on the inherited object. */
    MCR_CONFLICT_MISMATCH = 1,
    /* An object the old version created at startup and still uses is never claimed by the
     * new version's startup (e.g. a listener it no longer opens). Accepting closes it. */
    MCR_CONFLICT_DROPPED = 2,
};

struct mcr_conflict {
    enum mcr_conflict_kind kind;
    int pid;              /* the process (PID inside the instance's namespace) */
    const char *call;     /* "bind", "socket", "open", ... */
    const char *reason;   /* one sentence, as mcr reports it */
    const char *stack;    /* the call stack, innermost first: "f < g < main" */
};

/* Return non-zero to accept (resolve) the conflict, 0 to let the update roll back. */
typedef int (*mcr_reinit_handler_t)(const struct mcr_conflict *conflict);

/* Provided by libmcr.so; null without mcr. */
extern int mcr_runtime_add_reinit_handler(mcr_reinit_handler_t handler, const char *name) __attribute__((weak));
extern int mcr_runtime_is_live_update(void) __attribute__((weak));

/* 1 when this process is the new version of a live update (it was started by
 * `mcr update` and its startup is replayed against the old version's), else 0. */
static inline int mcr_is_live_update(void)
{
    return mcr_runtime_is_live_update ? mcr_runtime_is_live_update() : 0;
}

/* Register `fn` (an mcr_reinit_handler_t) before main runs. */
#define MCR_ADD_REINIT_HANDLER(fn)                                                   \
    static void __attribute__((constructor)) mcr_add_reinit_handler_##fn(void)       \
    {                                                                                \
        if (mcr_runtime_add_reinit_handler)                                          \
            mcr_runtime_add_reinit_handler((fn), #fn);                               \
    }

/* ---- Object handlers -------------------------------------------------------------------
 *
 * The state transfer rebuilds every object in the new version's layout by itself (fields
 * by name, integers resized, pointers relocated). A handler, in the NEW version, does what
 * it cannot: a field renamed or moved into a sub-struct, a value re-encoded. It runs in
 * the new process after the automatic transformation of each object, with the old bytes
 * (pointers in them are the old version's addresses; pointer fields of `new` are already
 * relocated) and the new object to adjust. Return 0, or non-zero to stop the update.
 * WHAT is a type ("struct kv_node": every heap object of it) or a global ("stats").
 *
 *   struct kv_node_v1 { char *key; char *value; unsigned hash; int hits; void *next; };
 *   static int move_hits(const struct mcr_obj *o) {
 *       const struct kv_node_v1 *old = o->old;
 *       ((struct kv_node *)o->new_obj)->meta.hits = old->hits;
 *       return 0;
 *   }
 *   MCR_ADD_OBJ_HANDLER("struct kv_node", move_hits);
 *
 * Pointers in the old bytes are the old version's addresses. mcr_translate() (below) gives
 * the new address of what one points to, e.g. for a pointer field renamed or moved, which
 * the automatic transformation drops (the old field) and zeroes (the new one):
 *
 *   struct kv_node_v1 { char *key; char *value; unsigned hash; int hits; struct kv_node_v1 *next; };
 *   static int relink(const struct mcr_obj *o) {
 *       const struct kv_node_v1 *old = o->old;
 *       struct kv_node *n = o->new_obj;
 *       n->link.next = mcr_translate(o, old->next);   // next became link.next
 *       return old->next && !n->link.next;             // a node mcr did not move: roll back
 *   }
 *   MCR_ADD_OBJ_HANDLER("struct kv_node", relink);
 */
struct mcr_obj {
    const char *what;     /* the WHAT the handler was registered for */
    const void *old;      /* a copy of the old object's bytes */
    unsigned long old_size;
    void *new_obj;        /* the new object, already transformed by mcr */
    unsigned long new_size;
};
typedef int (*mcr_obj_handler_t)(const struct mcr_obj *obj);
extern int mcr_runtime_add_obj_handler(const char *what, mcr_obj_handler_t handler, const char *name) __attribute__((weak));

#define MCR_ADD_OBJ_HANDLER(what, fn)                                                \
    MCR_HINT_("handler " what);                                                      \
    static void __attribute__((constructor)) mcr_add_obj_handler_##fn(void)          \
    {                                                                                \
        if (mcr_runtime_add_obj_handler)                                             \
            mcr_runtime_add_obj_handler((what), (fn), #fn);                          \
    }

/* In an object handler: the new version's address for OLD_PTR, an address of the OLD
 * version (a pointer found in o->old). mcr knows where it put
 *   - every heap block the transfer moved (reached from the globals): the address at the
 *     same offset into the new block; in an object (or array element) whose type changed
 *     layout, only the object's (element's) start translates;
 *   - every global and static of the main binary the new version also has (same name):
 *     the same offset into the new one (the start only, if its type changed layout).
 * It returns NULL for NULL and for any other address: a heap block the transfer did not
 * reach, a string literal, a function, a library's or a stack's memory (those keep their
 * addresses across an update: use them as they are). Heap objects it leads to are already
 * transformed when handlers of heap types run; globals are rebuilt after those handlers,
 * in order. Only meaningful while a handler runs (NULL otherwise, and without mcr); `o` is
 * the handler's argument. */
extern void *mcr_runtime_translate(const struct mcr_obj *obj, const void *old_ptr) __attribute__((weak));
static inline void *mcr_translate(const struct mcr_obj *o, const void *old_ptr)
{
    return (mcr_runtime_translate && old_ptr) ? mcr_runtime_translate(o, old_ptr) : (void *)0;
}

/* ---- State transfer hints -------------------------------------------------------------
 *
 * mcr moves a server's heap into the new version by following typed pointers (DWARF). A
 * `void *`, a union or a pointer-sized integer that holds a heap address is opaque to it:
 * it stops the update, naming the path to that word. These hints resolve it. They are
 * strings in the binary's `mcr_hints` section, read by `mcr update` from the file: no code,
 * no run-time cost. WHERE is a global ("last_set", also for a static) or a struct field
 * ("conn.ctx", "struct conn.ctx"; array indices are left out); TYPE is a C type name
 * ("struct kv_node").
 *
 *   MCR_POINTS_TO("last_set", "struct kv_node");   // the union holds a struct kv_node *
 *   MCR_OPAQUE("conn.cookie");                     // looks like a pointer, is not one
 *   MCR_TAGGED("conn.ev", 1);                      // a pointer with a tag in its low bit
 */
#define MCR_HINT_CAT2_(a, b) a##b
#define MCR_HINT_CAT_(a, b) MCR_HINT_CAT2_(a, b)
#define MCR_HINT_(text)                                                                     \
    static const char MCR_HINT_CAT_(mcr_hint_, __COUNTER__)[]                               \
        __attribute__((used, section("mcr_hints"), aligned(1))) = text

/* WHERE holds a pointer to a TYPE (whatever it is declared as): follow it precisely. */
#define MCR_POINTS_TO(where, type) MCR_HINT_("points_to " where "=" type)
/* WHERE never holds a pointer mcr must update, whatever it looks like: copy it as bytes. */
#define MCR_OPAQUE(where) MCR_HINT_("opaque " where)
/* WHERE holds a pointer with a tag in its low BITS bits (1 to 4; nginx's "instance" bit:
 * `(uintptr_t)c | instance`). mcr masks the tag off to follow and relocate the pointer,
 * and puts the same bits back on the new address. The pointer is of WHERE's declared type,
 * or of the TYPE of an MCR_POINTS_TO for the same WHERE (needed when WHERE is an integer
 * or a union); a tagged integer without one moves its block untyped. Without the hint, a
 * tagged pointer is one pointing a few bytes into a block, which stops an update that
 * changes the block's type (and a tagged integer or union stops every update). */
#define MCR_TAGGED(where, bits) MCR_HINT_("tagged " where "=" #bits)

/* ---- Resuming sessions -----------------------------------------------------------------
 *
 * A thread that serves a connection with blocking reads keeps the session on its stack,
 * and mcr does not move stacks. With a resume handler in the NEW version, mcr moves such
 * connections anyway: each keeps its descriptor number, and the session's heap state
 * moves with the rest of the heap when it is reachable from a global (a list of the
 * sessions being served, the session a worker process is serving). Right after the update
 * commits, mcr calls the handler once in every process of the new version, on its main
 * thread, at the quiescent point that thread was parked at, before that call goes on; the
 * process's other threads stay parked until it returns. The handler hands the sessions
 * back to the program's own code: it queues them for the worker threads, or serves the
 * one a single-threaded worker process was serving (it may block for as long as the
 * client stays; the main thread's call resumes when it returns). Without a resume
 * handler, `mcr update` waits for thread-served connections to close (--drain-timeout)
 * and rolls back if they do not.
 *
 *   static struct session *serving;         // set while a worker serves a client
 *   static int resume_session(void) {
 *       if (serving) { serve(serving); end_session(serving); serving = NULL; }
 *       return 0;
 *   }
 *   MCR_ADD_RESUME_HANDLER(resume_session);
 */
/* A fork-per-connection server (sshd, vsftpd style) keeps each session in its own process,
 * which the new version's startup never recreates. With a respawn handler in the NEW
 * version, mcr recreates them: before the state transfer it installs the connection in the
 * new parent process and calls the handler there (on its main thread) with the descriptor;
 * the handler forks as the accept loop does and returns fork()'s result in both processes.
 * The child gets the old child's PID and stays held: the old child's globals and heap move
 * into it (keep the session reachable from a global), and at commit its resume handler
 * serves the session (and exits when it ends, as the accept loop's child would). In the
 * parent, close the descriptor as the accept loop does.
 *
 *   static pid_t respawn_session(int fd) {
 *       pid_t pid = fork();
 *       if (pid == 0) { close(listen_fd); return 0; }   // held; the resume handler serves
 *       close(fd);
 *       return pid;
 *   }
 *   MCR_ADD_RESPAWN_HANDLER(respawn_session);
 */
/* A server whose state mcr cannot move (--fresh-state: nginx, with its pools and void *
 * module data) can still keep its idle connections, such as HTTP keep-alive connections
 * between requests. The OLD build's idle check tells mcr, while the server is quiesced,
 * whether the connection on `fd` holds any program state (return non-zero when it holds
 * none); mcr drains the busy ones and moves the idle ones into the new version, where the
 * resume handler takes them up as if just accepted: mcr_adopted_fds() lists them.
 *
 *   static int keepalive_idle(int fd) { return conn_of(fd)->waiting_for_request; }
 *   MCR_ADD_IDLE_CHECK(keepalive_idle);
 *
 *   static int adopt(void) {
 *       int fds[1024], n = mcr_adopted_fds(fds, 1024);
 *       if (!event_loop_ready) return 1;         // again at the next quiescent point
 *       for (int i = 0; i < n && i < 1024; i++) handle_new_connection(fds[i]);
 *       return 0;
 *   }
 *   MCR_ADD_RESUME_HANDLER(adopt);
 */
typedef int (*mcr_idle_check_t)(int fd);
extern int mcr_runtime_add_idle_check(mcr_idle_check_t check, const char *name) __attribute__((weak));
extern int mcr_runtime_adopted_fds(int *fds, int max) __attribute__((weak));

/* The connections mcr moved into this process for it to adopt (at most `max` are written
 * to `fds`); returns how many there are. 0 without mcr, or when the state was transferred. */
static inline int mcr_adopted_fds(int *fds, int max)
{
    return mcr_runtime_adopted_fds ? mcr_runtime_adopted_fds(fds, max) : 0;
}

#define MCR_ADD_IDLE_CHECK(fn)                                                       \
    MCR_HINT_("idle " #fn);                                                          \
    static void __attribute__((constructor)) mcr_add_idle_check_##fn(void)           \
    {                                                                                \
        if (mcr_runtime_add_idle_check)                                              \
            mcr_runtime_add_idle_check((fn), #fn);                                   \
    }

typedef int (*mcr_respawn_handler_t)(int fd);
extern int mcr_runtime_add_respawn_handler(mcr_respawn_handler_t handler, const char *name) __attribute__((weak));

#define MCR_ADD_RESPAWN_HANDLER(fn)                                                  \
    MCR_HINT_("respawn " #fn);                                                       \
    static void __attribute__((constructor)) mcr_add_respawn_handler_##fn(void)      \
    {                                                                                \
        if (mcr_runtime_add_respawn_handler)                                         \
            mcr_runtime_add_respawn_handler((fn), #fn);                              \
    }

/* Return 0 when done, or non-zero to be called again at the main thread's next quiescent
 * point: where the new version's main thread was parked (its first blocking call) may be
 * before the program finished setting up (nginx tests epoll there); the process's other
 * threads run by then. */
typedef int (*mcr_resume_handler_t)(void);
extern int mcr_runtime_add_resume_handler(mcr_resume_handler_t handler, const char *name) __attribute__((weak));

#define MCR_ADD_RESUME_HANDLER(fn)                                                   \
    MCR_HINT_("resume " #fn);                                                        \
    static void __attribute__((constructor)) mcr_add_resume_handler_##fn(void)       \
    {                                                                                \
        if (mcr_runtime_add_resume_handler)                                          \
            mcr_runtime_add_resume_handler((fn), #fn);                               \
    }

#ifdef __cplusplus
}
#endif

#endif /* MCR_H */
