/*
 * mcr annotations for nginx (see include/mcr.h): an update with --fresh-state keeps the
 * idle HTTP connections of every worker.
 *
 * nginx's state (pools, module configurations behind void *) is rebuilt by the new
 * version's startup instead of being transferred. A keep-alive connection between two
 * requests, or one that has not sent its first request yet, holds nothing nginx needs to
 * remember: the old version's idle check says which ones are, mcr moves those into the
 * worker with the same PID, and the new version's resume handler takes each up as if it
 * had just been accepted. Busy connections (mid-request, TLS, lingering close) are
 * drained as before.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>

#include "../../../include/mcr.h"

static ngx_core_module_t ngx_mcr_module_ctx = {
    ngx_string("mcr"),
    NULL,
    NULL
};

ngx_module_t ngx_mcr_module = {
    NGX_MODULE_V1,
    &ngx_mcr_module_ctx,
    NULL,
    NGX_CORE_MODULE,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NGX_MODULE_V1_PADDING
};

/* Old version, every thread parked: does the connection on fd hold no HTTP state? */
static int
ngx_mcr_idle(int fd)
{
    ngx_uint_t         i;
    ngx_connection_t  *c;
    ngx_cycle_t       *cycle = (ngx_cycle_t *) ngx_cycle;

    if (cycle == NULL || cycle->connections == NULL) {
        return 0;
    }
    for (i = 0; i < cycle->connection_n; i++) {
        c = &cycle->connections[i];
        /* (c->destroyed is set on every keep-alive connection: its request was freed.) */
        if (c->fd != fd || c->listening == NULL) {
            continue;
        }
        if (c->listening->handler != ngx_http_init_connection
#if (NGX_HTTP_SSL || NGX_SSL)
            || c->ssl != NULL
#endif
            || c->buffered || c->error || c->close)
        {
            return 0;
        }
        /* A keep-alive connection between requests, or one whose first request has not
         * begun to arrive (any byte read creates the request). */
        return c->idle || c->requests == 0;
    }
    return 0;
}
MCR_ADD_IDLE_CHECK(ngx_mcr_idle);

static ngx_listening_t *
ngx_mcr_listening_of(struct sockaddr *local, socklen_t len)
{
    ngx_uint_t        i;
    ngx_listening_t  *ls = ngx_cycle->listening.elts;

    for (i = 0; i < ngx_cycle->listening.nelts; i++) {
        if (ls[i].type != SOCK_STREAM || ls[i].handler == NULL) {
            continue;
        }
        if (ngx_cmp_sockaddr(local, len, ls[i].sockaddr, ls[i].socklen, 1) == NGX_OK) {
            return &ls[i];
        }
    }
    /* A wildcard listener (listen 8080) serves every local address of its port. */
    for (i = 0; i < ngx_cycle->listening.nelts; i++) {
        if (ls[i].type == SOCK_STREAM && ls[i].handler != NULL && ls[i].wildcard
            && ngx_inet_get_port(ls[i].sockaddr) == ngx_inet_get_port(local))
        {
            return &ls[i];
        }
    }
    return NULL;
}

/* What ngx_event_accept does with a new socket, for one moved here by mcr. */
static void
ngx_mcr_adopt_one(ngx_socket_t s)
{
    ngx_log_t         *log;
    ngx_sockaddr_t     peer, local;
    socklen_t          peer_len = sizeof(peer), local_len = sizeof(local);
    ngx_listening_t   *ls;
    ngx_connection_t  *c;

    if (getpeername(s, &peer.sockaddr, &peer_len) == -1
        || getsockname(s, &local.sockaddr, &local_len) == -1
        || (ls = ngx_mcr_listening_of(&local.sockaddr, local_len)) == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, ngx_socket_errno,
                      "mcr: cannot adopt connection fd %d: no listening socket of its address", s);
        ngx_close_socket(s);
        return;
    }

    c = ngx_get_connection(s, ngx_cycle->log);
    if (c == NULL) {
        ngx_close_socket(s);
        return;
    }
    c->type = SOCK_STREAM;
#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_accepted, 1);
    (void) ngx_atomic_fetch_add(ngx_stat_active, 1);
#endif
    c->pool = ngx_create_pool(ls->pool_size, ngx_cycle->log);
    if (c->pool == NULL) {
        goto failed;
    }
    if (peer_len > (socklen_t) sizeof(ngx_sockaddr_t)) {
        peer_len = sizeof(ngx_sockaddr_t);
    }
    c->sockaddr = ngx_palloc(c->pool, peer_len);
    log = ngx_palloc(c->pool, sizeof(ngx_log_t));
    if (c->sockaddr == NULL || log == NULL || ngx_nonblocking(s) == -1) {
        goto failed;
    }
    ngx_memcpy(c->sockaddr, &peer, peer_len);
    *log = ls->log;

    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;
    c->log = log;
    c->pool->log = log;
    c->socklen = peer_len;
    c->listening = ls;
    c->local_sockaddr = ls->sockaddr;
    c->local_socklen = ls->socklen;
    c->write->ready = 1;
    c->read->log = log;
    c->write->log = log;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->start_time = ngx_current_msec;
#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_handled, 1);
#endif
    if (ls->addr_ntop) {
        c->addr_text.data = ngx_pnalloc(c->pool, ls->addr_text_max_len);
        if (c->addr_text.data == NULL) {
            goto failed;
        }
        c->addr_text.len = ngx_sock_ntop(c->sockaddr, c->socklen, c->addr_text.data,
                                         ls->addr_text_max_len, 0);
        if (c->addr_text.len == 0) {
            goto failed;
        }
    }
    log->data = NULL;
    log->handler = NULL;
    /* Registers the read event with epoll; a request already waiting is seen at once. */
    ls->handler(c);
    return;

failed:
    ngx_close_connection(c);
    if (c->pool) {
        ngx_destroy_pool(c->pool);
    }
#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_active, -1);
#endif
}

/* New version, right after commit, on the worker's only thread. Where a new worker is
 * parked may be inside its event setup (ngx_epoll_test_rdhup's epoll_wait): then ask mcr
 * to call again at its next quiescent point, which is its event loop's epoll_wait. */
static int
ngx_mcr_adopt(void)
{
    static int  fds[65536];
    int         i, n;

    n = mcr_adopted_fds(fds, (int) (sizeof(fds) / sizeof(fds[0])));
    if (n == 0) {
        return 0;
    }
    if (ngx_cycle->connections == NULL || ngx_cycle->free_connections == NULL) {
        return 1;
    }
    for (i = 0; i < n && i < (int) (sizeof(fds) / sizeof(fds[0])); i++) {
        ngx_mcr_adopt_one(fds[i]);
    }
    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0, "mcr: adopted %d idle connections", n);
    return 0;
}
MCR_ADD_RESUME_HANDLER(ngx_mcr_adopt);
